"""Model-agnostic meta-learning in torch: MAML, first-order MAML, ANIL, meta-optimizers, LinNet.

::

    from linmaml import meta
    learner = meta.MAML(model, lr=0.1, steps=5, transform=meta.KFO(), first_order=False,
                        adapted="all", adapt_transform=False)
    fast = learner.adapt(x_support, y_support, loss_fn)     # dict name -> tensor, differentiable
    loss = loss_fn(learner(x_query, params=fast), y_query)
    loss.backward()                                         # reaches model AND transform parameters

Modules: :mod:`~linmaml.meta.inner_loop` (the pure inner loop), :mod:`~linmaml.meta.learners`
(MAML, ANIL), :mod:`~linmaml.meta.transforms` (the protocol ``init``/``step``, ``stateless``;
Identity, MetaSGD, MetaCurvature, KFO, LearnedRates, Momentum, Chain), :mod:`~linmaml.meta.engine`
(Engine: adaptation, scores and meta-gradients of stacked meta-batches), :mod:`~linmaml.meta.linnet`
(LinNet). Every learned transform starts as the identity, so every learner starts as plain MAML; the
identities that make this library exact (MAML equals the closed forms, depth equals KFO, Meta-SGD
equals a reparameterisation, ANIL equals head-only MAML) are rows of ``linmaml verify``
(``linmaml/checks/meta.py``).
"""
from linmaml.meta.engine import STRATEGIES, Engine
from linmaml.meta.inner_loop import inner_loop
from linmaml.meta.learners import (ANIL, BUFFER_POLICIES, MAML, StepsBeyondTrainingWarning, adapted_parameter_names,
                                   frozen_buffers, head_parameter_names)
from linmaml.meta.linnet import LinNet
from linmaml.meta.transforms import (KFO, Chain, Identity, LearnedRates, MetaCurvature, MetaSGD, Momentum, Transform,
                                     parameter_key, stateless)

__all__ = ["MAML", "ANIL", "LinNet", "Engine", "STRATEGIES", "Transform", "stateless", "Identity", "MetaSGD",
           "MetaCurvature", "KFO", "LearnedRates", "Momentum", "Chain", "inner_loop", "adapted_parameter_names",
           "head_parameter_names", "parameter_key", "StepsBeyondTrainingWarning", "BUFFER_POLICIES", "frozen_buffers"]
