"""Gradient transforms: meta-optimizers that map inner-loop gradients to updates.

The protocol
------------
A transform is two functions,

    ``params, state = transform.init(named_params)``
    ``updates, state = transform.step(grads, params, state, k)``

where ``named_params`` is ``{model parameter name: tensor}`` for the parameters the inner loop
adapts, ``grads`` and ``updates`` are ``{model parameter name: tensor}`` of those shapes, ``k`` is the
0-based inner step (a Python int), ``params`` are the transform's own learned parameters and
``state`` what it carries from one inner step to the next. Both are nested dicts keyed by the
model's own parameter names (``{"0.weight": {"L0": …, "R0": …}}`` for KFO, ``{"0.weight": s}`` for
Meta-SGD, ``{}`` for a transform with nothing to learn); :class:`Chain` composes transforms with a
tuple of its members' params and a tuple of their states. Both are trees of tensors (dicts,
tuples, lists; no other leaves), which ``torch.func`` can differentiate and batch. ``init`` is pure:
it returns fresh tensors in the dtype and device of ``named_params`` and the state every adaptation
starts from (kept as it is by ``build``, so ``learner.to(device)`` does not move tensors in it:
prefer a state that starts empty and is built from the gradients, as :class:`Momentum`'s). The
inner loop steps ``θ ← θ − lr · update``; because ``params`` and ``state`` are arguments, it can
differentiate through them (second-order MAML), update ``params`` functionally
(``adapt_transform=True``) and batch tasks with ``torch.func.vmap`` (each task its own state).

A transform that neither depends on the step nor carries state is one function
``update(self, grads, params) -> updates`` lifted to ``step`` by :func:`stateless`. A new transform
in ten lines is in DESIGN.md ("Writing a transform"); tests/meta/test_meta_protocol.py runs it.

Binding to a learner
--------------------
A transform is also an ``nn.Module``, so that its learned parameters are ``nn.Parameter``\\s that
``learner.parameters()`` hands to torch optimisers. The learners (``meta.MAML``, ``meta.ANIL``) call
:meth:`Transform.build` once with the parameters they adapt: it runs ``init``, keeps the params as
``nn.Parameter``\\s and the start state; :meth:`Transform.params` then gives the live params (the
nested dict above) and :attr:`Transform.initial_state` the start state. ``transform.update(grads)``
(or ``transform(grads)``) is the one-call form: the updates of inner step ``k`` (default 0) from the
start state with the transform's own parameters, after checking the gradients' names and shapes.

Where the parameters live in a state dict (checkpoints): ``<storage>.<name>`` or
``<storage>.<name>.<leaf>``, with the model parameter's ``.`` written as ``/`` (an ``nn.Module``
attribute cannot contain a dot), e.g. KFO's ``factors.0/weight.L0`` and Meta-SGD's
``scales.0/weight``; Chain member i's under ``transforms.<i>.``. These are the names of every
earlier release, so old checkpoints load as they are. Only the storage sees that spelling: the
protocol uses the model's names.

Transforms
----------
:class:`Identity`       U(G) = G (plain MAML).
:class:`MetaSGD`        U(G) = s ⊙ G, s per element, initialised to ones (Li et al. 2017).
:class:`MetaCurvature`  U(G) = G ×₁ M_out ×₂ M_inᵀ ×₃ M_kᵀ, one matrix per mode (Park & Oliva 2019).
:class:`KFO`            U(G) = (LᵀL) G (RᵀR) (or L G R), Kronecker-factored, optionally non-linear.
:class:`LearnedRates`   U_k(G) = r_k ⊙ G, one learned rate per adapted tensor and inner step (MAML++).
:class:`Momentum`       heavy-ball momentum: m_k = β m_{k−1} + G_k, U_k = m_k (or G_k + β m_k, Nesterov).
:class:`Adam`           Adam (torch.optim.Adam's update), moments and step count in the state; β learnable.
:class:`Chain`          composition: U = Tₙ ∘ … ∘ T₁.

Every learned transform starts as the identity map U(G) = G *exactly* (bit for bit in floating
point), so a learner with any of them starts as plain MAML. (:class:`Momentum` has nothing to learn:
it is the identity on the first step only; :class:`Adam` is never the identity.)

Matrix views of a parameter (KFO and MetaCurvature)
----------------------------------------------------
* 1-d (bias, norm scale), shape (n,): the column G of shape (n, 1).
* 2-d (linear weight), shape (out, in): G itself.
* ≥3-d (conv weight), shape (c_out, c_in, k₁, k₂, …): c_out matrices G[o] of shape
  (c_in, k₁·k₂·…), the kernel positions flattened row-major (k₁ major), as ``reshape`` does.
* 0-d (a scalar parameter) has no matrix structure: a ``ValueError`` naming the parameter.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError

__all__ = ["Transform", "Identity", "MetaSGD", "MetaCurvature", "KFO", "LearnedRates", "Momentum", "Adam", "Chain",
           "parameter_key", "stateless", "tree_map", "tree_leaves", "safe_sqrt"]

Tree = Any  # a tensor, or a dict / tuple / list of trees


def parameter_key(name: str) -> str:
    """The storage key (state-dict spelling) of model parameter ``name``: ``.`` written as ``/``."""
    return name.replace(".", "/")


def tree_map(fn: Callable[..., torch.Tensor], tree: Tree, *rest: Tree) -> Tree:
    """``fn`` applied leaf by leaf to trees of the same structure (dicts, tuples, lists of tensors)."""
    if isinstance(tree, Mapping):
        return {key: tree_map(fn, value, *(r[key] for r in rest)) for key, value in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, value, *(r[i] for r in rest)) for i, value in enumerate(tree))
    return fn(tree, *rest)


def tree_leaves(tree: Tree) -> list[torch.Tensor]:
    """The tensors of a tree, in order."""
    if isinstance(tree, Mapping):
        return [leaf for value in tree.values() for leaf in tree_leaves(value)]
    if isinstance(tree, (tuple, list)):
        return [leaf for value in tree for leaf in tree_leaves(value)]
    return [tree]


def stateless(update: Callable) -> Callable:
    """Lift ``update(self, grads, params) -> updates`` to the protocol's
    ``step(self, grads, params, state, k) -> (updates, state)``: the state passes through unchanged
    and the step index is not used. Use as a decorator on a method named ``step``."""

    @functools.wraps(update)
    def step(self, grads, params, state, k):
        return update(self, grads, params), state

    return step


def _subdict(params: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``params`` under ``prefix + "."``, with the prefix removed."""
    start = prefix + "."
    return {name[len(start):]: value for name, value in params.items() if name.startswith(start)}


class Transform(nn.Module):
    """Base class: subclasses write ``init`` and ``step`` (module docstring); ``build``, ``params``,
    ``initial_state``, ``update`` and the storage of the learned parameters are here.

    ``storage``: the attribute (and state-dict prefix) under which :meth:`build` keeps the learned
    parameters. ``init``'s params must be ``{}``, ``{key: tensor}`` or ``{key: {leaf: tensor}}``
    (keys the model's parameter names, leaves names without dots) for :meth:`build` to store them.
    """

    storage = "learned"

    def __init__(self):
        super().__init__()
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._keys: list[str] = []  # the keys of init's params, in order
        self._initial_state: Tree = ()
        self._stored_names: frozenset[str] = frozenset()  # named_parameters()' names once built

    # -- the protocol (subclasses) ----------------------------------------------------------------

    def init(self, named_params: Mapping[str, torch.Tensor]) -> tuple[Tree, Tree]:
        """``(params, state)``: fresh learned parameters for the model parameters ``named_params``
        and the state each adaptation starts from. Default: nothing to learn, no state."""
        return {}, ()

    def step(self, grads: Mapping[str, torch.Tensor], params: Tree, state: Tree, k: int) -> tuple[dict, Tree]:
        """``(updates, state)`` of inner step ``k`` (0-based) from the previous step's state."""
        raise NotImplementedError(f"{type(self).__name__} does not define step(grads, params, state, k)")

    # -- binding to a learner ---------------------------------------------------------------------

    @property
    def built(self) -> bool:
        return self._shapes is not None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Model parameter name -> shape, for every parameter this transform serves."""
        if self._shapes is None:
            raise RuntimeError(f"{type(self).__name__} is not built yet: call build(named_params) first")
        return dict(self._shapes)

    @property
    def initial_state(self) -> Tree:
        """The inner-loop state every adaptation starts from (``init``'s state, kept by ``build``)."""
        return self._initial_state

    def _shapes_of(self, named_params: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]] | None:
        """The shapes to build for, or None when already built for exactly these (nothing to do)."""
        shapes = {name: tuple(p.shape) for name, p in named_params.items()}
        if not shapes:
            raise ArgumentError("named_params", "expected at least one parameter to transform")
        keys = [parameter_key(name) for name in shapes]
        if len(set(keys)) != len(keys):
            raise ArgumentError("named_params", f"parameter names collide once '.' is written as '/': "
                                f"{sorted(shapes)}")
        if self._shapes is not None:
            if shapes != self._shapes:
                raise ArgumentError("named_params", f"this {type(self).__name__} is already built for "
                                    f"{self._shapes}, got {shapes}; use a new transform for another model")
            return None
        return shapes

    def _bind_steps(self, steps: int | None) -> None:
        """Take note of the learner's number of inner steps before ``init`` (:class:`LearnedRates`)."""

    def build(self, named_params: Mapping[str, torch.Tensor], steps: int | None = None) -> "Transform":
        """Run ``init`` for the model parameters ``named_params`` (name -> tensor) and keep its params
        as this module's ``nn.Parameter``\\s and its state as :attr:`initial_state`.

        ``steps``: the learner's number of inner steps (training time), for transforms that keep
        something per step (:class:`LearnedRates`); the others ignore it.

        Building again for the same names and shapes does nothing (so a learner can be rebuilt
        around a trained transform); for different ones it raises, since the learned state would
        not fit them.
        """
        shapes = self._shapes_of(named_params)
        if shapes is None:
            return self
        self._bind_steps(steps)
        params, state = self.init(dict(named_params))
        self._keep(params)
        self._initial_state = state
        self._shapes = shapes
        self._stored_names = frozenset(name for name, _ in self.named_parameters())
        return self

    def _keep(self, params: Mapping[str, Tree]) -> None:
        """Register ``init``'s params as ``nn.Parameter``\\s under :attr:`storage`, in their order
        (the order of ``learner.parameters()``, which optimiser checkpoints index by)."""
        if not isinstance(params, Mapping):
            raise ArgumentTypeError("params", f"{type(self).__name__}.init must return a dict of parameters, got "
                                    f"{type(params).__name__}")
        keys = [parameter_key(key) for key in params]
        if len(set(keys)) != len(keys):
            raise ArgumentError("params", f"keys collide once '.' is written as '/': {sorted(params)}")
        self._keys = list(params)
        if not params:
            return
        if hasattr(type(self), self.storage):
            raise ArgumentError("storage", f"{type(self).__name__}.storage = {self.storage!r} is the name of one of "
                                f"its attributes; choose another")
        leaves = [isinstance(value, torch.Tensor) for value in params.values()]
        if all(leaves):
            container = nn.ParameterDict()
            for key, value in params.items():
                container[parameter_key(key)] = nn.Parameter(value)
        elif not any(leaves) and all(isinstance(value, Mapping) for value in params.values()):
            container = nn.ModuleDict()
            for key, value in params.items():
                inner = nn.ParameterDict()
                for leaf, tensor in value.items():
                    inner[leaf] = nn.Parameter(tensor)
                container[parameter_key(key)] = inner
        else:
            raise ArgumentTypeError("params", f"{type(self).__name__}.init must give every key a tensor, or every "
                                    f"key a dict of tensors")
        setattr(self, self.storage, container)

    def at_initialisation(self, named_params: Mapping[str, torch.Tensor]) -> bool:
        """Whether the learned parameters still equal what ``init`` gives for ``named_params`` (the
        identity map for the built-in transforms): then adapting is plain MAML at any number of steps.
        Exact equality: any learned change, however small, counts as learned."""
        fresh, _ = self.init(dict(named_params))
        current, start = tree_leaves(self.params()), tree_leaves(fresh)
        return len(current) == len(start) and all(
            a.shape == b.shape and torch.equal(a.detach(), b.to(dtype=a.dtype, device=a.device))
            for a, b in zip(current, start))

    def params(self) -> Tree:
        """The learned parameters as ``init`` shaped them, holding this module's ``nn.Parameter``\\s
        (``{}`` when there are none): what the inner loop passes to ``step``."""
        if not self._keys:
            return {}
        # Read straight from the containers' registries (what ParameterDict's item access returns,
        # without its per-item attribute lookup): the learners call this once per adaptation.
        container = getattr(self, self.storage)
        if isinstance(container, nn.ParameterDict):
            stored = container._parameters
            return {key: stored[parameter_key(key)] for key in self._keys}
        stored = container._modules
        return {key: dict(stored[parameter_key(key)]._parameters) for key in self._keys}

    def _from_state_dict_names(self, flat: Mapping[str, torch.Tensor]) -> Tree:
        """A dict keyed as ``self.named_parameters()`` (e.g. detached copies of them) as ``params()``'s tree."""
        out = {}
        for key, value in self.params().items():
            stored = f"{self.storage}.{parameter_key(key)}"
            out[key] = flat[stored] if isinstance(value, torch.Tensor) else {
                leaf: flat[f"{stored}.{leaf}"] for leaf in value}
        return out

    def as_params(self, params: Tree | None) -> Tree:
        """``params`` as the protocol's tree: None -> :meth:`params`; a dict keyed exactly as
        ``self.named_parameters()`` (the flat form earlier releases passed) -> the tree with those
        tensors; a tree -> itself."""
        if params is None:
            return self.params()
        if isinstance(params, Mapping) and params.keys() == self._stored_names:
            return self._from_state_dict_names(params)
        return params

    def check_grads(self, grads: Mapping[str, torch.Tensor]) -> None:
        """Raise an ``ArgumentError`` naming ``grads`` if a gradient's name or shape is not one built for."""
        shapes = self.shapes
        for name, g in grads.items():
            if name not in shapes:
                raise ArgumentError("grads", f"{type(self).__name__} was not built for parameter {name!r} "
                                    f"(it serves {sorted(shapes)})")
            if tuple(g.shape) != shapes[name]:
                raise ArgumentError("grads", f"{name} has shape {tuple(g.shape)}, the transform was built for "
                                    f"{shapes[name]}")

    def update(self, grads: Mapping[str, torch.Tensor], params: Tree | None = None, k: int = 0) -> dict:
        """The updates of inner step ``k`` (default the first) from :attr:`initial_state`, in one call:
        ``step(grads, params, initial_state, k)[0]`` after :meth:`check_grads`. ``params``: default
        the transform's own (:meth:`params`); also a tree or a dict keyed as ``named_parameters()``."""
        self.check_grads(grads)
        return self.step(dict(grads), self.as_params(params), self.initial_state, k)[0]

    def forward(self, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``update(grads)``: the first step's updates with the transform's own parameters."""
        return self.update(grads)


class Identity(Transform):
    """U(G) = G: plain (first- or second-order) MAML. No parameters."""

    @stateless
    def step(self, grads, params):
        return grads


class MetaSGD(Transform):
    """Meta-SGD: a learned step size per element, U(G) = s ⊙ G.

    ``s`` has the shape of the parameter and starts at one, so ``lr · s ⊙ G`` is the plain step
    ``lr · G`` at initialisation; the effective per-element step size is ``lr · s``. Params:
    ``{name: s}``; stored as ``scales.<key>``.
    """

    storage = "scales"

    def init(self, named_params):
        return {name: torch.ones_like(p, memory_format=torch.contiguous_format) for name, p in named_params.items()}, ()

    @stateless
    def step(self, grads, params):
        return {name: params[name] * g for name, g in grads.items()}


def _matrix_sizes(name: str, shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """(rows, cols, stack) of the matrix view of a parameter (module docstring); 0-d raises."""
    if len(shape) == 0:
        raise ArgumentError(name, f"{what} cannot transform a 0-d (scalar) parameter; expected a bias (n,), "
                            f"a linear weight (out, in) or a conv weight (c_out, c_in, k1, ...)")
    if len(shape) == 1:
        return shape[0], 1, 0
    if len(shape) == 2:
        return shape[0], shape[1], 0
    return shape[1], math.prod(shape[2:]), shape[0]


def _gram_pays(n: int, columns: int) -> bool:
    """Whether applying FᵀF (F n×n) to ``columns`` vectors of length n is cheaper through the Gram
    matrix — n³ to form it, n² per column — than as two thin products, 2n² per column:
    n³ + n²·columns < 2n²·columns, i.e. n < columns. (The Gram matrix is formed once per call,
    which covers every task of a vmapped chunk, so the rule errs towards the thin products.)"""
    return n < columns


def _matrix_view(g: torch.Tensor) -> torch.Tensor:
    """A parameter-shaped tensor as its matrix (or stack of matrices) view."""
    if g.ndim == 1:
        return g.reshape(-1, 1)
    if g.ndim == 2:
        return g
    return g.reshape(g.shape[0], g.shape[1], -1)


class KFO(Transform):
    """Kronecker-factored meta-optimizer.

    Linear (``hidden_layers=0``): for each adapted parameter with matrix view G (module docstring),

        U(G) = (LᵀL) G (RᵀR)        (psd=True: a positive semi-definite preconditioner)
        U(G) = L G R                (psd=False)

    so vec U = (RᵀR ⊗ LᵀL) vec G (column-major vec). L is rows×rows and R cols×cols of the matrix
    view: for a linear weight (out, in) L is out×out and R in×in; for a bias L is out×out and R 1×1;
    for a conv weight (c_out, c_in, kh, kw) L is c_in×c_in and R (kh·kw)×(kh·kw), the same for every
    output channel (U[o] = K(G[o])). L and R start as the identity.

    Non-linear (``hidden_layers=h > 0``): a small network of such Kronecker maps K (each psd or
    not as above) with ReLUs between them,

        Z₀ = K₀(G),   Zᵢ = Kᵢ⁺(ReLU(Zᵢ₋₁)) − Kᵢ⁻(ReLU(−Zᵢ₋₁))   (i = 1…h),   U(G) = Z_h.

    Each hidden layer carries the positive and the negative part of its input through its own pair
    of maps (a concatenated ReLU). With every factor at the identity, Kᵢ⁺ = Kᵢ⁻ = id and
    ReLU(z) − ReLU(−z) = z, so the network is *exactly* the identity map at initialisation — and
    it is genuinely non-linear once Kᵢ⁺ and Kᵢ⁻ differ, which meta-training does at once because
    their gradients differ. Params: ``{name: {"L0", "R0", "Lpos{i}", "Rpos{i}", "Lneg{i}",
    "Rneg{i}"}}``; stored as ``factors.<key>.<leaf>``.
    """

    storage = "factors"

    def __init__(self, psd: bool = True, hidden_layers: int = 0):
        super().__init__()
        if not isinstance(psd, bool):
            raise ArgumentTypeError("psd", f"expected True or False, got {psd!r}")
        self.psd = psd
        self.hidden_layers = _validate.integer(hidden_layers, "hidden_layers", minimum=0)

    def extra_repr(self) -> str:
        return f"psd={self.psd}, hidden_layers={self.hidden_layers}"

    def _map_names(self) -> list[str]:
        names = ["0"]
        for i in range(1, self.hidden_layers + 1):
            names += [f"pos{i}", f"neg{i}"]
        return names

    def init(self, named_params):
        sizes = {name: _matrix_sizes(name, tuple(p.shape), "KFO") for name, p in named_params.items()}
        params = {}
        for name, p in named_params.items():
            rows, cols, _ = sizes[name]
            factors = {}
            for m in self._map_names():
                factors[f"L{m}"] = torch.eye(rows, dtype=p.dtype, device=p.device)
                factors[f"R{m}"] = torch.eye(cols, dtype=p.dtype, device=p.device)
            params[name] = factors
        return params, ()

    def _kron(self, z: torch.Tensor, L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """(LᵀL) z (RᵀR) with psd, else L z R, for one matrix ``z`` (rows, cols).

        With psd each side is applied either through its Gram matrix (one product with z, after
        forming LᵀL: rows³) or as two thin products (L, then Lᵀ: twice the products with z),
        whichever multiplies fewer numbers (:func:`_gram_pays`): a wide head's in×in R (in in the
        thousands) multiplies only ``out`` rows, so forming RᵀR would cost far more than the thin
        products (2·out·in²). A 1×1 factor is a scalar: an elementwise product. The same map either
        way; only the rounding differs (float64: ~1e-16 relative).
        """
        if not self.psd:
            return L @ z @ R
        rows, cols = z.shape
        if cols == 1:
            z = z * (R * R)
        elif _gram_pays(cols, rows):
            z = z @ (R.T @ R)
        else:
            z = (z @ R.T) @ R
        if rows == 1:
            return (L * L) * z
        if _gram_pays(rows, cols):
            return (L.T @ L) @ z
        return L.T @ (L @ z)

    def _kron_stacked(self, y: torch.Tensor, L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """:meth:`_kron` of every matrix z_s (rows, cols) of a stack (a conv weight's c_out matrices),
        held transposed and side by side: ``y`` of shape (1, cols, stack·rows), y[0, c, s·rows + i] =
        z_s[i, c]; the result in the same layout.

        Why this layout: the right factor (k×k, k the kernel's positions, e.g. 9) then multiplies
        one wide (k, stack·rows) matrix, a product BLAS does at full speed, where z @ RᵀR on the
        natural layout is a (stack·rows·tasks, k) × (k, k) product, very slow at k = 9 (and under
        vmap a 2-d factor that requires grad is always folded into that shape, so the product is
        written 3-d: one batched product per task). The left factor then multiplies (k·stack, rows)
        rows, a plain wide product. In this layout z ↦ M z N is y ↦ Nᵀ y then y ↦ y Mᵀ per row.
        Gram matrix or thin products per side as in :meth:`_kron`, the same map.
        """
        rows, cols = L.shape[0], R.shape[0]
        columns = y.shape[-1]  # stack · rows
        if not self.psd:
            y = R.T.unsqueeze(0) @ y
            return (y.reshape(-1, rows) @ L.T).reshape(y.shape)
        if cols == 1:
            y = y * (R * R)
        elif _gram_pays(cols, columns):
            y = (R.T @ R).mT.unsqueeze(0) @ y
        else:
            y = R.T.unsqueeze(0) @ (R.unsqueeze(0) @ y)
        shape = y.shape
        y = y.reshape(-1, rows)  # (cols · stack, rows): row (c, s) is z_s[:, c]
        if rows == 1:
            y = y * (L * L)
        elif _gram_pays(rows, columns // rows * cols):
            y = y @ (L.T @ L).mT
        else:
            y = (y @ L.T) @ L
        return y.reshape(shape)

    def _map(self, g: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """U(G) for one parameter's gradient ``g`` with its factors ``p``."""
        if g.ndim >= 3:  # a stack of matrices, mapped in :meth:`_kron_stacked`'s layout (one copy in)
            stack, rows, cols = g.shape[0], g.shape[1], math.prod(g.shape[2:])
            kron = self._kron_stacked
            z = g.reshape(stack, rows, cols).permute(2, 0, 1).reshape(1, cols, stack * rows)
        else:
            kron, z = self._kron, _matrix_view(g)
        z = kron(z, p["L0"], p["R0"])
        for i in range(1, self.hidden_layers + 1):
            z = (kron(torch.relu(z), p[f"Lpos{i}"], p[f"Rpos{i}"])
                 - kron(torch.relu(-z), p[f"Lneg{i}"], p[f"Rneg{i}"]))
        if g.ndim >= 3:  # back to (c_out, c_in, k…): a view
            return z.reshape(cols, stack, rows).permute(1, 2, 0).reshape(g.shape)
        return z.reshape(g.shape)

    @stateless
    def step(self, grads, params):
        return {name: self._map(g, params[name]) for name, g in grads.items()}

    def preconditioners(self, name: str, params: Tree | None = None):
        """(left, right) matrices of the first Kronecker map for model parameter ``name``:
        (LᵀL, RᵀR) when psd, else (L, R). With ``hidden_layers=0`` U(G) = left · G · right.
        ``params``: default the transform's own (as :meth:`Transform.update`)."""
        tree = self.as_params(params)
        if name not in tree:
            raise ArgumentError("name", f"KFO has no factors for parameter {name!r}")
        L, R = tree[name]["L0"], tree[name]["R0"]
        return (L.T @ L, R.T @ R) if self.psd else (L, R)


class MetaCurvature(Transform):
    """Meta-Curvature (Park & Oliva, NeurIPS 2019): one learned matrix per mode of the gradient tensor.

    With the matrix view of the module docstring (modes out, in, kernel):

    * bias (n,):                U = M_out g
    * linear weight (out, in):  U = M_out G M_in
    * conv (c_out, c_in, k…):   U[o, i, f] = Σ M_out[o, a] G[a, b, c] M_in[b, i] M_k[c, f]
                                (G ×₁ M_out ×₂ M_inᵀ ×₃ M_kᵀ, kernel positions flattened)

    Unlike KFO's conv factors, M_out mixes output channels. Every matrix starts as the identity.
    Params: ``{name: {"out", "in", "kernel"}}``; stored as ``mats.<key>.<leaf>``.
    """

    storage = "mats"

    def init(self, named_params):
        for name, p in named_params.items():
            _matrix_sizes(name, tuple(p.shape), "MetaCurvature")
        params = {}
        for name, p in named_params.items():
            shape = tuple(p.shape)
            eye = functools.partial(torch.eye, dtype=p.dtype, device=p.device)
            mats = {"out": eye(shape[0])}
            if len(shape) >= 2:
                mats["in"] = eye(shape[1])
            if len(shape) >= 3:
                mats["kernel"] = eye(math.prod(shape[2:]))
            params[name] = mats
        return params, ()

    def _map(self, g: torch.Tensor, m: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """U(G) for one parameter's gradient ``g`` with its matrices ``m``."""
        if g.ndim == 1:
            return m["out"] @ g
        if g.ndim == 2:
            return m["out"] @ g @ m["in"]
        # The three mode products in the kernel-major layout of KFO._kron_stacked (and for its
        # reason: the k×k product on one wide (k, c_out·c_in) matrix), then c_in, then c_out per
        # kernel position (a batched product of c_out×c_out by c_out×c_in). U[o, i, f] =
        # Σ M_out[o, a] G[a, b, c] M_in[b, i] M_k[c, f]; faster than torch.einsum's order (linmaml
        # train's whole step: docs/guide/performance.md), the same up to rounding.
        out, inputs, kernel = g.shape[0], g.shape[1], math.prod(g.shape[2:])
        y = g.reshape(out, inputs, kernel).permute(2, 0, 1).reshape(1, kernel, out * inputs)
        y = m["kernel"].T.unsqueeze(0) @ y                                     # [f, (a, b)]
        y = y.reshape(kernel * out, inputs) @ m["in"]                          # [(f, a), i]
        y = m["out"].unsqueeze(0) @ y.reshape(kernel, out, inputs)             # [f, o, i]
        return y.permute(1, 2, 0).reshape(g.shape)

    @stateless
    def step(self, grads, params):
        return {name: self._map(g, params[name]) for name, g in grads.items()}


class Chain(Transform):
    """Composition of transforms: U = Tₙ(…T₂(T₁(G))). Params and state: tuples of the members'
    (member i's stored under ``transforms.<i>.``)."""

    def __init__(self, *transforms: Transform):
        super().__init__()
        if not transforms:
            raise ArgumentError("transforms", "expected at least one transform")
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise ArgumentTypeError(f"transforms[{i}]", f"expected a meta transform, got {type(t).__name__}")
        self.transforms = nn.ModuleList(transforms)

    def init(self, named_params):
        pairs = [t.init(named_params) for t in self.transforms]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def build(self, named_params, steps=None):
        """Each member's ``build`` (a member already built for these parameters keeps what it learned)."""
        shapes = self._shapes_of(named_params)
        if shapes is None:
            return self
        for t in self.transforms:
            t.build(named_params, steps)
        self._initial_state = tuple(t.initial_state for t in self.transforms)
        self._shapes = shapes
        self._stored_names = frozenset(name for name, _ in self.named_parameters())
        return self

    def params(self):
        return tuple(t.params() for t in self.transforms)

    def _from_state_dict_names(self, flat):
        return tuple(t._from_state_dict_names(_subdict(flat, f"transforms.{i}")) for i, t in enumerate(self.transforms))

    def step(self, grads, params, state, k):
        """Each member's ``step`` in turn, on the previous member's updates."""
        out, new_state = grads, []
        for t, p, s in zip(self.transforms, params, state):
            out, s = t.step(out, p, s, k)
            new_state.append(s)
        return out, tuple(new_state)


class LearnedRates(Transform):
    """Learned inner learning rates per adapted tensor and per inner step (MAML++'s LSLR, Antoniou
    et al. 2019): U_k(G) = r_k · G for the tensor's rate r_k at inner step k (0-based).

    The rates *multiply* the learner's ``lr``: the step is θ ← θ − lr_k · r_k · G, so the effective
    rate of a tensor at step k is ``lr_k · r_k``. Every r_k starts at 1, which makes a fresh learner
    exactly plain MAML with its ``lr`` (1 · G is G bit for bit). Each tensor of the model (a weight
    and its bias are separate tensors) has its own rates. Params: ``{name: r}``, r of shape (steps,);
    stored as ``rates.<key>``.

    ``steps``: how many per-step rates to keep; None (default) takes the learner's ``steps`` when it
    builds the transform. Run for more inner steps than that (``adapt(..., steps=k)``), the last
    rate repeats, as the learner's own per-step ``lr`` does.
    """

    storage = "rates"

    def __init__(self, steps: int | None = None):
        super().__init__()
        self.steps = None if steps is None else _validate.integer(steps, "steps", minimum=1)

    def extra_repr(self) -> str:
        return f"steps={self.steps}"

    def _bind_steps(self, steps):
        if self.steps is None:
            if steps is None:
                raise ArgumentError("steps", "LearnedRates needs the number of inner steps; pass "
                                    "LearnedRates(steps=K) or let a learner (meta.MAML, meta.ANIL) build it")
            self.steps = steps

    def init(self, named_params):
        if self.steps is None:
            raise ArgumentError("steps", "LearnedRates needs the number of inner steps; pass LearnedRates(steps=K)")
        return {name: torch.ones(self.steps, dtype=p.dtype, device=p.device) for name, p in named_params.items()}, ()

    def step(self, grads, params, state, k):
        index = min(k, self.steps - 1)
        return {name: params[name][index] * g for name, g in grads.items()}, state


class Momentum(Transform):
    """Differentiable heavy-ball momentum inside the inner loop (no learned parameters).

    With m₀ = 0:  m_k = β m_{k−1} + G_k  and  U_k = m_k  (or U_k = G_k + β m_k with ``nesterov``),
    torch.optim.SGD's convention without dampening, so the inner loop θ_k = θ_{k−1} − lr_k U_k is
    torch's SGD with momentum β. The first step is the plain gradient step (Nesterov: (1 + β)·G₁).
    The state is ``{name: m}``, empty before the first step (m₀ = 0 is never materialised), built
    from the gradients: second-order meta-gradients differentiate through it. Compose with a
    preconditioner as ``Chain(KFO(), Momentum())`` (momentum of the preconditioned gradients).
    """

    def __init__(self, beta: float = 0.9, nesterov: bool = False):
        super().__init__()
        self.beta = _validate.finite_number(beta, "beta", nonnegative=True)
        if self.beta >= 1:
            raise ArgumentError("beta", f"expected a number in [0, 1), got {self.beta}")
        if not isinstance(nesterov, bool):
            raise ArgumentTypeError("nesterov", f"expected True or False, got {nesterov!r}")
        self.nesterov = nesterov

    def extra_repr(self) -> str:
        return f"beta={self.beta}, nesterov={self.nesterov}"

    def init(self, named_params):
        return {}, {}

    def step(self, grads, params, state, k):
        updates, new_state = {}, {}
        for name, g in grads.items():
            m = g if name not in state else torch.add(g, state[name], alpha=self.beta)
            new_state[name] = m
            updates[name] = torch.add(g, m, alpha=self.beta) if self.nesterov else m
        return updates, new_state


def safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """√v for v ≥ 0, with every derivative at v = 0 taken as 0 instead of infinite.

    The value is ``torch.sqrt(v)`` exactly (0 at 0). torch.sqrt's derivative 1/(2√v) is infinite at
    v = 0, and an infinite derivative times the zero derivative of v = 0 is NaN: an inner Adam's
    second moment is exactly 0 wherever a gradient entry has been 0 at every step so far (an unused
    parameter, a zero input column), and the meta-gradient through ``sqrt(v)`` would be NaN there
    (higher's open complaint). Here the square root is taken of ``where(v > 0, v, 1)`` and its result
    replaced by 0 where v = 0 (the double-``where`` idiom), so no infinite factor enters the graph
    and derivatives of every order are finite there. The update's first derivative is still exact:
    with v = (1 − β₂)g² at g = 0, ∂v/∂g = 0, and d/dg [g/(√(g²) + ε)] = 1/ε at g = 0 is what the
    chain gives.
    """
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), torch.zeros_like(v))


class Adam(Transform):
    """Differentiable Adam inside the inner loop (Kingma & Ba 2015), torch.optim.Adam's convention.

    With m₀ = v₀ = 0 and t the step count (1 at the first step), per adapted tensor:

        m_t = β₁ m_{t−1} + (1 − β₁) G_t,   v_t = β₂ v_{t−1} + (1 − β₂) G_t²,
        U_t = (m_t / (1 − β₁ᵗ)) / (√(v_t / (1 − β₂ᵗ) + ε_root) + ε),

    so the inner loop θ_t = θ_{t−1} − lr_t U_t is ``torch.optim.Adam`` with learning rate lr_t
    (``eps_root=0``, the default; no weight decay, no AMSGrad). The learner's ``lr`` is Adam's
    learning rate: Adam's steps are about lr per entry whatever the gradient's scale, so the rates
    that suit plain MAML are usually far too large here.

    State per task (fresh for every adaptation, built from the gradients, so second-order
    meta-gradients differentiate through it): ``{name: {"m": m_t, "v": v_t, "t": t}}``, t a 0-d tensor
    of the gradient's dtype; empty before the first step.

    Zero second moment: the square root is :func:`safe_sqrt`, torch.sqrt's value with derivatives at
    0 taken as 0 (the double-``where`` idiom), so a gradient entry that is exactly 0 at every step gives
    finite meta-gradients, not NaN, while the updates stay torch.optim.Adam's to rounding.
    ``eps_root`` > 0 (optax's and TorchOpt's name) adds ε_root inside the root, a smooth
    denominator for very small second moments, at the cost of differing from torch.optim.Adam by
    about ε_root/(2 v̂) relatively.

    ``learn_betas=True``: β₁ and β₂ become learned, one pair per adapted tensor, as logits a with
    β = sigmoid(a) and 1 − β = sigmoid(−a) (both in (0, 1), and 1 − β accurate for β near 1);
    they start at ``beta1``/``beta2`` (to rounding: the sigmoid of the logit) and meta-training moves
    them. Params ``{name: {"beta1", "beta2"}}``; stored as ``betas.<key>.<leaf>``. Learned step sizes
    compose: ``Chain(Adam(), LearnedRates())`` scales each tensor's Adam update by a learned rate per
    inner step. Without ``learn_betas`` there is nothing to learn (Adam is not the identity map: a
    learner with it is Adam-in-the-inner-loop MAML from the start).
    """

    storage = "betas"

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                 learn_betas: bool = False):
        super().__init__()
        if not isinstance(learn_betas, bool):
            raise ArgumentTypeError("learn_betas", f"expected True or False, got {learn_betas!r}")
        betas = []
        for value, name in ((beta1, "beta1"), (beta2, "beta2")):
            value = _validate.finite_number(value, name, nonnegative=True)
            if value >= 1 or (learn_betas and value == 0):
                interval = "(0, 1) with learn_betas" if learn_betas else "[0, 1)"
                raise ArgumentError(name, f"expected a number in {interval}, got {value}")
            betas.append(float(value))
        self.beta1, self.beta2 = betas
        self.eps = float(_validate.finite_number(eps, "eps", nonnegative=True))
        self.eps_root = float(_validate.finite_number(eps_root, "eps_root", nonnegative=True))
        self.learn_betas = learn_betas

    def extra_repr(self) -> str:
        return (f"beta1={self.beta1}, beta2={self.beta2}, eps={self.eps}, eps_root={self.eps_root}, "
                f"learn_betas={self.learn_betas}")

    def init(self, named_params):
        if not self.learn_betas:
            return {}, {}

        def logit(beta, p):
            return torch.logit(torch.tensor(beta, dtype=torch.float64)).to(dtype=p.dtype, device=p.device)

        return {name: {"beta1": logit(self.beta1, p), "beta2": logit(self.beta2, p)}
                for name, p in named_params.items()}, {}

    def _betas(self, params, name):
        """(β₁, 1 − β₁, β₂, 1 − β₂) of one tensor: numbers, or tensors from the learned logits."""
        if not self.learn_betas:
            return self.beta1, 1.0 - self.beta1, self.beta2, 1.0 - self.beta2
        a1, a2 = params[name]["beta1"], params[name]["beta2"]
        return torch.sigmoid(a1), torch.sigmoid(-a1), torch.sigmoid(a2), torch.sigmoid(-a2)

    def step(self, grads, params, state, k):
        updates, new_state = {}, {}
        for name, g in grads.items():
            b1, c1, b2, c2 = self._betas(params, name)
            if name in state:
                previous = state[name]
                m = b1 * previous["m"] + c1 * g
                v = b2 * previous["v"] + c2 * (g * g)
                t = previous["t"] + 1
            else:  # m₀ = v₀ = 0, never materialised
                m, v = c1 * g, c2 * (g * g)
                t = torch.ones((), dtype=g.dtype, device=g.device)
            new_state[name] = {"m": m, "v": v, "t": t}
            corrected_v = v / (1 - b2 ** t)
            if self.eps_root:
                corrected_v = corrected_v + self.eps_root
            updates[name] = (m / (1 - b1 ** t)) / (safe_sqrt(corrected_v) + self.eps)
        return updates, new_state


def as_transform(transform) -> Transform:
    """``None`` -> :class:`Identity`; a Transform as is; anything else a TypeError."""
    if transform is None:
        return Identity()
    if not isinstance(transform, Transform):
        raise ArgumentTypeError("transform", f"expected a linmaml.meta transform (Identity, MetaSGD, MetaCurvature, "
                                f"KFO, LearnedRates, Momentum, Adam, Chain), got {type(transform).__name__}")
    return transform
