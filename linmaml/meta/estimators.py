"""Meta-gradient estimators: first-order MAML, Reptile, iMAML, truncated MAML, evolution strategies, HF-MAML.

Exact MAML differentiates the query loss through every inner step (:class:`linmaml.meta.engine.Engine`
with a second-order learner). The estimators here replace that derivative by something cheaper in
time or memory; ``linmaml reproduce --only estimators`` measures how wrong each one is against the
closed-form meta-gradient of deep linear networks (``linmaml.closedform.maml_grad``).

Every estimator is an object with one method::

    engine = Engine(learner, loss_fn)                     # any linmaml.meta learner (MAML, ANIL)
    est = Reptile().estimate(engine, x_s, y_s, x_q, y_q)  # stacked meta-batch, (M, n, …) as the engine's
    est.grads        # {learner parameter name: tensor}, the meta-gradient of the MEAN query loss
    est.loss, est.accuracy, est.info                      # mean query loss / accuracy, diagnostics

``grads`` is keyed by ``learner.named_parameters()`` (e.g. ``model.0.weight``), has one detached
tensor per parameter that requires gradients (zeros where the estimator gives that parameter no
gradient), and estimates ∇θ (1/M) Σᵢ ℓ_q,ᵢ(φᵢ(θ)) where φᵢ are the parameters adapted on task i's
support set by the learner's inner loop (plain gradient descent, rates ``learner.step_rates(steps)``).
:class:`EstimatorEngine` puts an estimator behind the engine's ``meta_gradient`` (``linmaml train
--algo reptile|imaml|truncated|es|hfmaml``).

Notation: θ the initial (meta) parameters, φ₀ = θ, φᵢ₊₁ = φᵢ − αᵢ ∇ℓ_s(φᵢ) (k steps), H_s(φ) the
Hessian of the support loss, g_q = ∇ℓ_q(φ_k). Exact MAML is Π_{i=0}^{k−1}(I − αᵢ H_s(φᵢ)) g_q.
Costs are per task, in gradient evaluations (one forward and one backward pass) of the support (s)
or query (q) loss; "HVP" is a Hessian-vector product by double backward (about two gradients).

=====================  ====================================================  ===============================
estimator              formula                                               cost (time; memory)
=====================  ====================================================  ===============================
FirstOrderMAML         g_q (the inner Jacobians taken as I)                  k s + 1 q; one step's graph
Reptile                (θ − φ_k) / Σᵢ αᵢ                                     k s (+1 query forward); none
TruncatedMAML(K)       Π_{i=k−K}^{k−1}(I − αᵢ H_s(φᵢ)) g_q                   k s + 1 q + K HVP; K steps' graph
iMAML(λ)               (I + H_s(φ*)/λ)⁻¹ ∇ℓ_q(φ*),                           T s + 1 q + C HVP; one graph
                       φ* = argmin ℓ_s(φ) + λ/2‖φ − θ‖² (T solver steps,
                       C conjugate-gradient iterations)
HessianFreeMAML        the exact recursion with H v ≈ ‖v‖(∇ℓ_s(φ + δu)       3k s + 1 q; no second-order graph
                       − ∇ℓ_s(φ − δu))/(2δ), u = v/‖v‖
EvolutionStrategies    (1/N) Σⱼ (F(θ + σεⱼ) − F(θ − σεⱼ))/(2σ) εⱼ            2N+1 adaptations, forward only
                       (F the meta-batch's post-adaptation loss)
=====================  ====================================================  ===============================

Scope: Reptile, FirstOrderMAML and EvolutionStrategies adapt through the learner itself
(:meth:`Engine.adapted` / :meth:`Engine.score`), so they work with every engine strategy and every
transform (ES perturbs every parameter of the learner, transforms included). TruncatedMAML, iMAML
and HessianFreeMAML run their own plain gradient-descent inner loop through ``learner(x,
params=...)`` (which is what differentiating through it needs), one task at a time: they accept a
learner whose transform is the identity (plain MAML, first- or second-order flag ignored, or ANIL) and
refuse others with an ``ArgumentError`` naming ``transform``. Parameters that do not adapt (ANIL's
features) get their exact direct and mixed terms in FirstOrderMAML (direct only), TruncatedMAML,
iMAML and HF-MAML, and zero from Reptile.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import torch
from torch import nn

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.engine import Engine, _accuracy_kind, check_batch
from linmaml.meta.losses import binary_accuracy

__all__ = ["Estimate", "FirstOrderMAML", "Reptile", "TruncatedMAML", "iMAML", "HessianFreeMAML",
           "EvolutionStrategies", "EstimatorEngine", "ESTIMATORS"]


@dataclasses.dataclass
class Estimate:
    """One estimator's answer for a meta-batch: ``grads`` {learner parameter name: tensor} (the mean
    over tasks), the mean query ``loss`` after adaptation, the mean ``accuracy`` (None for regression)
    and estimator-specific diagnostics in ``info``."""

    grads: dict
    loss: float
    accuracy: float | None
    info: dict = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# What the estimators share


def _parts(engine):
    learner = getattr(engine, "learner", None)
    if learner is None or not hasattr(learner, "adapted_names"):
        raise ArgumentTypeError("engine", f"expected a linmaml.meta.Engine around a linmaml.meta learner, got "
                                f"{type(engine).__name__}")
    return learner, engine.loss_fn


def _inner_module(learner) -> nn.Module:
    """The module whose parameter names ``learner.adapt`` uses: MAML's ``model``, ANIL's ``head``."""
    model = getattr(learner, "model", None)
    return model if isinstance(model, nn.Module) else learner.head


def _name_map(learner) -> dict[str, str]:
    """{adapted name (as in learner.adapt's dict): learner parameter name}."""
    by_id = {id(p): n for n, p in learner.named_parameters()}
    inner = dict(_inner_module(learner).named_parameters())
    return {n: by_id[id(inner[n])] for n in learner.adapted_names}


def _trainable(learner) -> dict[str, torch.Tensor]:
    return {n: p for n, p in learner.named_parameters() if p.requires_grad}


def _require_identity(learner, estimator: str) -> None:
    transform = getattr(learner, "transform", None)
    if transform is not None and type(transform).__name__ != "Identity":
        raise ArgumentError("transform", f"{estimator} runs its own plain gradient-descent inner loop; the learner's "
                            f"transform is {type(transform).__name__} (use Reptile, FirstOrderMAML or "
                            f"EvolutionStrategies with learned transforms)")


def _rates(learner, steps) -> list[float]:
    return learner.step_rates(steps)


def _score(output: torch.Tensor, y: torch.Tensor, kind: str | None) -> float:
    if kind == "labels":
        return float((output.detach().argmax(dim=-1) == y).to(torch.float64).mean())
    if kind == "binary":
        return float(binary_accuracy(output.detach(), y))
    return 0.0


def _loss_grads(learner, loss_fn, params: Mapping[str, torch.Tensor], x, y, wrt, create_graph=False):
    """(loss, output, grads of loss w.r.t. the tensors ``wrt`` (None where unused))."""
    output = learner(x, params=dict(params))
    loss = loss_fn(output, y)
    grads = torch.autograd.grad(loss, list(wrt), create_graph=create_graph, allow_unused=True)
    return loss, output, grads


def _descend(learner, loss_fn, start: Mapping[str, torch.Tensor], x, y, rates, names, *, create_graph=False):
    """Plain gradient steps φᵢ₊₁ = φᵢ − αᵢ ∇ℓ(φᵢ) on the adapted ``names``; differentiable iff
    ``create_graph``, otherwise every iterate is detached."""
    phi = {n: start[n] for n in names}
    for rate in rates:
        if not create_graph:
            phi = {n: v.detach().requires_grad_() for n, v in phi.items()}
        _, _, grads = _loss_grads(learner, loss_fn, phi, x, y, [phi[n] for n in names], create_graph=create_graph)
        phi = {n: phi[n] - rate * (g if g is not None else torch.zeros_like(phi[n])) for n, g in zip(names, grads)}
    return phi if create_graph else {n: v.detach() for n, v in phi.items()}


def _zeros(learner) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p) for n, p in _trainable(learner).items()}


def _accumulate(total: dict, names, grads, weight: float = 1.0) -> None:
    for n, g in zip(names, grads):
        if g is not None and n in total:
            total[n] += weight * g.detach()


class _Estimator:
    """The shared batch loop: per-task work in :meth:`_task`, averaged over the meta-batch."""

    name = "estimator"

    def estimate(self, engine, x_support, y_support, x_query, y_query, *, steps: int | None = None) -> Estimate:
        """The estimate for the stacked meta-batch (module docstring); ``steps`` overrides the
        learner's inner steps."""
        learner, loss_fn = _parts(engine)
        tasks = check_batch(x_support, y_support, x_query, y_query)
        if steps is not None:
            steps = _validate.integer(steps, "steps", minimum=1)
        return self._batch(engine, learner, loss_fn, (x_support, y_support, x_query, y_query), tasks, steps,
                           _accuracy_kind(y_query))

    def _batch(self, engine, learner, loss_fn, batch, tasks, steps, kind) -> Estimate:
        x_s, y_s, x_q, y_q = batch
        total, loss_sum, acc_sum, info = _zeros(learner), 0.0, 0.0, {}
        for i in range(tasks):
            loss, accuracy, task_info = self._task(learner, loss_fn, x_s[i], y_s[i], x_q[i], y_q[i], steps, kind,
                                                   total)
            loss_sum, acc_sum = loss_sum + loss, acc_sum + accuracy
            for key, value in task_info.items():
                info.setdefault(key, []).append(value)
        grads = {n: g / tasks for n, g in total.items()}
        return Estimate(grads, loss_sum / tasks, acc_sum / tasks if kind else None, info)

    def _task(self, learner, loss_fn, x_s, y_s, x_q, y_q, steps, kind, total):  # pragma: no cover - abstract
        raise NotImplementedError


def _query_terms(learner, loss_fn, phi, x_q, y_q, kind, total, name_map):
    """g_q = ∇ℓ_q(φ) for the adapted names (returned, keyed by adapted name) and the direct gradient of
    the parameters that do not adapt (accumulated into ``total``); also the loss and accuracy."""
    leaves = {n: v.detach().requires_grad_() for n, v in phi.items()}
    adapted = set(name_map.values())
    others = {n: p for n, p in _trainable(learner).items() if n not in adapted}
    wrt = list(leaves.values()) + list(others.values())
    loss, output, grads = _loss_grads(learner, loss_fn, leaves, x_q, y_q, wrt)
    g_q = {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(leaves, grads)}
    _accumulate(total, list(others), grads[len(leaves):])
    return g_q, float(loss.detach()), _score(output, y_q, kind)


# --------------------------------------------------------------------------------------------------
# The estimators


class FirstOrderMAML(_Estimator):
    """First-order MAML (Finn et al. 2017): ∇ℓ_q(φ_k), the inner Jacobians replaced by the identity.

    φ_k comes from the learner's own inner loop (:meth:`Engine.adapted`: every strategy and
    transform); parameters that do not adapt get their direct gradient. Cost per task: k support
    gradients and one query gradient; memory: one step's graph. Exact when α → 0 or k = 0."""

    name = "fomaml"

    def _batch(self, engine, learner, loss_fn, batch, tasks, steps, kind):
        x_s, y_s, x_q, y_q = batch
        fast = engine.adapted(x_s, y_s, steps=steps)
        name_map = _name_map(learner)
        total, loss_sum, acc_sum = _zeros(learner), 0.0, 0.0
        for i in range(tasks):
            g_q, loss, accuracy = _query_terms(learner, loss_fn, {n: v[i] for n, v in fast.items()}, x_q[i], y_q[i],
                                               kind, total, name_map)
            for n, g in g_q.items():
                total[name_map[n]] += g
            loss_sum, acc_sum = loss_sum + loss, acc_sum + accuracy
        return Estimate({n: g / tasks for n, g in total.items()}, loss_sum / tasks,
                        acc_sum / tasks if kind else None)


class Reptile(_Estimator):
    """Reptile (Nichol et al. 2018): the outer direction θ − φ_k after k inner steps on the support set.

    Returned divided by Σᵢ αᵢ (``normalize=True``, default), so that it is on the scale of a gradient:
    with one step it is exactly ∇ℓ_s(θ), and in general the average of the support gradients along
    the inner path, (1/Σαᵢ) Σᵢ αᵢ ∇ℓ_s(φᵢ). ``normalize=False`` gives θ − φ_k itself (Reptile's
    update with outer step ε is θ ← θ − ε·(θ − φ_k): over a meta-batch, plain SGD of rate ε on the mean
    is Nichol et al.'s θ ← θ + ε·mean_i(φ_k,i − θ), the right choice with an inner Adam, whose step
    is not a scalar rate times the gradient). φ_k comes from :meth:`Engine.adapted` (every
    strategy and transform, inner minibatches included: ``learner.inner_batch``); parameters that do not adapt get zero. The query set is used only for
    the reported loss and accuracy (one forward per task). Cost per task: k support gradients, no
    outer graph (first-order memory at any k)."""

    name = "reptile"

    def __init__(self, normalize: bool = True):
        if not isinstance(normalize, bool):
            raise ArgumentTypeError("normalize", f"expected True or False, got {normalize!r}")
        self.normalize = normalize

    def _batch(self, engine, learner, loss_fn, batch, tasks, steps, kind):
        x_s, y_s, x_q, y_q = batch
        rates = _rates(learner, steps)
        scale = sum(rates) if self.normalize else 1.0
        if self.normalize and scale == 0:
            raise ArgumentError("lr", "Reptile's direction is divided by the sum of the inner rates, which is 0")
        fast = engine.adapted(x_s, y_s, steps=steps)
        name_map = _name_map(learner)
        params = _trainable(learner)
        total, loss_sum, acc_sum = _zeros(learner), 0.0, 0.0
        with torch.no_grad():
            for n, v in fast.items():
                total[name_map[n]] += (params[name_map[n]].unsqueeze(0) - v).sum(0) / scale
            for i in range(tasks):
                output = learner(x_q[i], params={n: v[i] for n, v in fast.items()})
                loss_sum += float(loss_fn(output, y_q[i]))
                acc_sum += _score(output, y_q[i], kind)
        return Estimate({n: g / tasks for n, g in total.items()}, loss_sum / tasks,
                        acc_sum / tasks if kind else None)


class TruncatedMAML(_Estimator):
    """MAML with backpropagation through only the last ``window`` = K of the k inner steps.

    The first k − K steps run without a graph and their Jacobians are taken as the identity (the
    gradient passes straight through to θ, as in first-order MAML); the last K are differentiated
    exactly: Π_{i=k−K}^{k−1}(I − αᵢ H_s(φᵢ)) ∇ℓ_q(φ_k), plus the matching terms of parameters that do
    not adapt. K = 0 is first-order MAML, K ≥ k exact MAML (K is clipped at k). Cost per task:
    k support gradients, one query gradient and K Hessian-vector products in the backward pass;
    memory: K steps' graph instead of k."""

    name = "truncated"

    def __init__(self, window: int = 1):
        self.window = _validate.integer(window, "window", minimum=0)

    def _task(self, learner, loss_fn, x_s, y_s, x_q, y_q, steps, kind, total):
        _require_identity(learner, "TruncatedMAML")
        rates = _rates(learner, steps)
        name_map, params = _name_map(learner), _trainable(learner)
        names = list(name_map)
        theta = {n: params[name_map[n]] for n in names}
        cut = max(len(rates) - self.window, 0)
        early = _descend(learner, loss_fn, theta, x_s, y_s, rates[:cut], names)
        # straight-through: the value of φ_{k−K}, the derivative of θ
        start = {n: theta[n] + (early[n] - theta[n]).detach() for n in names}
        phi = _descend(learner, loss_fn, start, x_s, y_s, rates[cut:], names, create_graph=True)
        wrt_names = list(params)
        loss, output, grads = _loss_grads(learner, loss_fn, phi, x_q, y_q, [params[n] for n in wrt_names])
        _accumulate(total, wrt_names, grads)
        return float(loss.detach()), _score(output, y_q, kind), {}


def _dot(a: Mapping, b: Mapping) -> torch.Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


class iMAML(_Estimator):  # noqa: N801 - the method's published name
    """Implicit MAML (Rajeswaran et al. 2019): the meta-gradient of the proximal inner problem.

    Inner problem: φ* = argmin_φ ℓ_s(φ) + (λ/2)‖φ − θ‖², solved by gradient descent from θ with rate
    ``inner_lr`` (default the learner's first inner rate) until the proximal gradient's norm is at
    most ``tolerance`` or ``max_inner_steps`` steps were taken; a step that raises that norm is
    undone and the rate halved (a rate too large for λ + the curvature would otherwise diverge).
    ``solver="pullback"`` is the authors' code instead (imaml_dev, ``omniglot_implicit_maml.py``):
    ``max_inner_steps`` plain gradient steps of ``inner_lr`` on ℓ_s alone (no tolerance, no halving),
    then one step of ``inner_lr`` on the proximal term alone, φ ← φ − αλ(φ − θ), and φ* is taken
    to be the result. At the optimum dφ*/dθ = λ(H + λI)⁻¹
    with H = H_s(φ*), so the meta-gradient is (I + H/λ)⁻¹ ∇ℓ_q(φ*), solved by ``cg_steps``
    iterations of conjugate gradients on Hessian-vector products of ℓ_s at φ* (stopped early when the
    residual norm falls below ``cg_tolerance`` times the right-hand side's). Parameters w that do not
    adapt get ∂_w ℓ_q − ∂_w(∇_φ ℓ_s · u) with u = (H + λI)⁻¹ ∇ℓ_q(φ*). Exact only at the exact inner
    optimum and with enough CG iterations (the dimension of φ at most). Cost per task: T support
    gradients (T ≤ max_inner_steps), one query gradient, C ≤ cg_steps HVPs; memory: one support
    graph, independent of T. ``info`` reports the inner steps, the final proximal-gradient norm (None
    with ``solver="pullback"``, which computes none) and the CG iterations and relative residual per task.

    Damping (``cg_damping`` = d, ``cg_lambda_damping`` = d_λ, both 0 by default): conjugate gradients
    solve ((1 + d) I + H/(λ + d_λ)) x = ∇ℓ_q(φ*) instead, the operator of the authors' code
    (``Learner.matrix_evaluator``: ``(1 + regu_coef)·v + H v/(λ + lam_damping)``, whose Omniglot
    script passes its ``--cg_damping 1.0`` as ``regu_coef`` and keeps ``lam_damping`` at 10). With
    d > 0 or d_λ > 0 the answer is no longer the implicit gradient: ≈ (1 + d)⁻¹ of it for small H, a
    better-conditioned system for CG, and an operator positive definite whenever H ≻ −(1 + d)(λ + d_λ)."""

    name = "imaml"

    def __init__(self, lam: float = 1.0, cg_steps: int = 10, tolerance: float = 1e-6, max_inner_steps: int = 100,
                 inner_lr: float | None = None, cg_tolerance: float = 1e-10, *, solver: str = "proximal",
                 cg_damping: float = 0.0, cg_lambda_damping: float = 0.0):
        self.lam = _validate.finite_number(lam, "lam", positive=True)
        self.cg_steps = _validate.integer(cg_steps, "cg_steps", minimum=1)
        self.tolerance = _validate.finite_number(tolerance, "tolerance", nonnegative=True)
        self.max_inner_steps = _validate.integer(max_inner_steps, "max_inner_steps", minimum=0)
        self.inner_lr = None if inner_lr is None else _validate.finite_number(inner_lr, "inner_lr", positive=True)
        self.cg_tolerance = _validate.finite_number(cg_tolerance, "cg_tolerance", nonnegative=True)
        if solver not in ("proximal", "pullback"):
            raise ArgumentError("solver", f"expected proximal or pullback, got {solver!r}")
        self.solver = solver
        self.cg_damping = _validate.finite_number(cg_damping, "cg_damping", nonnegative=True)
        self.cg_lambda_damping = _validate.finite_number(cg_lambda_damping, "cg_lambda_damping", nonnegative=True)

    def _pullback(self, learner, loss_fn, theta, x_s, y_s, rate, names):
        """The authors' inner solver (class docstring): plain steps on ℓ_s, then one on the proximal term."""
        phi = _descend(learner, loss_fn, theta, x_s, y_s, [rate] * self.max_inner_steps, names)
        return {n: phi[n] - (rate * self.lam) * (phi[n] - theta[n]) for n in names}

    def _task(self, learner, loss_fn, x_s, y_s, x_q, y_q, steps, kind, total):
        _require_identity(learner, "iMAML")
        rate = self.inner_lr if self.inner_lr is not None else _rates(learner, steps)[0]
        if not rate > 0:
            raise ArgumentError("inner_lr", f"iMAML's inner solver descends with the learner's first rate, {rate:g}; "
                                "expected a positive rate (pass iMAML(inner_lr=...))")
        name_map, params = _name_map(learner), _trainable(learner)
        names = list(name_map)
        theta = {n: params[name_map[n]].detach() for n in names}
        phi = dict(theta)
        used, norm, last, halvings = 0, math.inf, None, 0
        if self.solver == "pullback":  # computes no proximal gradient: its norm is reported as None, not inf
            phi, used = self._pullback(learner, loss_fn, theta, x_s, y_s, rate, names), self.max_inner_steps
            norm = None
        else:
            for used in range(self.max_inner_steps + 1):
                leaves = {n: v.detach().requires_grad_() for n, v in phi.items()}
                _, _, grads = _loss_grads(learner, loss_fn, leaves, x_s, y_s, list(leaves.values()))
                prox = {n: (g if g is not None else 0) + self.lam * (leaves[n].detach() - theta[n])
                        for n, g in zip(names, grads)}
                norm = math.sqrt(float(_dot(prox, prox)))
                if last is not None and not norm <= last[1]:
                    # the step overshot (or left the finite range): go back and halve the rate
                    rate, halvings = rate / 2, halvings + 1
                    phi, norm, prox = last[0], last[1], last[2]
                else:
                    last = (phi, norm, prox)
                if norm <= self.tolerance or used == self.max_inner_steps:
                    break
                phi = {n: phi[n].detach() - rate * prox[n] for n in names}
        phi = {n: v.detach() for n, v in phi.items()}
        g_q, loss, accuracy = _query_terms(learner, loss_fn, phi, x_q, y_q, kind, total, name_map)

        # Support gradient at φ* with its graph: HVPs by double backward, and the mixed term for w.
        leaves = {n: v.clone().requires_grad_() for n, v in phi.items()}
        others = {n: p for n, p in params.items() if n not in name_map.values()}
        _, _, gs = _loss_grads(learner, loss_fn, leaves, x_s, y_s, list(leaves.values()), create_graph=True)
        gs = {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(names, gs)}

        identity, denominator = 1.0 + self.cg_damping, self.lam + self.cg_lambda_damping

        def operator(v):  # ((1 + d) I + H/(λ + d_λ)) v; (I + H/λ) v undamped, computed as before
            hv = torch.autograd.grad(_dot(gs, v), list(leaves.values()), retain_graph=True, allow_unused=True)
            if identity == 1.0:
                return {n: v[n] + (h.detach() if h is not None else 0) / denominator for n, h in zip(names, hv)}
            return {n: identity * v[n] + (h.detach() if h is not None else 0) / denominator for n, h in zip(names, hv)}

        v, iterations, residual = _conjugate_gradients(operator, g_q, self.cg_steps, self.cg_tolerance)
        for n in names:
            total[name_map[n]] += v[n]
        if others:
            u = {n: v[n] / self.lam for n in names}
            mixed = torch.autograd.grad(_dot(gs, u), list(others.values()), allow_unused=True)
            _accumulate(total, list(others), mixed, weight=-1.0)
        return loss, accuracy, {"inner_steps": used, "inner_gradient_norm": norm, "rate_halvings": halvings,
                                "cg_iterations": iterations, "cg_relative_residual": residual}


def _conjugate_gradients(operator, b: Mapping, iterations: int, tolerance: float):
    """Solve A x = b for a symmetric positive definite A given as ``operator`` (dicts of tensors), from
    x = 0: at most ``iterations`` steps, stopped when ‖r‖ ≤ tolerance·‖b‖. Returns (x, steps, ‖r‖/‖b‖)."""
    x = {n: torch.zeros_like(t) for n, t in b.items()}
    r = {n: t.clone() for n, t in b.items()}
    p = {n: t.clone() for n, t in b.items()}
    b_norm = math.sqrt(float(_dot(b, b)))
    if b_norm == 0:
        return x, 0, 0.0
    rr = float(_dot(r, r))
    done = 0
    for done in range(1, iterations + 1):
        Ap = operator(p)
        curvature = float(_dot(p, Ap))
        if curvature <= 0:  # not positive definite along p (a non-convex inner problem): stop here
            done -= 1
            break
        step = rr / curvature
        x = {n: x[n] + step * p[n] for n in x}
        r = {n: r[n] - step * Ap[n] for n in r}
        rr_new = float(_dot(r, r))
        if math.sqrt(rr_new) <= tolerance * b_norm:
            rr = rr_new
            break
        p = {n: r[n] + (rr_new / rr) * p[n] for n in p}
        rr = rr_new
    return x, done, math.sqrt(rr) / b_norm


class HessianFreeMAML(_Estimator):
    """Hessian-free MAML (Fallah, Mokhtari & Ozdaglar 2020): exact MAML's adjoint recursion with every
    Hessian-vector product replaced by a central finite difference of support gradients.

    λ_k = ∇ℓ_q(φ_k); for i = k−1 … 0: λ_i = λ_{i+1} − αᵢ d_i with
    d_i = ‖λ_{i+1}‖ (∇ℓ_s(φᵢ + δ v̂) − ∇ℓ_s(φᵢ − δ v̂)) / (2δ), v̂ = λ_{i+1}/‖λ_{i+1}‖ (the
    perturbation has norm ``delta`` = δ); the meta-gradient is λ_0. The same differences of the
    gradients of parameters that do not adapt give their mixed terms. Error O(δ²) (third derivatives
    of ℓ_s) plus rounding O(ε/δ): δ ≈ 1e-4 suits float64, 1e-2 float32; on a quadratic support loss it is
    exact for every δ. Cost per task: 3k support gradients and one query gradient, no second-order
    graph (first-order memory; the k iterates are kept)."""

    name = "hfmaml"

    def __init__(self, delta: float = 1e-4):
        self.delta = _validate.finite_number(delta, "delta", positive=True)

    def _task(self, learner, loss_fn, x_s, y_s, x_q, y_q, steps, kind, total):
        _require_identity(learner, "HessianFreeMAML")
        rates = _rates(learner, steps)
        name_map, params = _name_map(learner), _trainable(learner)
        names = list(name_map)
        others = {n: p for n, p in params.items() if n not in name_map.values()}
        phi = {n: params[name_map[n]].detach() for n in names}
        iterates = []
        for rate in rates:
            iterates.append(phi)
            phi = _descend(learner, loss_fn, phi, x_s, y_s, [rate], names)
        adjoint, loss, accuracy = _query_terms(learner, loss_fn, phi, x_q, y_q, kind, total, name_map)
        wrt_others = list(others.values())

        def full_gradient(point):
            leaves = {n: v.detach().requires_grad_() for n, v in point.items()}
            _, _, grads = _loss_grads(learner, loss_fn, leaves, x_s, y_s, list(leaves.values()) + wrt_others)
            return [g if g is not None else torch.zeros_like(t) for g, t in
                    zip(grads, list(leaves.values()) + wrt_others)]

        for point, rate in zip(reversed(iterates), reversed(rates)):
            if rate == 0:
                continue
            size = math.sqrt(float(_dot(adjoint, adjoint)))
            if size == 0:
                break
            h = self.delta / size  # displacement δ·v̂ = h·λ
            plus = full_gradient({n: point[n] + h * adjoint[n] for n in names})
            minus = full_gradient({n: point[n] - h * adjoint[n] for n in names})
            diff = [(a - b) / (2 * h) for a, b in zip(plus, minus)]
            _accumulate(total, list(others), diff[len(names):], weight=-rate)
            adjoint = {n: adjoint[n] - rate * d for n, d in zip(names, diff)}
        for n in names:
            total[name_map[n]] += adjoint[n]
        return loss, accuracy, {}


class EvolutionStrategies(_Estimator):
    """Evolution strategies: the antithetic estimate of the gradient of the Gaussian-smoothed
    post-adaptation loss F_σ(θ) = E_ε F(θ + σε), ε ~ N(0, I),

        ĝ = (1/N) Σⱼ [F(θ + σεⱼ) − F(θ − σεⱼ)] / (2σ) · εⱼ,      N = ``population`` pairs,

    where F is the meta-batch's mean query loss after adaptation (:meth:`Engine.score`: every
    strategy and transform; the same meta-batch for every perturbation). E ĝ = ∇F_σ(θ); for a
    quadratic F, ∇F_σ = ∇F (the smoothing bias is O(σ²) in general), and the variance falls as 1/N.
    Every trainable parameter of the learner is perturbed (transform parameters included).
    ``seed``: an int draws the εⱼ from a fresh ``torch.Generator`` seeded with it at each call (the
    same estimate for the same inputs); None draws from torch's global generator (a training run
    seeds that per iteration, which keeps resumed runs exact). The parameters are restored exactly.
    Cost: 2N + 1 adaptations and query passes (the extra one for the reported loss), forward only;
    memory: one perturbation. ``keep_samples=True`` puts the N per-pair estimates in
    ``info["samples"]`` ({name: (N, …)}) for standard errors."""

    name = "es"

    def __init__(self, population: int = 16, sigma: float = 1e-2, seed: int | None = 0, keep_samples: bool = False):
        self.population = _validate.integer(population, "population", minimum=1)
        self.sigma = _validate.finite_number(sigma, "sigma", positive=True)
        if seed is not None:
            seed = _validate.integer(seed, "seed", minimum=0)
        self.seed = seed
        if not isinstance(keep_samples, bool):
            raise ArgumentTypeError("keep_samples", f"expected True or False, got {keep_samples!r}")
        self.keep_samples = keep_samples

    def _batch(self, engine, learner, loss_fn, batch, tasks, steps, kind):
        params = _trainable(learner)
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        saved = {n: p.detach().clone() for n, p in params.items()}
        total = _zeros(learner)
        samples = {n: [] for n in params} if self.keep_samples else None

        def value():
            losses, _ = engine.score(*batch, steps=steps)
            return float(losses.mean())

        try:
            with torch.no_grad():
                losses, accuracies = engine.score(*batch, steps=steps)
                for _ in range(self.population):
                    noise = {n: torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
                             if generator is not None else torch.randn_like(p) for n, p in params.items()}
                    for n, p in params.items():
                        p.copy_(saved[n] + self.sigma * noise[n])
                    up = value()
                    for n, p in params.items():
                        p.copy_(saved[n] - self.sigma * noise[n])
                    down = value()
                    coefficient = (up - down) / (2 * self.sigma)
                    for n in params:
                        total[n] += coefficient * noise[n]
                        if samples is not None:
                            samples[n].append(coefficient * noise[n])
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])
        grads = {n: g / self.population for n, g in total.items()}
        info = {"samples": {n: torch.stack(v) for n, v in samples.items()}} if samples is not None else {}
        accuracy = float(accuracies.mean()) if accuracies is not None else None
        return Estimate(grads, float(losses.mean()), accuracy, info)


#: ``linmaml train --algo`` names of the estimators (exact MAML, fomaml and anil are the learners' own).
ESTIMATORS = {"reptile": Reptile, "imaml": iMAML, "truncated": TruncatedMAML, "es": EvolutionStrategies,
              "hfmaml": HessianFreeMAML}


class EstimatorEngine(Engine):
    """An :class:`~linmaml.meta.engine.Engine` whose ``meta_gradient`` is an estimator's.

    ``EstimatorEngine(engine, estimator).meta_gradient(x_s, y_s, x_q, y_q, scale)`` adds
    ``scale · M ·`` the estimate (so ``scale = 1/M`` gives the estimate of the mean, as the engine's
    own method gives the mean's gradient) into the learner's ``.grad`` and returns the sums of the
    query losses and accuracies, as :meth:`Engine.meta_gradient` does. Everything else (``score``,
    ``adapted``, ``task_losses``, ``learner``, …) is the wrapped engine's; it is an ``Engine`` for
    ``isinstance`` (the benchmark's scoring accepts it) without running ``Engine.__init__``.
    """

    def __init__(self, engine, estimator: _Estimator):  # noqa: D107 - Engine.__init__ deliberately not called
        if not isinstance(estimator, _Estimator):
            raise ArgumentTypeError("estimator", f"expected a linmaml.meta.estimators estimator, got "
                                    f"{type(estimator).__name__}")
        _parts(engine)
        self.engine = engine
        self.estimator = estimator

    def __getattr__(self, name):
        if name in ("engine", "estimator"):  # not yet set (unpickling, a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.engine, name)

    def score(self, *args, **kwargs):
        return self.engine.score(*args, **kwargs)

    def adapted(self, *args, **kwargs):
        return self.engine.adapted(*args, **kwargs)

    def task_losses(self, *args, **kwargs):
        return self.engine.task_losses(*args, **kwargs)

    def meta_gradient(self, x_support, y_support, x_query, y_query, scale: float = 1.0, *,
                      steps: int | None = None) -> tuple[float, float]:
        scale = _validate.finite_number(scale, "scale")
        tasks = check_batch(x_support, y_support, x_query, y_query)
        estimate = self.estimator.estimate(self.engine, x_support, y_support, x_query, y_query, steps=steps)
        params = _trainable(self.engine.learner)
        with torch.no_grad():
            for n, g in estimate.grads.items():
                p = params[n]
                if p.grad is None:
                    p.grad = (scale * tasks) * g
                else:
                    p.grad += (scale * tasks) * g
        accuracy = estimate.accuracy if estimate.accuracy is not None else 0.0
        return estimate.loss * tasks, accuracy * tasks
