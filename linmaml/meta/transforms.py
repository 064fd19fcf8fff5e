"""Gradient transforms: meta-optimizers that map inner-loop gradients to updates.

A transform is a small ``nn.Module`` with its own meta-learned parameters and one pure method,

    ``update(grads, params) -> updates``

that maps ``{parameter name: gradient}`` to ``{parameter name: update}`` using the transform's
parameters ``params`` passed explicitly (a dict keyed as ``transform.named_parameters()`` gives
them). The inner loop then steps ``θ ← θ − lr · update``. Passing the parameters explicitly is what
lets the inner loop update them functionally (``adapt_transform=True``) and, later, batch the inner
loop over tasks with ``torch.func.vmap``.

A transform learns the shapes it serves from :meth:`Transform.build`, which the learners
(``meta.MAML``, ``meta.ANIL``) call with the parameters they adapt. Its own parameters are created
with the dtype and device of those model parameters and are keyed by the model parameter's name
with ``.`` written as ``/`` (``nn.Module`` names cannot contain dots): the KFO factors of
``"0.weight"`` are ``"factors.0/weight.L0"`` and ``"factors.0/weight.R0"``.

Transforms
----------
:class:`Identity`       U(G) = G (plain MAML).
:class:`MetaSGD`        U(G) = s ⊙ G, s per element, initialised to ones (Li et al. 2017).
:class:`MetaCurvature`  U(G) = G ×₁ M_out ×₂ M_inᵀ ×₃ M_kᵀ, one matrix per mode (Park & Oliva 2019).
:class:`KFO`            U(G) = (LᵀL) G (RᵀR) (or L G R), Kronecker-factored, optionally non-linear.
:class:`Chain`          composition: U = Tₙ ∘ … ∘ T₁.

Every learned transform starts as the identity map U(G) = G *exactly* (bit for bit in floating
point), so a learner with any of them starts as plain MAML. (:class:`Momentum` has nothing to learn:
it is the identity on the first step only.)

Inner-loop state (step index, moments)
--------------------------------------
A transform whose update depends on the inner step or on earlier gradients is *stateful*
(``transform.stateful`` is True) and implements

    ``step(grads, params, state, k) -> (updates, state)``

where ``k`` is the 0-based inner step (a Python int) and ``state`` a dict name -> tensor that the
inner loop threads from step to step, starting empty (``{}``) for every task: nothing is kept
between adaptations, and under ``vmap`` each task has its own state. The state is built from the
gradients, so second-order meta-gradients flow through it. Stateless transforms keep implementing
``update`` only; their ``step`` calls ``update`` and passes the state through unchanged.

:class:`LearnedRates`   U_k(G) = r_k ⊙ G, one learned rate per adapted tensor and inner step (MAML++).
:class:`Momentum`       heavy-ball momentum: m_k = β m_{k−1} + G_k, U_k = m_k (or G_k + β m_k, Nesterov).

Matrix views of a parameter (KFO and MetaCurvature)
----------------------------------------------------
* 1-d (bias, norm scale), shape (n,): the column G of shape (n, 1).
* 2-d (linear weight), shape (out, in): G itself.
* ≥3-d (conv weight), shape (c_out, c_in, k₁, k₂, …): c_out matrices G[o] of shape
  (c_in, k₁·k₂·…), the kernel positions flattened row-major (k₁ major), as ``reshape`` does.
* 0-d (a scalar parameter) has no matrix structure: a ``ValueError`` naming the parameter.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import nn

__all__ = ["Transform", "Identity", "MetaSGD", "MetaCurvature", "KFO", "LearnedRates", "Momentum", "Chain",
           "parameter_key"]


def parameter_key(name: str) -> str:
    """The key under which a transform stores the parameters it keeps for model parameter ``name``."""
    return name.replace(".", "/")


def _subdict(params: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``params`` under ``prefix + "."``, with the prefix removed."""
    start = prefix + "."
    return {name[len(start):]: value for name, value in params.items() if name.startswith(start)}


class Transform(nn.Module):
    """Base class: ``build`` once for the adapted parameters, then ``update(grads, params)`` (stateless)
    or ``step(grads, params, state, k)`` (stateful, module docstring)."""

    #: Whether ``step`` depends on the inner step index or on state carried between inner steps.
    stateful = False

    def __init__(self):
        super().__init__()
        self._shapes: dict[str, tuple[int, ...]] | None = None

    @property
    def built(self) -> bool:
        return self._shapes is not None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Model parameter name -> shape, for every parameter this transform serves."""
        if self._shapes is None:
            raise RuntimeError(f"{type(self).__name__} is not built yet: call build(named_params) first")
        return dict(self._shapes)

    def build(self, named_params: Mapping[str, torch.Tensor], steps: int | None = None) -> "Transform":
        """Create this transform's parameters for the model parameters ``named_params`` (name -> tensor).

        ``steps``: the learner's number of inner steps (training time), for transforms that keep
        something per step (:class:`LearnedRates`); the others ignore it.

        Building again for the same names and shapes does nothing (so a learner can be rebuilt
        around a trained transform); for different ones it raises, since the learned state would
        not fit them.
        """
        shapes = {name: tuple(p.shape) for name, p in named_params.items()}
        if not shapes:
            raise ValueError("named_params: expected at least one parameter to transform")
        keys = [parameter_key(name) for name in shapes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"named_params: parameter names collide once '.' is written as '/': {sorted(shapes)}")
        if self._shapes is not None:
            if shapes != self._shapes:
                raise ValueError(
                    f"named_params: this {type(self).__name__} is already built for {self._shapes}, "
                    f"got {shapes}; use a new transform for another model")
            return self
        for name, shape in shapes.items():
            self._check_shape(name, shape)
        self._prepare_steps(steps)
        for name, p in named_params.items():
            self._build_one(name, parameter_key(name), p)
        self._shapes = shapes
        return self

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Raise a ValueError naming the parameter if this transform cannot serve ``shape``."""

    def _prepare_steps(self, steps: int | None) -> None:
        """Take note of the learner's number of inner steps before the parameters are created."""

    def _build_one(self, name: str, key: str, param: torch.Tensor) -> None:
        """Create the transform's parameters for model parameter ``name``."""

    def update(self, grads: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map gradients ``{name: G}`` to updates ``{name: U(G)}`` (same shapes) with the transform's
        parameters ``params`` (keyed as ``self.named_parameters()``). Pure: reads nothing else."""
        shapes = self.shapes
        out = {}
        for name, g in grads.items():
            if name not in shapes:
                raise ValueError(f"grads: {type(self).__name__} was not built for parameter {name!r} "
                                 f"(it serves {sorted(shapes)})")
            if tuple(g.shape) != shapes[name]:
                raise ValueError(f"grads: {name} has shape {tuple(g.shape)}, the transform was built for "
                                 f"{shapes[name]}")
            out[name] = self._update_one(name, parameter_key(name), g, params)
        return out

    def _update_one(self, name: str, key: str, g: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def step(self, grads: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor],
             state: Mapping[str, torch.Tensor], k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(updates, new state)`` of inner step ``k`` (0-based) from the state of the previous steps
        (``{}`` before the first). Stateless transforms: ``update(grads, params)``, state unchanged."""
        return self.update(grads, params), dict(state)

    def forward(self, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``update`` with the transform's own current parameters."""
        return self.update(grads, dict(self.named_parameters()))


class Identity(Transform):
    """U(G) = G: plain (first- or second-order) MAML. No parameters."""

    def _update_one(self, name, key, g, params):
        return g


class MetaSGD(Transform):
    """Meta-SGD: a learned step size per element, U(G) = s ⊙ G.

    ``s`` has the shape of the parameter and starts at one, so ``lr · s ⊙ G`` is the plain step
    ``lr · G`` at initialisation; the effective per-element step size is ``lr · s``. Parameters:
    ``scales.<key>``.
    """

    def __init__(self):
        super().__init__()
        self.scales = nn.ParameterDict()

    def _build_one(self, name, key, param):
        self.scales[key] = nn.Parameter(torch.ones_like(param, memory_format=torch.contiguous_format))

    def _update_one(self, name, key, g, params):
        return params[f"scales.{key}"] * g


def _matrix_sizes(name: str, shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """(rows, cols, stack) of the matrix view of a parameter (module docstring); 0-d raises."""
    if len(shape) == 0:
        raise ValueError(f"{name}: {what} cannot transform a 0-d (scalar) parameter; expected a bias (n,), "
                         f"a linear weight (out, in) or a conv weight (c_out, c_in, k1, ...)")
    if len(shape) == 1:
        return shape[0], 1, 0
    if len(shape) == 2:
        return shape[0], shape[1], 0
    return shape[1], math.prod(shape[2:]), shape[0]


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
    their gradients differ. Parameters: ``factors.<key>.L0``, ``R0`` and ``Lpos{i}``, ``Rpos{i}``,
    ``Lneg{i}``, ``Rneg{i}``.
    """

    def __init__(self, psd: bool = True, hidden_layers: int = 0):
        super().__init__()
        if not isinstance(psd, bool):
            raise TypeError(f"psd: expected True or False, got {psd!r}")
        from linmaml import _validate

        self.psd = psd
        self.hidden_layers = _validate.integer(hidden_layers, "hidden_layers", minimum=0)
        self.factors = nn.ModuleDict()

    def extra_repr(self) -> str:
        return f"psd={self.psd}, hidden_layers={self.hidden_layers}"

    def _map_names(self) -> list[str]:
        names = ["0"]
        for i in range(1, self.hidden_layers + 1):
            names += [f"pos{i}", f"neg{i}"]
        return names

    def _check_shape(self, name, shape):
        _matrix_sizes(name, shape, "KFO")

    def _build_one(self, name, key, param):
        rows, cols, _ = _matrix_sizes(name, tuple(param.shape), "KFO")
        eye = lambda n: nn.Parameter(torch.eye(n, dtype=param.dtype, device=param.device))  # noqa: E731
        factors = nn.ParameterDict()
        for m in self._map_names():
            factors[f"L{m}"] = eye(rows)
            factors[f"R{m}"] = eye(cols)
        self.factors[key] = factors

    def _kron(self, z: torch.Tensor, L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        # Broadcasts over the output channels of a conv weight. With psd, (LᵀL) z (RᵀR) is computed
        # as Lᵀ((L z Rᵀ) R) without forming the Gram matrices: for a wide head (R is in×in with
        # in in the thousands) forming RᵀR costs in³ per inner step, the thin products 2·out·in².
        if self.psd:
            return L.T @ (L @ z @ R.T) @ R
        return L @ z @ R

    def _update_one(self, name, key, g, params):
        p = _subdict(params, f"factors.{key}")
        z = self._kron(_matrix_view(g), p["L0"], p["R0"])
        for i in range(1, self.hidden_layers + 1):
            z = (self._kron(torch.relu(z), p[f"Lpos{i}"], p[f"Rpos{i}"])
                 - self._kron(torch.relu(-z), p[f"Lneg{i}"], p[f"Rneg{i}"]))
        return z.reshape(g.shape)

    def preconditioners(self, name: str, params: Mapping[str, torch.Tensor] | None = None):
        """(left, right) matrices of the first Kronecker map for model parameter ``name``:
        (LᵀL, RᵀR) when psd, else (L, R). With ``hidden_layers=0`` U(G) = left · G · right."""
        p = _subdict(dict(self.named_parameters()) if params is None else params, f"factors.{parameter_key(name)}")
        if not p:
            raise ValueError(f"name: KFO has no factors for parameter {name!r}")
        L, R = p["L0"], p["R0"]
        return (L.T @ L, R.T @ R) if self.psd else (L, R)


class MetaCurvature(Transform):
    """Meta-Curvature (Park & Oliva, NeurIPS 2019): one learned matrix per mode of the gradient tensor.

    With the matrix view of the module docstring (modes out, in, kernel):

    * bias (n,):                U = M_out g
    * linear weight (out, in):  U = M_out G M_in
    * conv (c_out, c_in, k…):   U[o, i, f] = Σ M_out[o, a] G[a, b, c] M_in[b, i] M_k[c, f]
                                (G ×₁ M_out ×₂ M_inᵀ ×₃ M_kᵀ, kernel positions flattened)

    Unlike KFO's conv factors, M_out mixes output channels. Every matrix starts as the identity.
    Parameters: ``mats.<key>.out``, ``in``, ``kernel``.
    """

    def __init__(self):
        super().__init__()
        self.mats = nn.ModuleDict()

    def _check_shape(self, name, shape):
        _matrix_sizes(name, shape, "MetaCurvature")

    def _build_one(self, name, key, param):
        shape = tuple(param.shape)
        eye = lambda n: nn.Parameter(torch.eye(n, dtype=param.dtype, device=param.device))  # noqa: E731
        mats = nn.ParameterDict()
        mats["out"] = eye(shape[0])
        if len(shape) >= 2:
            mats["in"] = eye(shape[1])
        if len(shape) >= 3:
            mats["kernel"] = eye(math.prod(shape[2:]))
        self.mats[key] = mats

    def _update_one(self, name, key, g, params):
        m = _subdict(params, f"mats.{key}")
        if g.ndim == 1:
            return m["out"] @ g
        if g.ndim == 2:
            return m["out"] @ g @ m["in"]
        u = torch.einsum("oa,abc,bi,cf->oif", m["out"], _matrix_view(g), m["in"], m["kernel"])
        return u.reshape(g.shape)


class Chain(Transform):
    """Composition of transforms: U = Tₙ(…T₂(T₁(G))). Parameters: ``transforms.<i>.<…>``."""

    def __init__(self, *transforms: Transform):
        super().__init__()
        if not transforms:
            raise ValueError("transforms: expected at least one transform")
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise TypeError(f"transforms[{i}]: expected a meta transform, got {type(t).__name__}")
        self.transforms = nn.ModuleList(transforms)

    @property
    def stateful(self) -> bool:
        return any(t.stateful for t in self.transforms)

    def build(self, named_params, steps=None):
        for t in self.transforms:
            t.build(named_params, steps)
        return super().build(named_params, steps)

    def _check_names(self, grads):
        shapes = self.shapes
        for name in grads:
            if name not in shapes:
                raise ValueError(f"grads: Chain was not built for parameter {name!r} (it serves {sorted(shapes)})")

    def update(self, grads, params):
        self._check_names(grads)
        out = dict(grads)
        for i, t in enumerate(self.transforms):
            out = t.update(out, _subdict(params, f"transforms.{i}"))
        return out

    def step(self, grads, params, state, k):
        """Each member's ``step`` in turn; member i's state is kept under ``"<i>.<its key>"``."""
        self._check_names(grads)
        out, new_state = dict(grads), {}
        for i, t in enumerate(self.transforms):
            out, sub = t.step(out, _subdict(params, f"transforms.{i}"), _subdict(state, str(i)), k)
            new_state.update({f"{i}.{key}": value for key, value in sub.items()})
        return out, new_state


class LearnedRates(Transform):
    """Learned inner learning rates per adapted tensor and per inner step (MAML++'s LSLR, Antoniou
    et al. 2019): U_k(G) = r_k · G for the tensor's rate r_k at inner step k (0-based).

    The rates *multiply* the learner's ``lr``: the step is θ ← θ − lr_k · r_k · G, so the effective
    rate of a tensor at step k is ``lr_k · r_k``. Every r_k starts at 1, which makes a fresh learner
    exactly plain MAML with its ``lr`` (1 · G is G bit for bit). Each tensor of the model (a weight
    and its bias are separate tensors) has its own rates. Parameters: ``rates.<key>``, shape
    (steps,).

    ``steps``: how many per-step rates to keep; None (default) takes the learner's ``steps`` when it
    builds the transform. Run for more inner steps than that (``adapt(..., steps=k)``), the last
    rate repeats, as the learner's own per-step ``lr`` does.
    """

    stateful = True  # the update depends on the step index (there is no other state)

    def __init__(self, steps: int | None = None):
        super().__init__()
        from linmaml import _validate

        self.steps = None if steps is None else _validate.integer(steps, "steps", minimum=1)
        self.rates = nn.ParameterDict()

    def extra_repr(self) -> str:
        return f"steps={self.steps}"

    def _prepare_steps(self, steps):
        if self.steps is None:
            if steps is None:
                raise ValueError("steps: LearnedRates needs the number of inner steps; pass LearnedRates(steps=K) "
                                 "or let a learner (meta.MAML, meta.ANIL) build it")
            self.steps = steps

    def _build_one(self, name, key, param):
        self.rates[key] = nn.Parameter(torch.ones(self.steps, dtype=param.dtype, device=param.device))

    def update(self, grads, params):
        raise TypeError("grads: LearnedRates depends on the inner step; call step(grads, params, state, k) (the "
                        "learners do)")

    def step(self, grads, params, state, k):
        shapes = self.shapes
        index = min(k, self.steps - 1)
        out = {}
        for name, g in grads.items():
            if name not in shapes:
                raise ValueError(f"grads: LearnedRates was not built for parameter {name!r} (it serves "
                                 f"{sorted(shapes)})")
            out[name] = params[f"rates.{parameter_key(name)}"][index] * g
        return out, dict(state)


class Momentum(Transform):
    """Differentiable heavy-ball momentum inside the inner loop (no learned parameters).

    With m₀ = 0:  m_k = β m_{k−1} + G_k  and  U_k = m_k  (or U_k = G_k + β m_k with ``nesterov``),
    torch.optim.SGD's convention without dampening, so the inner loop θ_k = θ_{k−1} − lr_k U_k is
    torch's SGD with momentum β. The first step is the plain gradient step (Nesterov: (1 + β)·G₁).
    The velocities live in the inner-loop state (module docstring), one per adapted tensor under
    its name, and are built from the gradients: second-order meta-gradients differentiate through
    them. Compose with a preconditioner as ``Chain(KFO(), Momentum())`` (momentum of the
    preconditioned gradients).
    """

    stateful = True

    def __init__(self, beta: float = 0.9, nesterov: bool = False):
        super().__init__()
        from linmaml import _validate

        self.beta = _validate.finite_number(beta, "beta", nonnegative=True)
        if self.beta >= 1:
            raise ValueError(f"beta: expected a number in [0, 1), got {self.beta}")
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov: expected True or False, got {nesterov!r}")
        self.nesterov = nesterov

    def extra_repr(self) -> str:
        return f"beta={self.beta}, nesterov={self.nesterov}"

    def update(self, grads, params):
        raise TypeError("grads: Momentum carries state between inner steps; call step(grads, params, state, k) "
                        "(the learners do)")

    def step(self, grads, params, state, k):
        shapes = self.shapes
        updates, new_state = {}, {}
        for name, g in grads.items():
            if name not in shapes:
                raise ValueError(f"grads: Momentum was not built for parameter {name!r} (it serves {sorted(shapes)})")
            m = g if name not in state else torch.add(g, state[name], alpha=self.beta)
            new_state[name] = m
            updates[name] = torch.add(g, m, alpha=self.beta) if self.nesterov else m
        return updates, new_state


def as_transform(transform) -> Transform:
    """``None`` -> :class:`Identity`; a Transform as is; anything else a TypeError."""
    if transform is None:
        return Identity()
    if not isinstance(transform, Transform):
        raise TypeError(f"transform: expected a linmaml.meta transform (Identity, MetaSGD, MetaCurvature, KFO, "
                        f"LearnedRates, Momentum, Chain), got {type(transform).__name__}")
    return transform

