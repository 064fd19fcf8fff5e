"""The settings of a training run: :class:`TrainConfig`, what a resumed run may change
(:func:`resume_config`), and the objects a config builds (the learner, the engine, per-iteration seeds).

The training-recipe options of MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML",
ICLR), each off by default: ``msl_iterations`` (the multi-step loss, weights from :func:`msl_weights`)
and ``first_order_iterations`` (derivative-order annealing: :func:`first_order_at`). Both are pure
functions of the iteration, so a resumed run continues them exactly. ``bn_per_step``: one BatchNorm
affine set per inner step (BNWB, :func:`linmaml.benchmarks.learners.build_learner`; the built-in
ConvNet only). ``class_split`` chooses the
classes: ``"standard"`` (the shipped split) or, for Omniglot, ``"alphabets"`` (Lake et al.'s
background/evaluation alphabets, :func:`linmaml.benchmarks.data.omniglot.alphabet_split_table`).

``batching`` is the engine's strategy (:mod:`linmaml.meta.engine`): "split" (default; inner loops of
``tasks_per_chunk`` tasks vmapped, queries one task at a time: the fastest on a small CPU), "loop"
(one task at a time: least memory) or "vmap" (whole chunks: a GPU's choice). Every choice gives the
same meta-gradient up to rounding.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from linmaml import _validate
from linmaml.benchmarks.learners import (ALGOS, ESTIMATOR_ALGOS, POOLS, TRANSFORMS, build_learner, model_class_name,
                                         model_fingerprint, same_model_class)
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta import estimators
from linmaml.meta.engine import STRATEGIES, Engine

#: The built-in benchmarks, then your own data (``data=``: an .npz of arrays, an image folder tree;
#: :mod:`linmaml.benchmarks.data.own`).
OWN_DATA = ("arrays", "folder")
BENCHMARKS = ("omniglot", "cifar-fs", "mini-imagenet") + OWN_DATA
DEFAULT_FILTERS = {"omniglot": 64, "cifar-fs": 32, "mini-imagenet": 32, "arrays": 64, "folder": 64}
#: Omniglot's usual MAML backbone down-samples with stride-2 convolutions (Finn et al. 2017), the
#: others with 2x2 max-pooling; the stride version costs about a quarter of the arithmetic. Your own
#: data gets stride-2 convolutions too: they never shrink a side below one pixel, whatever the size.
DEFAULT_POOL = {"omniglot": "stride", "cifar-fs": "max", "mini-imagenet": "max", "arrays": "stride",
                "folder": "stride"}
#: ``torch.func.vmap``'s randomness for a model that draws random numbers (Dropout) under the vmapped
#: strategies: "different" (independent per task, as the loop), "same" (shared within a chunk) or
#: "error" (refuse such a model).
RANDOMNESS = ("different", "same", "error")
ON_NONFINITE = ("stop", "skip")
#: How a meta-batch's tasks are computed: the engine's strategies (:mod:`linmaml.meta.engine`).
BATCHING = STRATEGIES
DTYPES = ("float32", "float64")
#: The outer (Adam) learning rate over iterations: fixed, or a half cosine from ``outer_lr`` at
#: iteration 1 down to nearly 0 at the last (:func:`outer_lr_at`).
SCHEDULES = ("constant", "cosine")
#: Which classes make the splits: the shipped split, or (Omniglot) Lake et al.'s alphabet split.
CLASS_SPLITS = ("standard", "alphabets")
#: MAML++'s floor of each non-final multi-step-loss weight, times the number of steps (0.03/S).
MSL_FLOOR = 0.03

# Upper bounds of the settings, checked before anything is written. Beyond them a run does not
# train worse but breaks: torch's allocator or Adam's float32 arithmetic fails with messages that
# name no setting, or a pass runs for days. Each is far beyond what the few-shot literature uses.
#: Adam moves every weight by about ``outer_lr`` per step, so beyond a few units a run only
#: diverges (stopped with exit 3); near 3e37 Adam's own step ``lr / (1 - beta1)`` overflows float32.
OUTER_LR_MAX = 1e3
#: Filters per conv block and LinNet width: a block holds 9·hidden² weights, a LinNet layer
#: width², each kept four times (weights, gradient, Adam's two moments); 4096 is already 600 MB per
#: block in float32 (the widest usual few-shot backbone, ResNet-12, has 640 channels).
WIDTH_MAX = 4096
#: Conv blocks and LinNet layers (the usual backbones have 4 blocks).
DEPTH_MAX = 64
#: Inner steps: second-order MAML keeps every step's graph, so memory grows with each step
#: (MAML uses 1-10 in training and up to 50 at test).
STEPS_MAX = 1000
#: Tasks of one iteration are held in memory at once (images and, per chunk, activations):
#: 10,000 5-way 1-shot Omniglot tasks with 5 queries are 0.9 GB of images (usual: 2-32).
META_BATCH_MAX = 10_000
#: Validation and evaluation tasks (scored in chunks, so the bound is time, not memory): the 95% CI
#: of a mean accuracy over 100,000 tasks is at most ±0.31 points; more tasks only cost hours.
EVAL_TASKS_MAX = 100_000
#: Seeds are signed 64-bit integers wherever they go (torch, numpy, JSON readers).
SEED_MAX = 2**63 - 1
#: CPU threads for torch (``torch.set_num_threads`` takes a C int; beyond the cores, threads only
#: wait for each other).
THREADS_MAX = 1024


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Defaults: 5-way 1-shot second-order MAML on Omniglot with
    the 4-block CNN, 1 inner step of 0.4 in training and 3 at test (with a learned transform, the
    training steps: see ``test_steps``), meta-batch 16, Adam 1e-3,
    4,000 iterations (chosen to reach 95% test accuracy on Omniglot within an hour of CPU).
    ``hidden=None`` and ``pool=None`` take the benchmark's usual values (64 filters and stride-2
    convolutions for Omniglot; 32 filters and max-pooling otherwise).

    ``query`` is the number of query examples per class in *training* tasks (default 5: the query
    set is most of a task's cost, and on Omniglot 5 per class learns about as well per iteration as
    15 at a third of the time); validation and test tasks use ``test_query`` (15, the usual protocol).
    """

    benchmark: str = "omniglot"
    ways: int = 5
    shots: int = 1
    query: int = 5
    test_query: int = 15
    algo: str = "maml"
    transform: str = "none"
    linnet: int = 0
    linnet_width: int | None = None
    layers: int = 4
    hidden: int | None = None
    pool: str | None = None
    steps: int = 1
    #: None: 3 for plain MAML/ANIL (transform "none"); with a learned transform, ``steps`` (it is tuned
    #: to the steps it was trained with; more would start with the "beyond training" note).
    test_steps: int | None = None
    inner_lr: float = 0.4
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "constant"
    #: MAML++'s training recipe (module docstring): multi-step loss for the first ``msl_iterations``
    #: iterations, first order for the first ``first_order_iterations`` (0: off).
    msl_iterations: int = 0
    first_order_iterations: int = 0
    #: MAML++'s per-step BatchNorm weights and biases (BNWB; the built-in ConvNet only).
    bn_per_step: bool = False
    class_split: str = "standard"
    meta_batch: int = 16
    iterations: int = 4000
    val_every: int = 250
    val_tasks: int = 200
    checkpoint_every: int = 50
    #: Keep the weights of every S-th iteration (and of iteration 0) as ``snapshots/iter-<t>.pt``
    #: (0: none); for analyses over training, such as how representations change (CKA).
    snapshot_every: int = 0
    seed: int = 0
    dtype: str = "float32"
    on_nonfinite: str = "stop"
    batching: str = "split"
    tasks_per_chunk: int = 4
    compile: bool = False
    #: A run on the user's own model (``train(model=...)``): its class name and
    #: :func:`~linmaml.benchmarks.learners.model_fingerprint` (both None for the built-in ConvNet), and
    #: for ANIL the name of its adapted head submodule (None: the last module with parameters).
    model: str | None = None
    model_fingerprint: str | None = None
    head: str | None = None
    #: Settings of the estimator algorithms (:mod:`linmaml.meta.estimators`; unused by the others):
    #: truncated MAML's window K; iMAML's λ, conjugate-gradient iterations and inner-solver tolerance
    #: (its solver takes at most ``steps`` gradient steps of ``inner_lr``); the population (antithetic
    #: pairs) and σ of evolution strategies; the finite-difference step of Hessian-free MAML.
    truncate: int = 1
    imaml_lambda: float = 1.0
    cg_steps: int = 5
    inner_tolerance: float = 1e-3
    es_population: int = 8
    es_sigma: float = 1e-2
    fd_delta: float = 1e-3
    #: Your own data (``benchmark`` "arrays" or "folder"; :mod:`linmaml.benchmarks.data.own`): the .npz
    #: file or image folder, its name (default: the file's stem or the folder's name) and a folder of
    #: split files (train.txt, val.txt, test.txt listing classes; None: the data's own split).
    data: str | None = None
    data_name: str | None = None
    data_splits: str | None = None
    #: vmap's randomness for a model with random layers (Dropout) under batching split/vmap (:data:`RANDOMNESS`).
    randomness: str = "different"

    #: Settings that change the sequence of weights; a resumed run must keep them (the last three
    #: only through floating-point rounding, but a resumed run is bitwise the uninterrupted one).
    IDENTITY = ("benchmark", "ways", "shots", "query", "algo", "transform", "linnet", "linnet_width", "layers",
                "hidden", "pool", "steps", "inner_lr", "outer_lr", "outer_lr_schedule", "meta_batch", "seed", "dtype",
                "batching", "tasks_per_chunk", "compile", "model", "model_fingerprint", "head", "truncate",
                "imaml_lambda", "cg_steps", "inner_tolerance", "es_population", "es_sigma", "fd_delta")
    IDENTITY += ("msl_iterations", "first_order_iterations", "bn_per_step", "class_split")
    #: (your own data's paths may move between a run and its resume; its name and classes may not)
    IDENTITY += ("data_name", "randomness")

    def __post_init__(self):
        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ArgumentError(name, f"expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")

        choice("benchmark", BENCHMARKS)
        choice("algo", ALGOS)
        choice("transform", TRANSFORMS)
        if self.pool is None:
            object.__setattr__(self, "pool", DEFAULT_POOL.get(self.benchmark, "max"))
        choice("pool", POOLS)
        choice("dtype", DTYPES)
        choice("on_nonfinite", ON_NONFINITE)
        choice("batching", BATCHING)
        choice("outer_lr_schedule", SCHEDULES)
        choice("randomness", RANDOMNESS)
        self._check_own_data()
        if self.test_steps is None:
            object.__setattr__(self, "test_steps", 3 if self.transform == "none" else self.steps)
        for name in ("model", "model_fingerprint", "head"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ArgumentTypeError(name, f"expected a string or None, got {type(getattr(self, name)).__name__}")
        if (self.model is None) != (self.model_fingerprint is None):
            raise ArgumentError("model", "the class name and model_fingerprint of a user model go together")
        if self.head is not None and (self.model is None or self.algo != "anil"):
            raise ArgumentError("head", "names the adapted submodule of your own model with algo 'anil'")
        if not isinstance(self.compile, bool):
            raise ArgumentTypeError("compile", f"expected True or False, got {self.compile!r}")
        # (name, minimum, maximum); the maxima are stated and explained at the top of the module.
        # ways, shots, query and test_query are bounded by the data (check_splits).
        for name, minimum, maximum in (
                ("ways", 2, None), ("shots", 1, None), ("query", 1, None), ("test_query", 1, None),
                ("linnet", 0, DEPTH_MAX), ("tasks_per_chunk", 1, META_BATCH_MAX), ("layers", 1, DEPTH_MAX),
                ("steps", 1, STEPS_MAX), ("test_steps", 1, STEPS_MAX), ("meta_batch", 1, META_BATCH_MAX),
                ("iterations", 1, None), ("val_every", 1, None), ("val_tasks", 2, EVAL_TASKS_MAX),
                ("checkpoint_every", 1, None), ("snapshot_every", 0, None), ("seed", 0, None)):
            _validate.integer(getattr(self, name), name, minimum=minimum, maximum=maximum)
        if self.seed > SEED_MAX:
            raise ArgumentError("seed", f"expected an integer below 2**63 (seeds are signed 64-bit), got {self.seed}")
        if self.hidden is None:
            object.__setattr__(self, "hidden", DEFAULT_FILTERS[self.benchmark])
        _validate.integer(self.hidden, "hidden", minimum=1, maximum=WIDTH_MAX)
        if self.linnet_width is not None:
            _validate.integer(self.linnet_width, "linnet_width", minimum=self.ways, maximum=WIDTH_MAX)
        # The inner rate may be 0 or negative (ablations); the outer one must be a positive step.
        _validate.finite_number(self.inner_lr, "inner_lr")
        _validate.finite_number(self.outer_lr, "outer_lr", positive=True)
        if self.outer_lr > OUTER_LR_MAX:
            raise ArgumentError("outer_lr", f"expected at most {OUTER_LR_MAX:g} (Adam moves each weight by about "
                                            f"this much per step), got {self.outer_lr:g}")
        object.__setattr__(self, "inner_lr", float(self.inner_lr))
        object.__setattr__(self, "outer_lr", float(self.outer_lr))
        self._check_recipe()
        self._check_estimator_settings()

    def _check_own_data(self) -> None:
        """``data`` goes with benchmark "arrays"/"folder" (and only with them); the name defaults to the
        file's stem or the folder's name."""
        for name in ("data", "data_name", "data_splits"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ArgumentTypeError(name, f"expected a string or None, got {type(getattr(self, name)).__name__}")
        if self.benchmark not in OWN_DATA:
            given = next((n for n in ("data", "data_name", "data_splits") if getattr(self, n) is not None), None)
            if given is not None:
                raise ArgumentError(given, f"is for your own data (benchmark arrays or folder), not {self.benchmark}")
            return
        if not self.data and self.data_name is None:  # (data_name alone: arrays handed to train(splits=...))
            raise ArgumentError("data", f"benchmark {self.benchmark!r} reads your own data: give the "
                                        f"{'.npz file' if self.benchmark == 'arrays' else 'image folder'}")
        from linmaml.benchmarks.data.own import check_name, default_name

        if self.data_name is None:
            object.__setattr__(self, "data_name", default_name(self.data, self.benchmark))
        check_name(self.data_name, "data_name")

    def _check_recipe(self) -> None:
        """The training-recipe options (module docstring) and the class split."""
        if self.class_split not in CLASS_SPLITS:
            raise ArgumentError("class_split", f"expected one of {', '.join(CLASS_SPLITS)}, got {self.class_split!r}")
        if self.class_split == "alphabets" and self.benchmark != "omniglot":
            raise ArgumentError("class_split", f"the alphabet split is Omniglot's; {self.benchmark} has only the "
                                               f"standard split")
        _validate.integer(self.msl_iterations, "msl_iterations", minimum=0)
        _validate.integer(self.first_order_iterations, "first_order_iterations", minimum=0)
        if self.msl_iterations and self.algo not in ("maml", "fomaml", "anil"):
            raise ArgumentError("msl_iterations", f"weighs the query loss after each step of the inner loop that the "
                                                  f"meta-gradient differentiates (algo maml, fomaml or anil), not "
                                                  f"{self.algo!r}'s")
        if self.msl_iterations and self.steps < 2:
            raise ArgumentError("msl_iterations", f"the multi-step loss weighs the query loss after each inner step; "
                                                  f"with steps {self.steps} it is the plain loss (use steps >= 2)")
        if not isinstance(self.bn_per_step, bool):
            raise ArgumentTypeError("bn_per_step", f"expected True or False, got {self.bn_per_step!r}")
        if self.bn_per_step and self.steps < 2:
            raise ArgumentError("bn_per_step", f"one BatchNorm set per inner step is plain BatchNorm with steps "
                                               f"{self.steps} (use steps >= 2)")
        if self.bn_per_step and (self.algo not in ("maml", "fomaml") or self.linnet or self.model is not None):
            raise ArgumentError("bn_per_step", "is built for the ConvNet with algo maml or fomaml, without LinNet")
        if self.first_order_iterations and self.algo not in ("maml", "anil"):
            raise ArgumentError("first_order_iterations", f"anneals second-order maml or anil from first order; algo "
                                                          f"{self.algo!r} has no second order to anneal to")

    def _check_estimator_settings(self):
        _validate.integer(self.truncate, "truncate", minimum=0, maximum=STEPS_MAX)
        _validate.integer(self.cg_steps, "cg_steps", minimum=1, maximum=STEPS_MAX)
        _validate.integer(self.es_population, "es_population", minimum=1, maximum=META_BATCH_MAX)
        for name, kind in (("imaml_lambda", "positive"), ("inner_tolerance", "nonnegative"), ("es_sigma", "positive"),
                           ("fd_delta", "positive")):
            object.__setattr__(self, name, _validate.finite_number(getattr(self, name), name, **{kind: True}))
        if self.algo in ("imaml", "truncated", "hfmaml") and self.transform != "none":
            raise ArgumentError("transform", f"algo {self.algo!r} runs its own plain gradient-descent inner loop; "
                                             f"use transform 'none' (reptile and es accept every transform)")
        if self.algo == "imaml" and self.inner_lr <= 0:
            raise ArgumentError("inner_lr", f"iMAML's inner solver descends with it: expected a positive rate, got "
                                            f"{self.inner_lr:g}")

    @classmethod
    def from_dict(cls, values: Mapping) -> "TrainConfig":
        """A config from a dict of fields; unknown keys are an error (``TypeError`` naming them)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ArgumentTypeError(unknown[0], f"not a training setting (settings: {', '.join(sorted(fields))})")
        return cls(**dict(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def resume_config(saved: Mapping, given: Mapping) -> TrainConfig:
    """The config of a resumed run: the saved one, with the settings that do not change the weights
    (``iterations``, validation, checkpointing, ``on_nonfinite``) overridable. A given identity
    setting that differs from the saved one raises ``ValueError`` naming it."""
    saved = TrainConfig.from_dict(saved)
    given_config = dict(given)
    TrainConfig.from_dict({**saved.to_dict(), **given_config})  # validates the given values
    for name in TrainConfig.IDENTITY:
        if name in given_config and given_config[name] is not None and given_config[name] != getattr(saved, name):
            raise ArgumentError(name, f"the run being resumed used {getattr(saved, name)!r}, got {given_config[name]!r}"
                             f" (a resumed run keeps its settings; use a new --out folder to change them)")
    if saved.outer_lr_schedule != "constant" and given_config.get("iterations") not in (None, saved.iterations):
        # The schedule's horizon is the run's length: a longer run would have taken other steps.
        raise ArgumentError("iterations", f"the run being resumed decays its outer learning rate "
                                          f"({saved.outer_lr_schedule}) over {saved.iterations} iterations; got "
                                          f"{given_config['iterations']} (use a new --out folder)")
    overrides = {k: v for k, v in given_config.items() if k not in TrainConfig.IDENTITY}
    return TrainConfig.from_dict({**saved.to_dict(), **overrides})


def outer_lr_at(config: TrainConfig, iteration: int) -> float:
    """The outer learning rate of ``iteration`` (1-based): ``outer_lr``, or with the cosine schedule
    ``outer_lr · ½(1 + cos(π (t − 1)/T))`` over ``T = iterations`` (a pure function of the
    iteration, so a resumed run takes the uninterrupted run's steps)."""
    if config.outer_lr_schedule == "constant":
        return config.outer_lr
    return float(config.outer_lr * 0.5 * (1.0 + np.cos(np.pi * (iteration - 1) / config.iterations)))


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


def check_task_fits(split, ways: int, shots: int, query: int, query_name: str = "query") -> None:
    """``ArgumentError`` naming the setting out of range when ``split`` cannot supply ``ways``-way
    tasks of ``shots`` support and ``query`` query examples per class: ``ways`` beyond its classes,
    ``shots`` leaving no example for a query, else the query count (called ``query_name``: training
    tasks use ``query``, validation tasks ``test_query``, ``linmaml evaluate`` its ``--query``)."""
    where, examples = split.name, split.examples_per_class
    if ways > split.num_classes:
        raise ArgumentError("ways", f"expected at most {split.num_classes} (the classes of {where}), got {ways}")
    if shots >= examples:
        raise ArgumentError("shots", f"expected at most {examples - 1} (each class of {where} holds {examples} "
                                     f"examples, and at least one must be left for the query set), got {shots}")
    if shots + query > examples:
        raise ArgumentError(query_name, f"expected at most {examples - shots} (each class of {where} holds {examples}"
                                        f" examples, {shots} of them for the support set), got {query}")


def check_splits(config: TrainConfig, splits: Mapping) -> None:
    """The settings of ``config`` against the data: training tasks (``query``) from
    ``splits["train"]``, validation tasks (``test_query``) from ``splits["val"]``."""
    check_task_fits(splits["train"], config.ways, config.shots, config.query, "query")
    check_task_fits(splits["val"], config.ways, config.shots, config.test_query, "test_query")


def iteration_seed(seed: int, iteration: int) -> int:
    """The torch seed of iteration ``iteration`` (a pure function of both, 63 bits)."""
    state = np.random.SeedSequence([int(seed), 0x6C6D, int(iteration)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def build_from_config(config: TrainConfig, image_shape, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """A fresh learner for ``config`` and images of ``image_shape = (C, H, W)`` (float32, CPU), around
    ``model`` for a run on a user model (:func:`check_model_matches` first)."""
    check_model_matches(config, model)
    return build_learner(image_shape=image_shape, ways=config.ways, algo=config.algo, transform=config.transform,
                         linnet=config.linnet, linnet_width=config.linnet_width, layers=config.layers,
                         hidden=config.hidden, pool=config.pool, inner_lr=config.inner_lr, steps=config.steps,
                         model=model, head=config.head, **({"bn_per_step": True} if config.bn_per_step else {}))


def check_model_matches(config: TrainConfig, model: torch.nn.Module | None, where: str = "the run") -> None:
    """``ValueError`` naming ``model`` unless ``model`` is what ``config`` was trained on: None for the
    built-in ConvNet, else a module of the recorded class with the recorded fingerprint."""
    if model is not None and not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
    if config.model is None:
        if model is not None:
            raise ArgumentError("model", f"{where} used the built-in ConvNet, not a model of your own; leave model out")
        return
    if model is None:
        raise ArgumentError("model", f"{where} was trained on your own model ({config.model}); pass the same "
                         f"architecture again (model=...)")
    name, fingerprint = model_class_name(model), model_fingerprint(model)
    # by qualified class name and fingerprint, not by module: a script's __main__.MyCNN is the same
    # class as my_script.MyCNN imported elsewhere
    if not same_model_class(config.model, model) or fingerprint != config.model_fingerprint:
        raise ArgumentError("model", f"{where} was trained on {config.model} (fingerprint {config.model_fingerprint}), "
                         f"got {name} (fingerprint {fingerprint}): a different class or parameter shapes")


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
        return estimators.Reptile()
    if config.algo == "imaml":
        return estimators.iMAML(lam=config.imaml_lambda, cg_steps=config.cg_steps, tolerance=config.inner_tolerance,
                                max_inner_steps=config.steps, inner_lr=config.inner_lr)
    if config.algo == "truncated":
        return estimators.TruncatedMAML(config.truncate)
    if config.algo == "es":
        return estimators.EvolutionStrategies(config.es_population, config.es_sigma, seed=None)
    if config.algo == "hfmaml":
        return estimators.HessianFreeMAML(config.fd_delta)
    raise ArgumentError("algo", f"{config.algo!r} is not an estimator algorithm ({', '.join(ESTIMATOR_ALGOS)})")
