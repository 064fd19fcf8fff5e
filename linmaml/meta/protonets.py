"""Prototypical networks (Snell, Swersky & Zemel 2017) as a learner on the engine.

A learner whose adaptation is a closed form rather than gradient steps: ``adapt`` embeds the support
set with ``features`` and returns the class means (the prototypes), ``learner(x, params=fast)``
scores queries by their negative squared Euclidean distance to each prototype (n_k support
examples in class k)::

    c_k = (1/n_k) Σ_{i: y_i = k} f(x_i),      logit_k(x) = −‖f(x) − c_k‖²,

so ``F.cross_entropy`` of these logits is ProtoNets' loss, and its gradient reaches ``features``
through both the query embeddings and the prototypes. The calls are those of :class:`~linmaml.meta.MAML`
(``adapt(x_support, y_support, loss_fn, steps)`` returning a dict, ``learner(x, params=fast)``,
``adapted_names``), so :class:`~linmaml.meta.engine.Engine` trains and scores it under every strategy:

    learner = meta.ProtoNet(features, ways=5)
    engine = Engine(learner, F.cross_entropy, strategy="split")
    engine.meta_gradient(x_s, y_s, x_q, y_q, scale=1 / M)   # x (M, n, …), y (M, n) integer labels

Conventions shared with :class:`~linmaml.meta.R2D2` (:mod:`linmaml.meta.ridge`): ``features`` maps
inputs ``(n, …)`` to embeddings, flattened to ``(n, d)``; ``y_support`` holds integer labels in
``[0, ways)``, shape ``(n,)``; ``ways`` may be left None outside ``vmap`` (it is then one more than
the largest support label), but the engine's ``split``/``vmap`` strategies need it (a shape cannot
depend on data under vmap). ``loss_fn`` is accepted and unused (the adaptation minimises no inner
loss), as is ``steps``; a ``closure`` does not apply and is refused. ``buffers`` is the learners'
module-state policy (:mod:`linmaml.meta.maml_learners`), kept as ``buffers_policy``. ``learner(x)``
without ``params`` returns the embeddings ``(n, d)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from linmaml import _validate
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.inner_loop import under_function_transform
from linmaml.meta.maml_learners import check_buffers_policy, state_policy

__all__ = ["ProtoNet"]


class ClosedFormLearner(nn.Module):
    """Shared by :class:`ProtoNet` and :class:`~linmaml.meta.R2D2`: features, ways, buffers policy,
    checks of the support set, and the MAML-shaped ``adapt``/``forward``. Subclasses write
    ``fit(z, onehot) -> tensor`` (support embeddings (n, d), one-hot labels (n, ways)) and
    ``predict(z, fitted) -> logits`` (query embeddings (n, d))."""

    #: the key of the one adapted tensor in ``adapt``'s dict
    adapted_name = "fitted"

    def __init__(self, features: nn.Module, ways: int | None = None, buffers: str = "update"):
        super().__init__()
        if not isinstance(features, nn.Module):
            raise ArgumentTypeError("features", f"expected a torch.nn.Module, got {type(features).__name__}")
        self.features = features
        self.ways = None if ways is None else _validate.integer(ways, "ways", minimum=2)
        self.buffers_policy = check_buffers_policy(buffers)
        self.adapted_names = [self.adapted_name]

    def extra_repr(self) -> str:
        return f"ways={self.ways}, buffers={self.buffers_policy!r}"

    def embed(self, x) -> torch.Tensor:
        """``features(x)`` flattened to ``(n, d)``."""
        z = self.features(x)
        if not isinstance(z, torch.Tensor) or z.ndim < 1:
            raise ArgumentTypeError("features", f"expected features(x) to be a tensor (n, ...), got "
                                    f"{type(z).__name__}")
        return z.reshape(z.shape[0], -1)

    def one_hot(self, y: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
        """Support labels (n,) as one-hot rows (n, ways) in ``dtype``; checked where values can be read."""
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            what = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
            raise ArgumentTypeError("y_support", f"expected integer class labels (n,), got {what}")
        if y.ndim != 1 or y.shape[0] != n:
            raise ArgumentError("y_support", f"expected one label per support example, shape ({n},), got "
                                f"{tuple(y.shape)}")
        ways = self.ways
        if not under_function_transform():
            low, high = int(y.min()), int(y.max())
            if ways is None:
                ways = high + 1
            if low < 0 or high >= ways:
                raise ArgumentError("y_support", f"expected labels in [0, {ways}), got {low}..{high}")
            missing = sorted(set(range(ways)) - set(y.tolist()))
            if missing:
                raise ArgumentError("y_support", f"class {missing[0]} has no support example")
        elif ways is None:
            raise ArgumentError("ways", f"{type(self).__name__} under vmap (the engine's 'split' and 'vmap' "
                                f"strategies) needs the number of classes: pass ways=...")
        return F.one_hot(y, ways).to(dtype)

    def fit(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, z: torch.Tensor, fitted: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adapt(self, x_support=None, y_support=None, loss_fn=None, steps: int | None = None, *, closure=None
              ) -> dict[str, torch.Tensor]:
        """``{adapted_name: fitted}`` for one task, differentiable with respect to the learner's
        parameters. ``loss_fn`` and ``steps`` are accepted for the engine and unused (module docstring)."""
        if closure is not None:
            raise ArgumentError("closure", f"{type(self).__name__} adapts in closed form from labelled support "
                                f"examples; a loss closure does not apply")
        if x_support is None:
            raise ArgumentError("x_support", "missing: pass adapt(x_support, y_support)")
        if steps is not None:
            _validate.integer(steps, "steps", minimum=1)
        with state_policy(self, self.buffers_policy):
            z = self.embed(x_support)
            return {self.adapted_name: self.fit(z, self.one_hot(y_support, z.shape[0], z.dtype))}

    def forward(self, x, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``(n, ways)`` of the queries ``x`` given ``params`` from :meth:`adapt`; without
        ``params`` the embeddings ``(n, d)``."""
        if params is None:
            return self.embed(x)
        if self.adapted_name not in params:
            raise ArgumentError("params", f"expected the dict adapt returned (key {self.adapted_name!r}), got keys "
                                f"{sorted(params)}")
        with state_policy(self, self.buffers_policy):
            return self.predict(self.embed(x), params[self.adapted_name])


class ProtoNet(ClosedFormLearner):
    """Prototypical networks (module docstring): prototypes are class means of the support
    embeddings, logits the negative squared Euclidean distances to them.

    ``features``: ``nn.Module`` (n, …) -> embeddings; ``ways``: number of classes (None: from the
    labels, outside vmap only); ``buffers``: "update" or "frozen". ``adapt`` returns
    ``{"prototypes": (ways, d)}``.
    """

    adapted_name = "prototypes"

    def fit(self, z, onehot):
        # class means: (ways, n) @ (n, d) / counts; one matmul, so vmap batches it
        return (onehot.T @ z) / onehot.sum(0).unsqueeze(1)

    def predict(self, z, prototypes):
        # ‖z − c‖² written out as a difference (not ‖z‖² − 2 z·c + ‖c‖²), which cancels badly
        # when a query sits near a prototype
        return -((z.unsqueeze(-2) - prototypes) ** 2).sum(-1)
