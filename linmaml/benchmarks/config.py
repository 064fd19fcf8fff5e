"""The objects a run's settings build: the learner (:func:`build_from_config`), the engine
(:func:`make_engine`), per-iteration seeds and rates, and the checks of settings against data and model.

The settings themselves (:class:`TrainConfig`, :func:`resume_config`, the choices and bounds) are
declared once in :mod:`linmaml.benchmarks.settings`, which imports no torch; they are re-exported here.

The training-recipe options of MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML",
ICLR): ``msl_iterations`` (the multi-step loss, weights from :func:`msl_weights`) and
``first_order_iterations`` (derivative-order annealing: :func:`first_order_at`). Both are pure
functions of the iteration, so a resumed run continues them exactly.
"""
from __future__ import annotations

import importlib
import json
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from linmaml.benchmarks.learners import ESTIMATOR_ALGOS, build_learner, check_model_record
from linmaml.benchmarks.settings import (  # noqa: F401 (re-exported: the settings' one declaration)
    ALGOS, CLASS_SPLITS, DEFAULT_FILTERS, OWN_DATA, RANDOMNESS, DEFAULT_POOL, DEPTH_MAX, DTYPES, EVAL_TASKS_MAX, IDENTITY, META_BATCH_MAX,
    ON_NONFINITE, OUTER_LR_MAX, OUTER_OPTIMIZERS, POOLS, SCHEDULES, SEED_MAX, STEPS_MAX, THREADS_MAX, TRANSFORMS, WIDTH_MAX, Setting,
    TrainConfig, check_model_kwargs, declared, resume_config)
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta import estimators
from linmaml.meta.engine import Engine

#: MAML++'s floor of each non-final multi-step-loss weight, times the number of steps (0.03/S).
MSL_FLOOR = 0.03


def outer_lr_at(config: TrainConfig, iteration: int) -> float:
    """The outer learning rate of ``iteration`` (1-based): ``outer_lr``, or with the cosine schedule
    ``outer_lr · ½(1 + cos(π (t − 1)/T))``, with the linear one ``outer_lr · (1 − (t − 1)/T)``, over
    ``T = iterations`` (a pure function of the iteration, so a resumed run takes the uninterrupted
    run's steps). Both start at ``outer_lr`` and would reach 0 at t = T + 1: the linear one ends at
    ``outer_lr/T``, which is Nichol et al.'s Reptile annealing (ε·(1 − i/T) at their 0-based
    iteration i = t − 1)."""
    if config.outer_lr_schedule == "constant":
        return config.outer_lr
    if config.outer_lr_schedule == "linear":
        return float(config.outer_lr * (1.0 - (iteration - 1) / config.iterations))
    return float(config.outer_lr * 0.5 * (1.0 + np.cos(np.pi * (iteration - 1) / config.iterations)))


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The outer optimiser of a run: ``torch.optim.Adam(params, lr=outer_lr, eps=outer_eps)`` or plain
    ``torch.optim.SGD(params, lr=outer_lr)`` (no momentum, no weight decay: θ ← θ − lr·g)."""
    if config.outer_optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.outer_lr)
    return torch.optim.Adam(params, lr=config.outer_lr, eps=config.outer_eps)


def train_shots(config: TrainConfig) -> int:
    """Support examples per class of a training task: ``train_shots``, else ``shots``."""
    return config.shots if config.train_shots is None else config.train_shots


def msl_weights(config: TrainConfig, iteration: int) -> list[float] | None:
    """The multi-step-loss weights ``[w_1, …, w_S]`` of ``iteration`` (1-based), or None where the
    loss is the last step's alone (``msl_iterations`` 0, or ``iteration > msl_iterations``).

    MAML++'s schedule (Antoniou et al. 2019, section 4, "multi-step loss optimization"), per
    iteration rather than per epoch: with S = ``steps``, A = ``msl_iterations`` and
    d = (t − 1)/(S·A), the non-final weights are max(1/S − d, 0.03/S) and the final one
    min(1/S + (S − 1)·d, 1 − (S − 1)·0.03/S): uniform at iteration 1, the non-final ones decaying
    linearly to the floor 0.03/S, which they reach at t − 1 = 0.97·A, the final one taking the rest
    (the weights sum to 1 throughout). After A iterations the loss is the last step's, as in MAML++.
    """
    if not config.msl_iterations or iteration > config.msl_iterations:
        return None
    steps = config.steps
    decay = (iteration - 1) / (steps * config.msl_iterations)
    floor = MSL_FLOOR / steps
    non_final = max(1.0 / steps - decay, floor)
    final = min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return [non_final] * (steps - 1) + [final]


def first_order_at(config: TrainConfig, iteration: int) -> bool:
    """Whether ``iteration`` (1-based) differentiates the inner loop to first order only: MAML++'s
    derivative-order annealing (Antoniou et al. 2019, section 4) takes first-order steps for the first
    ``first_order_iterations`` iterations, then second-order ones; ``algo="fomaml"`` is first order
    throughout."""
    return config.algo == "fomaml" or iteration <= config.first_order_iterations


def data_options(config: TrainConfig) -> dict:
    """The options :func:`linmaml.benchmarks.data.load_splits` needs for ``config``'s classes."""
    if config.benchmark in OWN_DATA:
        return {"data": config.data, "name": config.data_name, "split_dir": config.data_splits}
    return {} if config.class_split == "standard" else {"class_split": config.class_split}


def check_task_fits(split, ways: int, shots: int, query: int, query_name: str = "query",
                    shots_name: str = "shots") -> None:
    """``ArgumentError`` naming the setting out of range when ``split`` cannot supply ``ways``-way
    tasks of ``shots`` support and ``query`` query examples per class: ``ways`` beyond its classes,
    ``shots`` leaving no example for a query, else the query count (called ``query_name``: training
    tasks use ``query``, validation tasks ``test_query``, ``linmaml evaluate`` its ``--query``)."""
    where, examples = split.name, split.examples_per_class
    if ways > split.num_classes:
        raise ArgumentError("ways", f"expected at most {split.num_classes} (the classes of {where}), got {ways}")
    if shots >= examples:
        raise ArgumentError(shots_name, f"expected at most {examples - 1} (each class of {where} holds {examples} "
                                     f"examples, and at least one must be left for the query set), got {shots}")
    if shots + query > examples:
        raise ArgumentError(query_name, f"expected at most {examples - shots} (each class of {where} holds {examples}"
                                        f" examples, {shots} of them for the support set), got {query}")


def check_splits(config: TrainConfig, splits: Mapping) -> None:
    """The settings of ``config`` against the data: training tasks (``train_shots``, ``query``) from
    ``splits["train"]``, validation tasks (``shots``, ``test_query``) from ``splits["val"]``."""
    check_task_fits(splits["train"], config.ways, train_shots(config), config.query, "query",
                    "shots" if config.train_shots is None else "train_shots")
    check_task_fits(splits["val"], config.ways, config.shots, config.test_query, "test_query")


def iteration_seed(seed: int, iteration: int) -> int:
    """The torch seed of iteration ``iteration`` (a pure function of both, 63 bits)."""
    state = np.random.SeedSequence([int(seed), 0x6C6D, int(iteration)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def build_from_config(config: TrainConfig, image_shape, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """A fresh learner for ``config`` and images of ``image_shape = (C, H, W)`` (float32, CPU), around
    ``model`` for a run on a user model (:func:`check_model_matches` first). A run whose config
    records where its model was imported from (``model_import``, ``model_kwargs``: ``linmaml train
    --model``) rebuilds it from there when ``model`` is None."""
    if model is None and config.model is not None and config.model_import is not None:
        model = import_model(config.model_import, config.model_kwargs)
    check_model_matches(config, model)
    # the ConvNet's own settings only for the ConvNet (a user-model config records them as None)
    convnet = {} if model is not None else {"layers": config.layers, "hidden": config.hidden, "pool": config.pool}
    return build_learner(image_shape=image_shape, ways=config.ways, algo=config.algo, transform=config.transform,
                         linnet=config.linnet, linnet_width=config.linnet_width, inner_lr=config.inner_lr,
                         steps=config.steps, model=model, head=config.head, **convnet,
                         **({"transform_options": {"beta1": config.adam_beta1, "beta2": config.adam_beta2,
                                                   "eps": config.adam_eps}} if config.transform == "adam" else {}),
                         **({"bn_per_step": True} if config.bn_per_step else {}))


def import_model(spec: str, kwargs: Mapping | None = None) -> torch.nn.Module:
    """A fresh instance of the ``nn.Module`` class ``spec`` = ``"package.module:Class"`` (the module
    imported as Python would, so its folder must be on ``sys.path``/``PYTHONPATH``), built with
    ``kwargs`` (a JSON object). ``ArgumentError`` naming ``model_import`` when the module or class
    cannot be found or the object is not an ``nn.Module`` class, naming ``model_kwargs`` when
    building it fails; each a one-line message."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ArgumentError("model_import", f"expected package.module:Class, got {spec!r}")
    kwargs = {} if kwargs is None else check_model_kwargs(dict(kwargs))
    module_name, qualname = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ArgumentError("model_import", f"cannot import module {module_name!r} ({error}); is its folder on "
                                            f"PYTHONPATH?") from None
    except Exception as error:  # noqa: BLE001 - the user's module failed while being imported
        raise ArgumentError("model_import", f"importing module {module_name!r} failed: {type(error).__name__}: "
                                            f"{_first_line(error)}") from None
    found = module
    for part in qualname.split("."):
        if not hasattr(found, part):
            raise ArgumentError("model_import", f"module {module_name!r} has no {qualname!r}")
        found = getattr(found, part)
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        what = f"a {type(found).__name__}" if not isinstance(found, type) else f"the class {found.__name__}"
        raise ArgumentError("model_import", f"{spec} is {what}, not a torch.nn.Module class")
    try:
        model = found(**kwargs)
    except Exception as error:  # noqa: BLE001 - the user's constructor refused its arguments
        raise ArgumentError("model_kwargs" if kwargs else "model_import",
                            f"{spec}(**{json.dumps(kwargs)}) failed: {type(error).__name__}: "
                            f"{_first_line(error)}") from None
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def check_model_matches(config: TrainConfig, model: torch.nn.Module | None, where: str = "the run") -> None:
    """``ArgumentError`` naming ``model`` unless ``model`` is what ``config`` was trained on
    (:func:`~linmaml.benchmarks.learners.check_model_record`, the one check); ``model=None`` is also
    accepted when the config records where to import the model from (``model_import``:
    :func:`build_from_config` rebuilds it)."""
    if model is None and config.model is not None and config.model_import is not None:
        return
    check_model_record(config.to_dict(), model, where)


def make_engine(learner, config: TrainConfig) -> Engine:
    """The engine a run of ``config`` trains and validates ``learner`` with (cross-entropy on labels)."""
    engine = Engine(learner, F.cross_entropy, strategy=config.batching, tasks_per_chunk=config.tasks_per_chunk,
                    compile=config.compile, randomness=config.randomness)
    if config.algo in ESTIMATOR_ALGOS:
        return estimators.EstimatorEngine(engine, make_estimator(config))
    return engine


def make_estimator(config: TrainConfig):
    """The :mod:`linmaml.meta.estimators` estimator of ``config.algo`` with the run's settings. ES draws
    from torch's global generator, which the trainer seeds per iteration (resumed runs stay exact)."""
    if config.algo == "reptile":
        return estimators.Reptile(normalize=config.reptile_scale == "rates")
    if config.algo == "imaml":
        return estimators.iMAML(lam=config.imaml_lambda, cg_steps=config.cg_steps, tolerance=config.inner_tolerance,
                                max_inner_steps=config.steps, inner_lr=config.inner_lr, solver=config.imaml_solver,
                                cg_damping=config.cg_damping, cg_lambda_damping=config.cg_lambda_damping)
    if config.algo == "truncated":
        return estimators.TruncatedMAML(config.truncate)
    if config.algo == "es":
        return estimators.EvolutionStrategies(config.es_population, config.es_sigma, seed=None)
    if config.algo == "hfmaml":
        return estimators.HessianFreeMAML(config.fd_delta)
    raise ArgumentError("algo", f"{config.algo!r} is not an estimator algorithm ({', '.join(ESTIMATOR_ALGOS)})")
