"""``linmaml derive``: print the symbolic MAML derivations (sympy).

``--kind scalar`` (default): the exact population MAML objective J(w_1 … w_L, α, m, s, v) of the
scalar chain f(x) = w_L ⋯ w_1 x on tasks y = a·x, a ~ N(m, s²), x ~ N(0, v), after ``--steps``
inner steps, grouped by powers of α (``--gradient`` adds ∂J/∂w_j). Where the expanded polynomial is
out of reach (see :mod:`linmaml.closedform.symbolic`) it prints the exact nested form instead, and
says so; ``--form expanded`` makes that an error, ``--form nested`` always prints the nested form.

``--kind matrix``: the one-step end-to-end update of a depth-L linear network with non-commutative
matrix symbols, grouped by powers of α, and the vec-form preconditioner of the α¹ term
(``--adapt-layers`` restricts the inner step to some layers, 0-based).
"""
from __future__ import annotations

from linmaml import _validate
from linmaml._extras import require
from linmaml.errors import ArgumentError


def register(subparsers):
    p = subparsers.add_parser("derive", help="print the symbolic MAML derivations (scalar objective or matrix update)",
                              description="Print the exact population MAML objective of the scalar chain w_L⋯w_1·x after k inner "
                                          "steps (--kind scalar), or the one-step update of a depth-L linear network "
                                          "with non-commuting matrix weights (--kind matrix); needs sympy.")
    p.add_argument("--kind", default="scalar", help="scalar (population objective of w_L⋯w_1·x, default) or "
                                                    "matrix (one-step update with non-commuting weights)")
    p.add_argument("--depth", type=int, default=2, help="number of layers L, 1–6 (default 2)")
    p.add_argument("--steps", type=int, default=1, help="inner steps k: 0–5 for scalar, 1 for matrix (default 1)")
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of plain text")
    p.add_argument("--gradient", action="store_true", help="scalar: also print ∂J/∂w_j")
    p.add_argument("--form", default="auto", help="scalar: auto (expanded when feasible, default), expanded, nested")
    p.add_argument("--adapt-layers", metavar="J,J", help="matrix: comma-separated 0-based layers that adapt "
                                                        "(default: all)")
    p.set_defaults(func=run)


def _options(args) -> dict:
    if args.kind not in ("scalar", "matrix"):
        raise ArgumentError("--kind", f"expected scalar or matrix, got {args.kind!r}")
    depth = _validate.integer(args.depth, "--depth", minimum=1, maximum=6)
    if args.kind == "matrix":
        if args.steps != 1:
            raise ArgumentError("--steps", f"the matrix derivation is for one inner step, got {args.steps}")
        if args.gradient or args.form != "auto":
            raise ArgumentError("--gradient" if args.gradient else "--form", "applies to --kind scalar only")
    else:
        _validate.integer(args.steps, "--steps", minimum=0, maximum=5)
        if args.adapt_layers is not None:
            raise ArgumentError("--adapt-layers", "applies to --kind matrix only")
    if args.form not in ("auto", "expanded", "nested"):
        raise ArgumentError("--form", f"expected auto, expanded or nested, got {args.form!r}")
    layers = None
    if args.adapt_layers is not None:
        try:
            layers = [int(part) for part in args.adapt_layers.split(",") if part.strip()]
        except ValueError:
            raise ArgumentError("--adapt-layers", f"expected comma-separated integers, got {args.adapt_layers!r}") from None
        layers = _validate.layer_indices(layers, depth, "--adapt-layers")
        if not layers:
            raise ArgumentError("--adapt-layers", "expected at least one layer")
    return {"depth": depth, "steps": args.steps, "layers": layers}


def run(args) -> int:
    options = _options(args)
    require("sympy", "symbolic derivations")
    if args.kind == "matrix":
        print(matrix_text(options["depth"], options["layers"], args.latex))
    else:
        print(scalar_text(options["depth"], options["steps"], args.latex, args.gradient, args.form))
    return 0


#: Term-product bounds of the printed expansion (symbolic.scalar_objective's max_work): auto expands
#: depth 1 × any steps, depth 2 × ≤ 2 steps, depth 3–4 × 1 step (at most 1,334 monomials, 30 kB, seconds);
#: --form expanded adds depth 5 and 6 × 1 (3,231 and 12,480 monomials, 61 and 767 kB; minutes).
AUTO_MAX_WORK = 10_000
EXPANDED_MAX_WORK = 100_000


def scalar_text(depth: int, steps: int, latex: bool = False, gradient: bool = False, form: str = "auto") -> str:
    """The text ``linmaml derive --kind scalar`` prints."""
    import sympy as sp  # lazy: an optional extra (linmaml/_extras.py)

    from linmaml.closedform import symbolic  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    chain = "·".join(f"w_{j}" for j in range(depth, 0, -1))
    header = (f"# scalar chain f(x) = {chain}·x, {steps} inner step(s) of lr alpha on tasks y = a·x, "
              f"a ~ N(m, s²), x ~ N(0, v);\n# population losses ½·v·(p − a)², p = product of the weights; "
              f"J = E_a[½·v·(p_k − a)²]")
    derived, refusal = None, None
    if form != "nested":
        # The work bound is also an output bound: auto expands only what prints in at most ~30 kB
        # (1,334 monomials for depth 2 × 2 steps); --form expanded up to ~0.8 MB (depth 6 × 1). Beyond,
        # the polynomial has tens of thousands of monomials (depth 3 × 2 steps: 142,248, 7.4 MB on one
        # line), which no terminal reader wants; the Python API still expands those.
        try:
            derived = symbolic.scalar_objective(depth, steps,
                                                max_work=EXPANDED_MAX_WORK if form == "expanded" else AUTO_MAX_WORK)
        except ValueError:
            if form == "expanded":
                raise ArgumentError("--depth, --steps", f"the expanded depth-{depth}, {steps}-step objective is too "
                                    f"large to print (over ~12,500 monomials); --form nested prints it exactly, and "
                                    f"linmaml.closedform.symbolic.scalar_objective({depth}, {steps}) expands it in "
                                    f"Python") from None
            refusal = (f"the expanded polynomial would be too long to print (over ~1,500 monomials); --form "
                       f"expanded prints up to ~12,500, symbolic.scalar_objective({depth}, {steps}) expands it in Python")
    if derived is None:
        nested = symbolic.scalar_recursion(depth, steps)
        lines = [header, f"# exact nested form (degree {nested.degree_in_a} in a; "
                         f"{nested.nodes} Gauss–Hermite nodes integrate it exactly)"]
        if refusal:
            lines.append(f"# expanded polynomial out of reach: {refusal}")
        if latex:
            lines.append(nested.latex())
        else:
            lines.extend(f"{eq.lhs} = {eq.rhs}" for eqs in nested.updates for eq in eqs)
            lines.append(f"J = E_a[{nested.task_loss}],  E[a^p] = sum_j C(p,2j) (2j-1)!! m^(p-2j) s^(2j)")
        return "\n".join(lines)
    lines = [header, f"# {derived.terms} monomials, derived in {derived.seconds:.2f} s; grouped by powers of alpha"]
    if latex:
        lines.append(derived.latex())
        if gradient:
            lines.append(derived.latex(gradient=True))
    else:
        lines.append(f"J = {sp.sstr(derived.collected())}")
        if gradient:
            lines.extend(f"dJ/d{w} = {sp.sstr(g)}" for w, g in zip(derived.symbols["w"], derived.gradient))
    return "\n".join(lines)


def matrix_text(depth: int, layers=None, latex: bool = False) -> str:
    """The text ``linmaml derive --kind matrix`` prints."""
    import sympy as sp  # lazy: an optional extra (linmaml/_extras.py)

    from linmaml.closedform import symbolic  # lazy: keeps `linmaml --help` light (build_parser imports every command module)

    update = symbolic.matrix_update(depth, layers)
    adapted = ", ".join(f"W_{j + 1}" for j in update.adapt_layers)
    lines = [f"# depth-{depth} linear network W_e = {'·'.join(f'W_{j}' for j in range(depth, 0, -1))}, "
             f"one inner step of lr alpha on {adapted}; G = dℓ/dW_e at the current weights (any loss)",
             "# exact: W_e' − W_e grouped by powers of alpha (non-commuting matrix symbols)"]
    if latex:
        lines.append(update.latex())
        lines.append(rf"\operatorname{{vec}}(W_e' - W_e) = -\alpha \left({sp.latex(update.kronecker)}\right)"
                     rf" \operatorname{{vec}} G + O(\alpha^2)")
    else:
        for r, term in sorted(update.orders.items()):
            if r:
                lines.append(f"alpha^{r}: {sp.sstr(term)}")
        lines.append(f"vec(W_e' − W_e) = −alpha·P·vec(G) + O(alpha²),  P = {sp.sstr(update.kronecker)}")
    return "\n".join(lines)
