"""Model-agnostic meta-learning in torch: MAML, first-order MAML, ANIL, ProtoNets, R2-D2, meta-optimizers, LinNet.

::

    from linmaml import meta
    learner = meta.MAML(model, lr=0.1, steps=5, transform=meta.KFO(), first_order=False,
                        adapted="all", adapt_transform=False)
    fast = learner.adapt(x_support, y_support, loss_fn)     # dict name -> tensor, differentiable
    loss = loss_fn(learner(x_query, params=fast), y_query)
    loss.backward()                                         # reaches model AND transform parameters

``adapt`` takes any inputs the model takes (a dict of tensors, …) and any targets ``loss_fn`` takes
(``None`` included); for a support loss that is not ``loss_fn(model(x), y)`` (NLP, a policy-gradient
surrogate, a penalty on the weights) pass a closure of the parameters instead,
``learner.adapt(closure=lambda params: ...)``, and evaluate the model in it with
``learner(inputs, params=params)``. ``MAML``'s defaults (``lr=0.1, steps=5``) are not
``linmaml train``'s (``--inner-lr 0.4 --steps 1``): pass both when porting a run. The buffers policy
(``buffers="update"``/``"frozen"``) is ``learner.buffers_policy``; ``learner.buffers()`` is
``nn.Module``'s, so SWA/EMA wrappers (``torch.optim.swa_utils.AveragedModel``) take a learner.

Modules: :mod:`~linmaml.meta.inner_loop` (the pure inner loop), :mod:`~linmaml.meta.maml_learners`
(MAML, ANIL), :mod:`~linmaml.meta.protonets` (ProtoNet: class means and squared distances, Snell et
al. 2017), :mod:`~linmaml.meta.ridge` (R2D2: a closed-form ridge head with learned λ, scale and
bias, Bertinetto et al. 2019), :mod:`~linmaml.meta.transforms` (the protocol ``init``/``step``,
``stateless``; Identity, MetaSGD, MetaCurvature, KFO, LearnedRates, Momentum, Adam — a
differentiable inner Adam, torch.optim.Adam's update, finite meta-gradients at zero second moment,
learnable betas — and Chain), :mod:`~linmaml.meta.engine` (Engine: adaptation, scores and
meta-gradients of stacked meta-batches, for every learner here), :mod:`~linmaml.meta.linnet`
(LinNet). Every learned transform starts as the identity, so every learner starts as plain MAML; the
identities that make this library exact (MAML equals the closed forms, depth equals KFO, Meta-SGD
equals a reparameterisation, ANIL equals head-only MAML) are rows of ``linmaml verify``
(``linmaml/checks/meta.py``). ANIL's features see the support and the query sets apart, where
learn2learn's ANIL examples normalise them together (:class:`~linmaml.meta.ANIL`).
"""
from linmaml.meta.engine import STRATEGIES, Engine
from linmaml.meta.inner_loop import inner_loop
from linmaml.meta.maml_learners import (ANIL, BUFFER_POLICIES, MAML, StepsBeyondTrainingWarning, adapted_parameter_names,
                                        frozen_buffers, head_parameter_names)
from linmaml.meta.linnet import LinNet
from linmaml.meta.protonets import ProtoNet
from linmaml.meta.ridge import R2D2
from linmaml.meta.transforms import (KFO, Adam, Chain, Identity, LearnedRates, MetaCurvature, MetaSGD, Momentum,
                                     Transform, parameter_key, stateless)

__all__ = ["MAML", "ANIL", "ProtoNet", "R2D2", "LinNet", "Engine", "STRATEGIES", "Transform", "stateless", "Identity", "MetaSGD",
           "MetaCurvature", "KFO", "LearnedRates", "Momentum", "Adam", "Chain", "inner_loop", "adapted_parameter_names",
           "head_parameter_names", "parameter_key", "StepsBeyondTrainingWarning", "BUFFER_POLICIES", "frozen_buffers"]

# Meta-gradient estimators (Reptile, iMAML, truncated and Hessian-free MAML, evolution strategies).
from linmaml.meta.estimators import (EstimatorEngine, EvolutionStrategies, FirstOrderMAML,  # noqa: E402
                                     HessianFreeMAML, Reptile, TruncatedMAML, iMAML)

__all__ += ["Reptile", "iMAML", "TruncatedMAML", "HessianFreeMAML", "EvolutionStrategies", "FirstOrderMAML",
            "EstimatorEngine"]
