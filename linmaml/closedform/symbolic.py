"""Symbolic derivations (sympy): the scalar-chain MAML objective and the matrix one-step update.

Scalar chains
-------------
f(x) = w_L ⋯ w_1 x on tasks y = a·x, a ~ N(m, s²), x ~ N(0, v); population inner and outer losses
½·v·(p − a)² with p = w_1 ⋯ w_L; k inner steps w_j ← w_j − α·v·(p − a)·∏_{i≠j} w_i. The objective
J = E_a[½·v·(p_k − a)²] is a polynomial in (w_1 … w_L, α, m, s, v). It is computed exactly:

1. the inner loop runs in the sparse polynomial ring ℤ[w_1 … w_L, c, a] with c = α·v (the loss
   depends on α and v only through c, apart from the outer factor v);
2. E_a replaces a^p by the Gaussian moment E[a^p] = Σ_j C(p, 2j)·(2j − 1)!!·m^{p−2j}·s^{2j} — no
   integration;
3. c^r becomes α^r v^r and the factor v/2 is pulled out front.

Cost — measured, honest. The adapted weights have degree (2L − 1)^{t−1} in a, and the number of
monomials explodes with depth and steps. :func:`scalar_objective` refuses (a ``ValueError`` naming
depth and steps) before any single polynomial product would exceed ``max_work`` term products
(default 10⁷). Measured on the 2-core development machine (monomials of J, seconds to derive)::

    depth 1, steps 0–5     4 … 44 terms           < 0.01 s
    depth 2, steps 1/2/3   47 / 1,334 / 69,981    0.01 / 0.02 / 1.4–2.8 s
    depth 3, steps 1/2     197 / 142,248          0.01 / 5–7 s
    depth 4/5/6, step 1    811 / 3,231 / 12,480   0.1 / 0.1 / 0.3 s
    otherwise              refused, within ~3 s: e.g. depth 2 with 4 steps would next multiply
                           36,604 × 36,604 terms (1.3·10⁹), depth 4 with 2 steps 74,706 × 74,706

Depth 6 with 5 steps is beyond any explicit representation: J has degree 2L(2L − 1)^{k−1} = 175,692
in a alone and astronomically many monomials. For every depth ≤ 6 and steps ≤ 5,
:func:`scalar_recursion` gives the same objective exactly in nested (unexpanded) form — the inner
recursion and the expectation — at negligible cost, and
:func:`linmaml.closedform.scalar.scalar_maml_loss` evaluates it exactly in float64 (Gauss–Hermite
with L(2L − 1)^{k−1} + 1 nodes). Turning the expanded J into sympy expressions (``objective``,
``latex``) costs more than the derivation beyond ~10⁴ terms; :meth:`ScalarObjective.lambdify` and
:meth:`ScalarObjective.evaluate_exact` work from the sparse polynomial directly.

Matrix chains (non-commutative)
-------------------------------
:func:`matrix_update` expands the one-step end-to-end update W_e′ = ∏ (W_j − α ∂ℓ/∂W_j) of a depth-L
linear network with sympy ``MatrixSymbol`` factors (which do not commute), where
∂ℓ/∂W_j = (W_L ⋯ W_{j+1})ᵀ G (W_{j−1} ⋯ W_1)ᵀ and G = ∂ℓ/∂W_e, and groups it by powers of α. The α¹
term is the implicit preconditioner: for depth 2, W_e′ − W_e = −α(W_2W_2ᵀG + GW_1ᵀW_1) + α² G W_1ᵀW_2ᵀ G.
The step is exact for any loss (it only uses the gradient at the current weights).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from typing import Callable, Sequence

import sympy as sp
from sympy.polys.rings import ring

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError

#: Depth and steps that the symbolic scalar derivations accept.
MAX_DEPTH, MAX_STEPS = 6, 5
#: Default limit on the term products of one polynomial multiplication (see the module docstring).
DEFAULT_MAX_WORK = 10_000_000


def _check_depth_steps(depth, steps) -> tuple[int, int]:
    depth = _validate.integer(depth, "depth", minimum=1, maximum=MAX_DEPTH)
    steps = _validate.integer(steps, "steps", minimum=0, maximum=MAX_STEPS)
    return depth, steps


def scalar_symbols(depth: int) -> dict:
    """The symbols of the scalar derivations: ``w`` (w_1 … w_L), ``alpha``, ``m``, ``s``, ``v``, ``a``."""
    depth = _validate.integer(depth, "depth", minimum=1, maximum=MAX_DEPTH)
    w = sp.symbols(f"w_1:{depth + 1}", real=True)
    alpha, m, a = sp.symbols("alpha m a", real=True)
    s, v = sp.symbols("s v", nonnegative=True)
    return {"w": tuple(w), "alpha": alpha, "m": m, "s": s, "v": v, "a": a}


def gaussian_moment(p: int, m, s):
    """E[a^p] for a ~ N(m, s²): Σ_j C(p, 2j)·(2j − 1)!!·m^{p−2j}·s^{2j}, a polynomial in m and s."""
    p = _validate.integer(p, "p", minimum=0)
    return sum(math.comb(p, 2 * j) * math.prod(range(2 * j - 1, 0, -2)) * m ** (p - 2 * j) * s ** (2 * j)
               for j in range(p // 2 + 1))


@dataclasses.dataclass(frozen=True, eq=False)
class ScalarObjective:
    """The exact population MAML objective J of the depth-L scalar chain after k inner steps.

    J = (v/2)·``polynomial`` where ``polynomial`` is an element of the sparse ring
    ℚ[w_1 … w_L, α, v, m, s] (sympy ``PolyElement``, expanded and canonical); ``gradient_polynomials``
    holds ∂(polynomial)/∂w_j, so ∂J/∂w_j = (v/2)·gradient_polynomials[j]. ``terms`` counts the
    monomials of J, ``seconds`` the time the derivation took. ``objective`` and ``gradient`` are the
    same as sympy expressions (built on first use: slow beyond ~10⁴ terms).
    """

    depth: int
    steps: int
    symbols: dict
    polynomial: object
    gradient_polynomials: tuple
    terms: int
    seconds: float

    @property
    def arguments(self) -> tuple:
        """The symbols in the order the numeric functions take them: w_1 … w_L, α, m, s, v."""
        sym = self.symbols
        return (*sym["w"], sym["alpha"], sym["m"], sym["s"], sym["v"])

    def _ring_symbols(self) -> tuple:
        sym = self.symbols
        return (*sym["w"], sym["alpha"], sym["v"], sym["m"], sym["s"])

    def _half_v(self, poly) -> sp.Expr:
        return sp.Mul(sp.Rational(1, 2) * self.symbols["v"], poly.as_expr(*self._ring_symbols()), evaluate=False)

    @functools.cached_property
    def objective(self) -> sp.Expr:
        """J as a sympy expression: (v/2)·(expanded polynomial in w, α, v, m, s)."""
        return self._half_v(self.polynomial)

    @functools.cached_property
    def gradient(self) -> tuple:
        """(∂J/∂w_1, …, ∂J/∂w_L) as sympy expressions, each (v/2)·(expanded polynomial)."""
        return tuple(self._half_v(g) for g in self.gradient_polynomials)

    def by_alpha(self, factor: bool | None = None) -> dict:
        """J grouped by powers of α: ``{r: coefficient}`` with J = Σ_r α^r·coefficient (the v/2
        included). ``factor`` (default: when J has ≤ 5,000 terms) factors each coefficient with
        sympy, which shows the structure: for depth 2 and one step the α¹ coefficient is
        −v²·(w_1² + w_2²)·((w_1w_2 − m)² + s²), the preconditioner w_1² + w_2² times the loss."""
        if factor is None:
            factor = self.terms <= 5000
        groups: dict[int, dict] = {}
        for monomial, coefficient in self.polynomial.items():
            power = monomial[self.depth]
            key = monomial[: self.depth] + (0,) + monomial[self.depth + 1:]
            groups.setdefault(power, {})[key] = coefficient
        ring_ = self.polynomial.ring
        out = {}
        for power in sorted(groups):
            expr = self._half_v(ring_.from_dict(groups[power]))
            out[power] = sp.factor(expr) if factor else expr
        return out

    def collected(self, factor: bool | None = None) -> sp.Expr:
        """J = Σ_r α^r·(coefficient_r) as one expression (see :meth:`by_alpha`), unevaluated so the
        grouping survives printing."""
        alpha = self.symbols["alpha"]
        return sp.Add(*(sp.Mul(alpha**r, c, evaluate=False) if r else c for r, c in self.by_alpha(factor).items()),
                      evaluate=False)

    def latex(self, gradient: bool = False, collected: bool = True) -> str:
        """LaTeX of J = … grouped by powers of α (``collected``; else expanded), or with
        ``gradient=True`` of the equations ∂J/∂w_j = … ."""
        if not gradient:
            return f"J = {sp.latex(self.collected() if collected else self.objective)}"
        return r" \\ ".join(rf"\frac{{\partial J}}{{\partial {sp.latex(w)}}} = {sp.latex(g)}"
                             for w, g in zip(self.symbols["w"], self.gradient))

    def lambdify(self) -> Callable:
        """J compiled to numpy: ``f(w_1, …, w_L, alpha, m, s, v)``, broadcasting over arrays.

        The polynomial is evaluated monomial by monomial from tables of powers (float64). This
        replaces ``sympy.lambdify``, whose generated source overflows Python's compiler once the sum
        has a few thousand terms.
        """
        return _numpy_polynomial(self.polynomial, self.depth, scale_by_half_v=True)

    def lambdify_gradient(self) -> Callable:
        """(∂J/∂w_1, …, ∂J/∂w_L) compiled to numpy, same arguments as :meth:`lambdify`; returns a list."""
        parts = [_numpy_polynomial(g, self.depth, scale_by_half_v=True) for g in self.gradient_polynomials]
        return lambda *args: [part(*args) for part in parts]

    def evaluate_exact(self, ws: Sequence, alpha, m, s, v, gradient: bool = False):
        """J (or the list of ∂J/∂w_j) at a point, in exact rational arithmetic (``sympy.Rational``).

        Float arguments are taken at their exact binary value, so the result is the exact value of
        the objective at the float inputs: the reference that float computations are judged by.
        """
        if len(ws) != self.depth:
            raise ArgumentError("ws", f"expected {self.depth} layer weights, got {len(ws)}")
        values = [sp.Rational(_validate.finite_number(x, name)) for x, name in
                  zip((*ws, alpha, v, m, s), (*(f"ws[{j}]" for j in range(self.depth)), "alpha", "v", "m", "s"))]
        half_v = values[self.depth + 1] / 2
        if gradient:
            return [half_v * sp.Rational(g(*values)) for g in self.gradient_polynomials]
        return half_v * sp.Rational(self.polynomial(*values))


def _numpy_polynomial(poly, depth: int, scale_by_half_v: bool) -> Callable:
    """A numpy function of (w_1 … w_L, alpha, m, s, v) for a ring element over (w…, α, v, m, s)."""
    import numpy as np

    items = list(poly.items())
    exponents = np.array([monomial for monomial, _ in items], dtype=np.int64).reshape(len(items), depth + 4)
    coefficients = np.array([float(c) for _, c in items], dtype=np.float64)
    top = exponents.max(axis=0) if len(items) else np.zeros(depth + 4, dtype=np.int64)
    ring_order = list(range(depth)) + [depth, depth + 3, depth + 1, depth + 2]  # call order → ring order

    def evaluate(*args):
        if len(args) != depth + 4:
            raise ArgumentTypeError("args", f"expected {depth + 4} arguments (w_1 … w_{depth}, alpha, m, s, v), got {len(args)}")
        values = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in args))
        shape = values[0].shape
        ordered = [values[i].reshape(-1) for i in ring_order]
        powers = []
        for x, e in zip(ordered, top):
            table = np.ones((int(e) + 1, x.size))
            for k in range(1, int(e) + 1):
                table[k] = table[k - 1] * x
            powers.append(table)
        total = np.zeros(ordered[0].size)
        chunk = max(1, 2**20 // max(1, ordered[0].size))
        for start in range(0, len(items), chunk):
            block = slice(start, start + chunk)
            terms = np.broadcast_to(coefficients[block, None], (coefficients[block].size, total.size)).copy()
            for var, table in enumerate(powers):
                terms *= table[exponents[block, var]]
            total += terms.sum(axis=0)
        if scale_by_half_v:
            total *= 0.5 * ordered[depth + 1]
        return float(total[0]) if shape == () else total.reshape(shape)

    return evaluate


def scalar_objective(depth: int, steps: int, max_work: int = DEFAULT_MAX_WORK) -> ScalarObjective:
    """Derive J(w_1 … w_L, α, m, s, v) exactly as an expanded polynomial, with its gradient.

    ``depth`` 1–6, ``steps`` 0–5. Raises ``ValueError`` (naming depth and steps) when one polynomial
    product would exceed ``max_work`` term products; see the module docstring for what fits, and
    :func:`scalar_recursion` for the nested exact form that always fits.
    """
    depth, steps = _check_depth_steps(depth, steps)
    max_work = _validate.integer(max_work, "max_work", minimum=1)
    start = time.perf_counter()
    symbols = scalar_symbols(depth)
    w_syms, alpha, m, s, v = symbols["w"], symbols["alpha"], symbols["m"], symbols["s"], symbols["v"]

    R, *gens = ring([str(w) for w in w_syms] + ["c", "a"], sp.ZZ)
    ws, c, a = gens[:depth], gens[depth], gens[depth + 1]

    def multiply(x, y):
        if len(x) * len(y) > max_work:
            raise ArgumentError(
                "depth, steps", f"expanding the depth-{depth}, {steps}-step objective needs a product of "
                f"{len(x)}×{len(y)} terms (limit max_work={max_work}); use scalar_recursion() for the exact "
                f"nested form or linmaml.closedform.scalar for exact numbers")
        return x * y

    for _ in range(steps):
        prefix, suffix = [R.one] * depth, [R.one] * depth
        for j in range(1, depth):
            prefix[j] = multiply(prefix[j - 1], ws[j - 1])
        for j in range(depth - 2, -1, -1):
            suffix[j] = multiply(suffix[j + 1], ws[j + 1])
        step = c * (multiply(prefix[-1], ws[-1]) - a)
        ws = [w - multiply(step, multiply(pre, suf)) for w, pre, suf in zip(ws, prefix, suffix)]
    residual = ws[0]
    for w in ws[1:]:
        residual = multiply(residual, w)
    residual = residual - a
    squared = multiply(residual, residual)

    # E_a and c = α·v, in the ring ℚ[w_1 … w_L, α, v, m, s].
    S, *out_gens = ring([str(w) for w in w_syms] + ["alpha", "v", "m", "s"], sp.QQ)
    out_w, out_alpha, out_v, out_m, out_s = out_gens[:depth], *out_gens[depth:]
    by_power: dict[int, dict] = {}
    for monomial, coefficient in squared.terms():
        *w_exp, c_exp, a_exp = monomial
        key = (*w_exp, c_exp, c_exp, 0, 0)  # c^r → α^r v^r
        bucket = by_power.setdefault(a_exp, {})
        bucket[key] = bucket.get(key, 0) + coefficient
    expectation = S.zero
    for power, bucket in by_power.items():
        moment = gaussian_moment(power, out_m, out_s)
        expectation += multiply(S.from_dict(bucket), moment if power else S.one)
    return ScalarObjective(depth, steps, symbols, expectation, tuple(expectation.diff(w) for w in out_w),
                           len(expectation), time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class ScalarRecursion:
    """The exact objective in nested form: the inner-loop recursion and the expectation.

    ``updates[t][j]`` is the sympy equation w_j^{(t+1)} = w_j^{(t)} − α v (p^{(t)} − a) ∏_{i≠j} w_i^{(t)}
    with p^{(t)} = ∏_i w_i^{(t)} and w_j^{(0)} = w_j; ``task_loss`` is ½ v (p^{(k)} − a)² in the
    symbols w_j^{(k)}; the objective is E_a[task_loss] with a ~ N(m, s²), E[a^p] given by
    :func:`gaussian_moment`. ``degree_in_a`` is deg_a (p^{(k)} − a)², ``nodes`` the Gauss–Hermite
    nodes that integrate it exactly.
    """

    depth: int
    steps: int
    symbols: dict
    weights: tuple  # weights[t] = (w_1^{(t)}, …, w_L^{(t)}), symbols; weights[0] are the initial w
    updates: tuple
    task_loss: sp.Expr
    degree_in_a: int
    nodes: int

    def substitute(self) -> sp.Expr:
        """The per-task loss ½v(p_k − a)² as one nested expression in (w, α, v, a), unexpanded."""
        current = dict(zip(self.weights[0], self.weights[0]))
        for t, eqs in enumerate(self.updates):
            current = {eq.lhs: eq.rhs.xreplace(current) for eq in eqs}
        return self.task_loss.xreplace(current)

    def latex(self) -> str:
        a, m, s = self.symbols["a"], self.symbols["m"], self.symbols["s"]
        lines = [sp.latex(eq) for eqs in self.updates for eq in eqs]
        lines.append(rf"J = \mathbb{{E}}_{{{sp.latex(a)} \sim \mathcal{{N}}({sp.latex(m)}, {sp.latex(s)}^2)}}"
                     rf"\left[{sp.latex(self.task_loss)}\right]")
        return r" \\ ".join(lines)


def scalar_recursion(depth: int, steps: int) -> ScalarRecursion:
    """The exact nested form of the depth-L, k-step objective (any depth ≤ 6, steps ≤ 5; cheap)."""
    from linmaml.closedform.scalar import quadrature_nodes

    depth, steps = _check_depth_steps(depth, steps)
    symbols = scalar_symbols(depth)
    alpha, v, a = symbols["alpha"], symbols["v"], symbols["a"]
    weights = [symbols["w"]]
    updates = []
    for t in range(1, steps + 1):
        old = weights[-1]
        new = sp.symbols(f"w_1:{depth + 1}^({t})", real=True)
        p = sp.Mul(*old)
        eqs = tuple(sp.Eq(new[j], old[j] - alpha * v * (p - a) * sp.Mul(*(old[:j] + old[j + 1:])))
                    for j in range(depth))
        weights.append(tuple(new))
        updates.append(eqs)
    task_loss = sp.Rational(1, 2) * v * (sp.Mul(*weights[-1]) - a) ** 2
    degree = 2 if steps == 0 else 2 * depth * (2 * depth - 1) ** (steps - 1)
    return ScalarRecursion(depth, steps, symbols, tuple(weights), tuple(updates), task_loss, degree,
                           quadrature_nodes(depth, steps))


# --------------------------------------------------------------------------------------------------
# Matrix chains


@dataclasses.dataclass(frozen=True)
class MatrixUpdate:
    """The one-step end-to-end update of a depth-L linear network, grouped by powers of α.

    ``weights`` are the ``MatrixSymbol`` W_1 … W_L (W_j of shape d_j × d_{j−1}), ``G`` the gradient
    ∂ℓ/∂W_e (d_L × d_0), ``orders[r]`` the coefficient matrix of α^r in W_e′ = Σ_r α^r·orders[r]
    (orders[0] = W_e), and ``kronecker`` the α¹ term's preconditioner in vec form:
    vec(orders[1]) = −P vec G with P = Σ_j (W_{<j}ᵀ W_{<j}) ⊗ (W_{>j} W_{>j}ᵀ) over adapted layers.
    """

    depth: int
    adapt_layers: tuple
    alpha: sp.Symbol
    weights: tuple
    G: sp.MatrixSymbol
    orders: dict
    kronecker: sp.Expr

    @property
    def update(self) -> sp.Expr:
        """W_e′ − W_e = Σ_{r ≥ 1} α^r·orders[r]."""
        return sp.MatAdd(*(self.alpha**r * term for r, term in sorted(self.orders.items()) if r >= 1))

    def latex(self) -> str:
        lhs = r"W_e' - W_e"
        parts = []
        for r, term in sorted(self.orders.items()):
            if r == 0:
                continue
            factor = sp.latex(self.alpha**r)
            parts.append(rf"{factor}\left({sp.latex(term)}\right)")
        return f"{lhs} = " + " + ".join(parts)

    def evaluate(self, weights: Sequence, G, lr: float):
        """Numeric W_e′ − W_e from the grouped terms: weights W_j (d_j, d_{j−1}) and G (d_L, d_0)
        as arrays, ``lr`` = α; returns a (d_L, d_0) array."""
        values = self._values(weights, G)
        return sum(lr**r * _evaluate_matrix(term, values) for r, term in self.orders.items() if r >= 1)

    def evaluate_order(self, r: int, weights: Sequence, G):
        """Numeric coefficient matrix of α^r (``orders[r]``), a (d_L, d_0) array."""
        if r not in self.orders:
            raise ArgumentError("r", f"expected one of the powers {sorted(self.orders)}, got {r!r}")
        return _evaluate_matrix(self.orders[r], self._values(weights, G))

    def evaluate_preconditioner(self, weights: Sequence):
        """Numeric P (d_L·d_0, d_L·d_0) from :attr:`kronecker`, column-major vec."""
        return _evaluate_matrix(self.kronecker, self._values(weights, None))

    def _values(self, weights, G) -> dict:
        import numpy as np

        if len(weights) != self.depth:
            raise ArgumentError("weights", f"expected {self.depth} matrices, got {len(weights)}")
        values = {sym: np.asarray(value, dtype=np.float64) for sym, value in zip(self.weights, weights)}
        for sym, value in values.items():
            if value.ndim != 2:
                raise ArgumentError("weights", f"expected 2-d arrays, got shape {value.shape} for {sym}")
        sizes = {}
        for j, sym in enumerate(self.weights):
            for dim, size in zip(sym.shape, values[sym].shape):
                if sizes.setdefault(dim, size) != size:
                    raise ArgumentError("weights", f"width {dim} is {sizes[dim]} in one layer and {size} in another")
        values["sizes"] = sizes
        if G is not None:
            values[self.G] = np.asarray(G, dtype=np.float64)
            if values[self.G].shape != tuple(sizes[d] for d in self.G.shape):
                raise ArgumentError("G", f"expected shape {tuple(sizes[d] for d in self.G.shape)}, got {values[self.G].shape}")
        return values


def _evaluate_matrix(expr, values):
    """Evaluate a sympy matrix expression (sums, products, transposes, identities, Kronecker
    products, scalar factors) with the numpy arrays in ``values`` (``values["sizes"]``: dimensions)."""
    import numpy as np

    if isinstance(expr, sp.MatrixSymbol):
        return values[expr]
    if isinstance(expr, sp.Identity):
        return np.eye(int(expr.rows.xreplace(values["sizes"])))
    if isinstance(expr, sp.Transpose):
        return _evaluate_matrix(expr.arg, values).T
    if isinstance(expr, sp.MatAdd):
        return sum(_evaluate_matrix(arg, values) for arg in expr.args)
    if isinstance(expr, sp.KroneckerProduct):
        out = _evaluate_matrix(expr.args[0], values)
        for arg in expr.args[1:]:
            out = np.kron(out, _evaluate_matrix(arg, values))
        return out
    if isinstance(expr, sp.MatMul):
        scalar, matrices = expr.as_coeff_matrices()
        out = _evaluate_matrix(matrices[0], values)
        for m in matrices[1:]:
            out = out @ _evaluate_matrix(m, values)
        return float(scalar) * out
    raise ArgumentTypeError("expr", f"unsupported matrix expression {type(expr).__name__}")


def matrix_update(depth: int, adapt_layers=None) -> MatrixUpdate:
    """Expand the one-step update of a depth-``depth`` (2 or 3, up to 6 allowed) linear network with
    non-commutative matrix symbols and group it by powers of α (see :class:`MatrixUpdate`).

    ``adapt_layers``: 0-based indices of the layers that take the inner step (None: all). With only
    W_1 adapting the update is exactly −α W_L⋯W_2 (W_L⋯W_2)ᵀ G: the upper layers precondition.
    """
    depth = _validate.integer(depth, "depth", minimum=1, maximum=MAX_DEPTH)
    layers = _validate.layer_indices(adapt_layers, depth)
    dims = sp.symbols(f"d_0:{depth + 1}", integer=True, positive=True)
    W = tuple(sp.MatrixSymbol(f"W_{j + 1}", dims[j + 1], dims[j]) for j in range(depth))
    G = sp.MatrixSymbol("G", dims[depth], dims[0])
    alpha = sp.Symbol("alpha", positive=True)

    def chain(mats):  # W_b ⋯ W_a for mats = [W_a, …, W_b] (applied first = rightmost)
        return sp.MatMul(*reversed(mats)) if len(mats) > 1 else mats[0] if mats else None

    def product(*factors):
        factors = [f for f in factors if f is not None]
        return sp.MatMul(*factors).doit() if len(factors) > 1 else factors[0]

    # Each factor W_j′ is a list of (power of α, matrix): the weight and, if it adapts, the step.
    factors = []
    for j in range(depth):
        options = [(0, W[j])]
        if j in layers:
            above, below = chain(list(W[j + 1:])), chain(list(W[:j]))
            step = product(above.T if above is not None else None, G, below.T if below is not None else None)
            options.append((1, -step))
        factors.append(options)
    orders: dict[int, list] = {}
    for choice in itertools.product(*reversed(factors)):  # W_L′ ⋯ W_1′, leftmost first
        power = sum(p for p, _ in choice)
        orders.setdefault(power, []).append(product(*(m for _, m in choice)))
    grouped = {r: sp.MatAdd(*terms).doit() if len(terms) > 1 else terms[0] for r, terms in orders.items()}

    kron_terms = []
    for j in layers:
        above, below = chain(list(W[j + 1:])), chain(list(W[:j]))
        left = product(below.T, below) if below is not None else sp.Identity(dims[0])
        right = product(above, above.T) if above is not None else sp.Identity(dims[depth])
        kron_terms.append(sp.KroneckerProduct(left, right))
    kronecker = sp.MatAdd(*kron_terms) if len(kron_terms) > 1 else kron_terms[0] if kron_terms else sp.ZeroMatrix(1, 1)
    return MatrixUpdate(depth, layers, alpha, W, G, grouped, kronecker)
