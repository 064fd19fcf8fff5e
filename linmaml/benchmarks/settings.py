"""The settings of a training run, declared once: :class:`TrainConfig`, whose fields carry everything
said about each setting, and :func:`resume_config` (what a resumed run may change).

Each field is declared with :func:`setting`, whose :class:`Setting` (``dataclasses.fields(TrainConfig)
[i].metadata["setting"]``) holds its help text, its choices (one tuple per kind of choice, the same
tuple the code that acts on the choice checks), whether it is *identity* (it changes the sequence of
weights, so a resumed run must keep it), its range, and how the command line offers it (flag,
metavar). From that one declaration come:

* ``linmaml train``'s options (:func:`linmaml.cli.train.register`: one option per field, the field's
  help);
* the ``--config`` file and the run's ``config.json`` (exactly the fields: :meth:`TrainConfig.from_dict`,
  :meth:`TrainConfig.to_dict`);
* the resume check (:data:`IDENTITY`, :func:`resume_config`);
* the range and choice checks of :meth:`TrainConfig.__post_init__`.

This module imports no torch (the command line builds its parser from it on every ``linmaml``
command); :mod:`linmaml.benchmarks.config` re-exports it beside the objects a config builds.

The training-recipe options of MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML",
ICLR), each off by default: ``msl_iterations`` (the multi-step loss) and ``first_order_iterations``
(derivative-order annealing). ``bn_per_step``: one BatchNorm affine set per inner step (BNWB; the
built-in ConvNet only). ``class_split`` chooses the classes: ``"standard"`` (the shipped split) or, for
Omniglot, ``"alphabets"`` (Lake et al.'s background/evaluation alphabets).

The published Reptile and iMAML recipes (``configs/omniglot-5w1s-reptile.json``, ``-imaml.json``;
docs/guide/benchmarks.md) need ``train_shots`` (support examples per class of training tasks; None:
``shots``), ``inner_batch`` (training inner steps on consecutive minibatches of a support set shuffled
once per task; None: the full batch), ``transform="adam"`` with ``adam_beta1``/``adam_beta2``/
``adam_eps``, ``outer_optimizer`` (``"adam"`` with ``outer_eps``, or plain ``"sgd"``), the ``"linear"``
schedule, ``reptile_scale`` (``"none"``: Reptile's direction θ − φ unscaled, so that outer SGD of rate
ε is θ ← θ + ε·mean(φ − θ)) and iMAML's ``imaml_solver``, ``cg_damping`` and ``cg_lambda_damping``
(:class:`linmaml.meta.estimators.iMAML`). Each default is the behaviour before they existed.

``batching`` is the engine's strategy (:mod:`linmaml.meta.engine`): "split" (default; inner loops of
``tasks_per_chunk`` tasks vmapped, queries one task at a time: the fastest on a small CPU), "loop"
(one task at a time: least memory) or "vmap" (whole chunks: a GPU's choice). Every choice gives the
same meta-gradient up to rounding.

A run on the user's own network (``train(model=...)``, or ``linmaml train --model
package.module:Class``) records the class name and parameter-shape fingerprint (``model``,
``model_fingerprint``), and when the command line imported it, where from (``model_import``) and its
keyword arguments (``model_kwargs``), so later commands can rebuild it. Settings of the built-in
ConvNet alone (``layers``, ``hidden``, ``pool``) are recorded as None on such a run.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Mapping

from linmaml import _validate
from linmaml._strategies import RANDOMNESS, STRATEGIES
from linmaml.benchmarks.data import BENCHMARKS, OWN_DATA
from linmaml.benchmarks.data.own import check_name, default_name
from linmaml.errors import ArgumentError, ArgumentTypeError

# --- the choices: one tuple each, checked here and by the code that acts on them -----------------

#: Meta-learning algorithms (:func:`linmaml.benchmarks.learners.build_learner`).
ALGOS = ("maml", "fomaml", "anil", "reptile", "imaml", "truncated", "es", "hfmaml", "protonet", "r2d2")
#: Inner-loop meta-optimizers (:func:`linmaml.benchmarks.learners.make_transform`).
TRANSFORMS = ("none", "kfo", "metasgd", "metacurvature", "rates", "adam")
#: Down-sampling of each ConvNet block (:class:`linmaml.benchmarks.models.ConvNet`).
POOLS = ("max", "stride")
DTYPES = ("float32", "float64")
ON_NONFINITE = ("stop", "skip")
#: The outer learning rate over iterations: fixed, a half cosine from ``outer_lr`` at iteration 1 down
#: to nearly 0 at the last, or linear from ``outer_lr`` down to ``outer_lr/T`` at the last (0 one
#: step after: Nichol et al.'s annealing) (:func:`linmaml.benchmarks.config.outer_lr_at`).
SCHEDULES = ("constant", "cosine", "linear")
#: The outer optimiser: Adam (default) or plain SGD (Reptile's outer step θ ← θ − ε·direction).
OUTER_OPTIMIZERS = ("adam", "sgd")
#: How Reptile's direction θ − φ is scaled: divided by the sum of the inner rates (default) or not.
REPTILE_SCALES = ("rates", "none")
#: iMAML's inner solver: gradient descent on the proximal objective, or (the authors' code) plain
#: gradient steps on the support loss followed by one pull-back step towards θ.
IMAML_SOLVERS = ("proximal", "pullback")
#: Which classes make the splits: the shipped split, or (Omniglot) Lake et al.'s alphabet split.
CLASS_SPLITS = ("standard", "alphabets")

DEFAULT_FILTERS = {"omniglot": 64, "cifar-fs": 32, "mini-imagenet": 32, "arrays": 64, "folder": 64, "synthetic": 32}
#: Omniglot's usual MAML backbone down-samples with stride-2 convolutions (Finn et al. 2017), the
#: others with 2x2 max-pooling; the stride version costs about a quarter of the arithmetic. Your own
#: data (``OWN_DATA``: :mod:`linmaml.benchmarks.data.own`) gets stride-2 convolutions too: they never
#: shrink a side below one pixel, whatever the size, and so does the 12x12 ``synthetic`` set (four 2x2
#: max-pools would leave no pixel of it).
DEFAULT_POOL = {"omniglot": "stride", "cifar-fs": "max", "mini-imagenet": "max", "arrays": "stride",
                "folder": "stride", "synthetic": "stride"}

#: The built-in ConvNet's blocks when not given.
DEFAULT_LAYERS = 4

# Upper bounds of the settings, checked before anything is written. Beyond them a run does not
# train worse but breaks: torch's allocator or Adam's float32 arithmetic fails with messages that
# name no setting, or a pass runs for days. Each is far beyond what the few-shot literature uses.
#: Adam moves every weight by about ``outer_lr`` per step, so beyond a few units a run only
#: diverges (stopped with exit 3); near 3e37 Adam's own step ``lr / (1 - beta1)`` overflows float32.
#: Plain SGD (``--outer-optimizer sgd``, Reptile's meta-step of 1) stays far below this bound.
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

#: ``package.module:Class`` (dotted module path, a colon, a dotted attribute path within it).
_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


@dataclasses.dataclass(frozen=True)
class Setting:
    """What is declared about one setting (a field of :class:`TrainConfig`).

    ``kind``: the value's type (``int``, ``float``, ``str``, ``bool`` or ``dict``: a JSON object);
    ``help``: the command line's help text; ``identity``: it changes the sequence of weights (a
    resumed run must keep it); ``choices``: the allowed values (one shared tuple) or None;
    ``minimum``/``maximum``: the inclusive range of an int (a field's name for a bound that is
    another setting's value); ``sign``: ``"positive"`` or ``"nonnegative"`` for a float, else any
    finite value; ``flag``/``metavar``: the command-line option (``flag`` True: ``--`` and the field's name
    with dashes; a string: that option; None: the field is recorded by the library, not chosen, and
    has no option); ``convnet_only``: applies to the built-in
    ConvNet alone (recorded None on a run on the user's own model); ``note``: why the maximum, said when
    a float exceeds it."""

    kind: type
    help: str
    identity: bool
    choices: tuple | None = None
    minimum: int | str | None = None
    maximum: int | None = None
    sign: str | None = None
    flag: str | bool | None = True
    metavar: str | None = None
    convnet_only: bool = False
    note: str = ""


def setting(default, kind: type, help: str, *, identity: bool, flag: str | None | bool = True, **more):
    """A :class:`TrainConfig` field with its :class:`Setting`. ``flag``: True for the option named after
    the field (``--meta-batch`` for ``meta_batch``), a string for another name, None for none."""
    return dataclasses.field(default=default, metadata={"setting": Setting(kind=kind, help=help, identity=identity,
                                                                             flag=flag, **more)})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Defaults: 5-way 1-shot second-order MAML on Omniglot with
    the 4-block CNN, 1 inner step of 0.4 in training and 3 at test (with a learned transform, the
    training steps: see ``test_steps``), meta-batch 16, Adam 1e-3,
    4,000 iterations (chosen to reach 95% test accuracy on Omniglot within an hour of CPU).
    ``layers=None``, ``hidden=None`` and ``pool=None`` take the built-in ConvNet's usual values (4
    blocks; 64 filters and stride-2 convolutions for Omniglot, 32 filters and max-pooling otherwise);
    on a run on the user's own model they stay None.

    ``query`` is the number of query examples per class in *training* tasks (default 5: the query
    set is most of a task's cost, and on Omniglot 5 per class learns about as well per iteration as
    15 at a third of the time); validation and test tasks use ``test_query`` (15, the usual protocol).

    Each field's :class:`Setting` (module docstring) says the rest: help, choices, range, identity.
    """

    benchmark: str = setting("omniglot", str, "the few-shot benchmark (default omniglot), or your own data given by "
                             "--data: arrays (an .npz of arrays) or folder (an image folder tree), or synthetic: "
                             "a tiny set made in memory (no files; seconds, to try the commands)", identity=True,
                             choices=BENCHMARKS)
    ways: int = setting(5, int, "classes per task (N-way; default 5)", identity=True, minimum=2)
    shots: int = setting(1, int, "support examples per class (K-shot; default 1)", identity=True, minimum=1)
    #: None: ``shots``. Nichol et al.'s Reptile trains 1-shot Omniglot on tasks of 10 per class.
    train_shots: int | None = setting(None, int, "support examples per class in training tasks (default: --shots; "
                                      "validation and test tasks keep --shots)", identity=True, minimum=1)
    query: int = setting(5, int, "query examples per class in training tasks (default 5; validation and test use 15)",
                         identity=True, minimum=1)
    test_query: int = setting(15, int, "query examples per class in validation tasks (default 15)", identity=False,
                              minimum=1)
    algo: str = setting("maml", str, "meta-learning algorithm (default maml: second order); reptile, imaml, truncated, "
                        "es and hfmaml are meta-gradient estimators (linmaml.meta.estimators) set by --truncate, "
                        "--imaml-lambda, --cg-steps, --inner-tolerance, --es-population, --es-sigma, --fd-delta; "
                        "protonet and r2d2 adapt in closed form (ProtoNets, the R2-D2 ridge head) on the ConvNet's "
                        "features", identity=True, choices=ALGOS)
    transform: str = setting("none", str, "meta-optimizer of the inner loop (default none)", identity=True,
                             choices=TRANSFORMS)
    linnet: int = setting(0, int, "append K identity-initialised linear layers after the head (LinNet; default 0: "
                          "none)", identity=True, minimum=0, maximum=DEPTH_MAX, metavar="K")
    linnet_width: int | None = setting(None, int, "width of the LinNet layers (default: the number of ways)",
                                       identity=True, minimum="ways", maximum=WIDTH_MAX)
    layers: int | None = setting(None, int, "conv blocks of the CNN (default 4)", identity=True, minimum=1,
                                 maximum=DEPTH_MAX, metavar="BLOCKS", convnet_only=True)
    hidden: int | None = setting(None, int, "filters per conv block (default 64 for omniglot, 32 otherwise)",
                                 identity=True, minimum=1, maximum=WIDTH_MAX, metavar="H", convnet_only=True)
    pool: str | None = setting(None, str, "down-sampling of each conv block (default: stride for omniglot, max "
                               "otherwise)", identity=True, choices=POOLS, convnet_only=True)
    steps: int = setting(1, int, "inner steps in training (default 1)", identity=True, minimum=1, maximum=STEPS_MAX)
    #: None: 3 for plain MAML/ANIL (transform "none"); with a learned transform, ``steps`` (it is tuned
    #: to the steps it was trained with; more would start with the "beyond training" note).
    test_steps: int | None = setting(None, int, "inner steps at validation/test time (default 3; with a learned "
                                     "--transform, the training --steps, which it is tuned to)", identity=False,
                                     minimum=1, maximum=STEPS_MAX, metavar="T")
    inner_lr: float = setting(0.4, float, "inner learning rate (default 0.4)", identity=True)
    #: None: every support example at every inner step (the full batch).
    inner_batch: int | None = setting(None, int, "training inner steps on minibatches of B support examples: the "
                                      "support set shuffled once per task, step k on the next B of it (wrapping "
                                      "around); default: all of them at every step. Validation and test adapt on the "
                                      "whole support set", identity=True, minimum=1, metavar="B")
    #: The inner Adam transform's settings (``--transform adam``; Nichol et al. use beta1 = 0).
    adam_beta1: float = setting(0.9, float, "--transform adam: beta1 of the inner Adam (default 0.9; Reptile's "
                                "recipe uses 0)", identity=True, sign="nonnegative")
    adam_beta2: float = setting(0.999, float, "--transform adam: beta2 of the inner Adam (default 0.999)",
                                identity=True, sign="nonnegative")
    #: Positive: with 0, a gradient entry that is exactly 0 (an unused parameter, a bias before BatchNorm
    #: to rounding) makes Adam's update 0/0.
    adam_eps: float = setting(1e-8, float, "--transform adam: epsilon of the inner Adam (default 1e-8; positive)",
                              identity=True, sign="positive")
    outer_optimizer: str = setting("adam", str, "the outer optimiser: adam (default) or sgd (plain steps of "
                                   "--outer-lr, no momentum: Reptile's outer update)", identity=True,
                                   choices=OUTER_OPTIMIZERS)
    outer_lr: float = setting(1e-3, float, "learning rate of the outer loop (default 1e-3)", identity=True,
                              sign="positive", maximum=OUTER_LR_MAX,
                              note=" (Adam moves each weight by about this much per step; plain SGD by this "
                                   "times its meta-gradient)")
    outer_eps: float = setting(1e-8, float, "--outer-optimizer adam: Adam's epsilon (default 1e-8, torch's; iMAML's "
                               "code uses 1e-3)", identity=True, sign="positive")
    outer_lr_schedule: str = setting("constant", str, "outer learning rate over the run: constant (default), a half "
                                     "cosine from --outer-lr down to 0 at the last iteration, or linear from --outer-lr "
                                     "to --outer-lr/I at the last of I iterations (Reptile's annealing)", identity=True,
                                     choices=SCHEDULES)
    #: MAML++'s training recipe (module docstring): multi-step loss for the first ``msl_iterations``
    #: iterations, first order for the first ``first_order_iterations`` (0: off).
    msl_iterations: int = setting(0, int, "multi-step loss (MAML++): weigh the query loss after every inner step for "
                                  "the first A iterations, the weights annealed from uniform towards the last step "
                                  "(needs --steps >= 2; default 0: off)", identity=True, minimum=0, metavar="A")
    first_order_iterations: int = setting(0, int, "derivative-order annealing (MAML++): first-order meta-gradients for "
                                          "the first F iterations, second order after (default 0: off)", identity=True,
                                          minimum=0, metavar="F")
    #: MAML++'s per-step BatchNorm weights and biases (BNWB; the built-in ConvNet only).
    bn_per_step: bool = setting(False, bool, "per-step BatchNorm weights and biases (MAML++'s BNWB): one affine set "
                                "per inner step, meta-learned, not adapted (built-in ConvNet, --algo maml or fomaml; "
                                "needs --steps >= 2)", identity=True)
    class_split: str = setting("standard", str, "the classes of the splits: standard (default: the shipped random "
                               "character split) or alphabets (omniglot: Lake et al.'s background alphabets to train "
                               "on, 5 of them held out to validate, the evaluation alphabets to test)", identity=True,
                               choices=CLASS_SPLITS)
    meta_batch: int = setting(16, int, "tasks per outer step (default 16)", identity=True, minimum=1,
                              maximum=META_BATCH_MAX, metavar="M")
    iterations: int = setting(4000, int, "outer steps in all (default 4000); with --resume, the new end",
                              identity=False, minimum=1, metavar="I")
    val_every: int = setting(250, int, "validate every V iterations (default 250)", identity=False, minimum=1,
                             metavar="V")
    val_tasks: int = setting(200, int, "fixed validation tasks (default 200)", identity=False, minimum=2,
                             maximum=EVAL_TASKS_MAX, metavar="TASKS")
    checkpoint_every: int = setting(50, int, "write last.pt every C iterations (default 50)", identity=False,
                                    minimum=1, metavar="C")
    #: Keep the weights of every S-th iteration (and of iteration 0) as ``snapshots/iter-<t>.pt``
    #: (0: none); for analyses over training, such as how representations change (CKA).
    snapshot_every: int = setting(0, int, "also keep the weights of iteration 0 and every S-th iteration in "
                                  "snapshots/ (default 0: none)", identity=False, minimum=0, metavar="S")
    seed: int = setting(0, int, "seed of the initial weights and the training tasks (default 0)", identity=True,
                        minimum=0, maximum=SEED_MAX)
    dtype: str = setting("float32", str, "parameter dtype (default float32)", identity=True, choices=DTYPES)
    on_nonfinite: str = setting("stop", str, "on a non-finite meta-loss or gradient: stop (exit 3) or skip the step "
                                "(default stop)", identity=False, choices=ON_NONFINITE)
    batching: str = setting("split", str, "how a meta-batch is computed: loop, one task at a time (least memory); "
                            "split (default), the inner loops of --tasks-per-chunk tasks vmapped together and their "
                            "queries one at a time (fastest on a CPU); vmap, whole chunks vmapped (try on a GPU). The "
                            "same gradients up to rounding", identity=True,
                            choices=STRATEGIES)
    tasks_per_chunk: int = setting(4, int, "tasks computed together with --batching split or vmap (default 4)",
                                   identity=True, minimum=1, maximum=META_BATCH_MAX)
    compile: bool = setting(False, bool, "run the meta-step through torch.compile (slower on a small CPU; try on a "
                            "GPU)", identity=True)
    #: A run on the user's own model (``train(model=...)``): its class name and
    #: :func:`~linmaml.benchmarks.learners.model_fingerprint` (both None for the built-in ConvNet,
    #: recorded by the library from the model given), where the command line imported it from and
    #: with which keyword arguments, and for ANIL the name of its adapted head submodule (None: the
    #: last module with parameters).
    model: str | None = setting(None, str, "class name of your own model (module.QualifiedName), recorded from the "
                                "model given", identity=True, flag=None)
    model_fingerprint: str | None = setting(None, str, "parameter-shape fingerprint of your own model, recorded from "
                                            "the model given", identity=True, flag=None)
    model_import: str | None = setting(None, str, "train your own network instead of the built-in ConvNet: an "
                                       "nn.Module class mapping images (n, C, H, W) to logits (n, ways), imported as "
                                       "package.module:Class (its folder on PYTHONPATH) and built with "
                                       "--model-kwargs", identity=True, flag="--model", metavar="MODULE:CLASS")
    model_kwargs: dict | None = setting(None, dict, "keyword arguments of the --model class, a JSON object such as "
                                        "'{\"hidden\": 32}' (default: none)", identity=True, metavar="JSON")
    head: str | None = setting(None, str, "--algo anil on your own --model: the submodule it adapts (default: the "
                               "last module with parameters)", identity=True, metavar="NAME")
    #: Your own data (``benchmark`` "arrays" or "folder"; :mod:`linmaml.benchmarks.data.own`): the .npz
    #: file or image folder, its name (default: the file's stem or the folder's name) and a folder of
    #: split files (train.txt, val.txt, test.txt listing classes; None: the data's own split). The
    #: paths may move between a run and its resume; the name may not.
    data: str | None = setting(None, str, "--benchmark arrays or folder: the .npz file (train_x, train_y, val_x, val_y, "
                               "... or x, y and split files) or the image folder (ROOT/<split>/<class>/<images>, or "
                               "ROOT/<class>/<images> with split files)", identity=False, metavar="PATH")
    data_name: str | None = setting(None, str, "the name of your own data, recorded with the run (default: the file's "
                                    "stem or the folder's name)", identity=True, metavar="NAME")
    data_splits: str | None = setting(None, str, "a folder of split files for your own data (train.txt, val.txt, "
                                      "test.txt: one class a line; default: the data's own split)", identity=False,
                                      metavar="DIR")
    #: vmap's randomness for a model with random layers (Dropout) under batching split/vmap.
    randomness: str = setting("different", str, "random layers (Dropout) under --batching split or vmap: different "
                              "draws per task (default), the same within a chunk, or error (refuse them)",
                              identity=True, choices=RANDOMNESS)
    #: Settings of the estimator algorithms (:mod:`linmaml.meta.estimators`; unused by the others):
    #: truncated MAML's window K; iMAML's λ, conjugate-gradient iterations and inner-solver tolerance
    #: (its solver takes at most ``steps`` gradient steps of ``inner_lr``); the population (antithetic
    #: pairs) and σ of evolution strategies; the finite-difference step of Hessian-free MAML.
    truncate: int = setting(1, int, "--algo truncated: backpropagate through the last K inner steps (default 1)",
                            identity=True, minimum=0, maximum=STEPS_MAX)
    imaml_lambda: float = setting(1.0, float, "--algo imaml: proximal regulariser lambda (default 1)", identity=True,
                                  sign="positive")
    cg_steps: int = setting(5, int, "--algo imaml: conjugate-gradient iterations (default 5)", identity=True,
                            minimum=1, maximum=STEPS_MAX)
    inner_tolerance: float = setting(1e-3, float, "--algo imaml: stop the inner solver (at most --steps steps) at "
                                     "this gradient norm (default 1e-3)", identity=True, sign="nonnegative")
    es_population: int = setting(8, int, "--algo es: antithetic pairs per meta-gradient (default 8)", identity=True,
                                 minimum=1, maximum=META_BATCH_MAX)
    es_sigma: float = setting(1e-2, float, "--algo es: Gaussian smoothing scale sigma (default 0.01)", identity=True,
                              sign="positive")
    reptile_scale: str = setting("rates", str, "--algo reptile: divide the direction theta - phi by the sum of the "
                                 "inner rates (rates; default) or not (none: with --outer-optimizer sgd --outer-lr E "
                                 "the step is Nichol et al.'s theta <- theta + E * mean(phi - theta))", identity=True,
                                 choices=REPTILE_SCALES)
    imaml_solver: str = setting("proximal", str, "--algo imaml: inner solver, gradient descent on the proximal "
                                "objective (proximal; default) or --steps plain gradient steps on the support loss "
                                "then one step of --inner-lr on the proximal term alone (pullback: the authors' code)",
                                identity=True, choices=IMAML_SOLVERS)
    cg_damping: float = setting(0.0, float, "--algo imaml: conjugate gradients solve ((1 + D) I + H/(lambda + L)) x = "
                                "g; D (default 0; the authors' Omniglot run: 1)", identity=True, sign="nonnegative")
    cg_lambda_damping: float = setting(0.0, float, "--algo imaml: L of --cg-damping's operator (default 0; the "
                                       "authors' code: 10)", identity=True, sign="nonnegative")
    fd_delta: float = setting(1e-3, float, "--algo hfmaml: finite-difference step of the Hessian-vector products "
                              "(default 0.001; a step across ReLU kinks is wrong)", identity=True, sign="positive")

    def __post_init__(self):
        settings = declared()
        for name, declared_setting in settings.items():  # the choices (pool once its default is known)
            value = getattr(self, name)
            if declared_setting.choices is not None and value is not None and value not in declared_setting.choices:
                raise ArgumentError(name, f"expected one of {', '.join(declared_setting.choices)}, got {value!r}")
        if self.test_steps is None:
            object.__setattr__(self, "test_steps", 3 if self.transform == "none" else self.steps)
        for name in ("model", "model_fingerprint", "head", "model_import"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ArgumentTypeError(name, f"expected a string or None, got {type(getattr(self, name)).__name__}")
        self._check_model_record()
        self._check_own_data()
        for name in ("compile", "bn_per_step"):
            if not isinstance(getattr(self, name), bool):
                raise ArgumentTypeError(name, f"expected True or False, got {getattr(self, name)!r}")
        if isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed > SEED_MAX:
            raise ArgumentError("seed", f"expected an integer below 2**63 (seeds are signed 64-bit), got {self.seed}")
        # ways, shots, query and test_query are also bounded by the data (config.check_splits).
        for name, declared_setting in settings.items():
            value = getattr(self, name)
            if value is None:
                continue
            if declared_setting.kind is int:
                minimum = declared_setting.minimum
                minimum = getattr(self, minimum) if isinstance(minimum, str) else minimum
                _validate.integer(value, name, minimum=minimum, maximum=declared_setting.maximum)
            elif declared_setting.kind is float:
                # The inner rate may be 0 or negative (ablations); the outer one must be a positive step.
                sign = {declared_setting.sign: True} if declared_setting.sign else {}
                value = _validate.finite_number(value, name, **sign)
                if declared_setting.maximum is not None and value > declared_setting.maximum:
                    raise ArgumentError(name, f"expected at most {declared_setting.maximum:g}{declared_setting.note}, "
                                              f"got {value:g}")
                object.__setattr__(self, name, value)
        self._check_recipe()
        self._check_estimator_settings()

    def _check_model_record(self) -> None:
        """The user-model fields go together, and the ConvNet's own settings are left to the ConvNet."""
        if (self.model is None) != (self.model_fingerprint is None):
            raise ArgumentError("model", "the class name and model_fingerprint of a user model go together")
        if self.model_import is not None:
            if not _IMPORT_SPEC.match(self.model_import):
                raise ArgumentError("model_import", f"expected package.module:Class, got {self.model_import!r}")
            if self.model is None:
                raise ArgumentError("model_import", f"records where a run's own model ({self.model_import}) was "
                                                    f"imported from; pass the model itself (train(model=...)) or "
                                                    f"use linmaml train --model")
        if self.model_kwargs is not None:
            if self.model_import is None:
                raise ArgumentError("model_kwargs", "are the keyword arguments of an imported model (model_import)")
            # a copy: the caller's dict changing later does not change the (frozen) config
            object.__setattr__(self, "model_kwargs", dict(check_model_kwargs(self.model_kwargs)))
        if self.head is not None and (self.model is None or self.algo != "anil"):
            raise ArgumentError("head", "names the adapted submodule of your own model with algo 'anil'")
        convnet = {"layers": DEFAULT_LAYERS, "hidden": DEFAULT_FILTERS.get(self.benchmark, 32),
                   "pool": DEFAULT_POOL.get(self.benchmark, "max")}
        for name, default in convnet.items():
            if self.model is None:
                if getattr(self, name) is None:
                    object.__setattr__(self, name, default)
            elif getattr(self, name) is not None:
                # Runs before this rule recorded the ConvNet's defaults on user-model runs: read as None.
                if getattr(self, name) != default:
                    raise ArgumentError(name, f"sets the built-in ConvNet, not your own model ({self.model}); leave it "
                                              f"out")
                object.__setattr__(self, name, None)

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
        if self.data_name is None:
            object.__setattr__(self, "data_name", default_name(self.data, self.benchmark))
        check_name(self.data_name, "data_name")

    def _check_recipe(self) -> None:
        """The training-recipe options (module docstring) and the class split."""
        if self.class_split == "alphabets" and self.benchmark != "omniglot":
            raise ArgumentError("class_split", f"the alphabet split is Omniglot's; {self.benchmark} has only the "
                                               f"standard split")
        if self.msl_iterations and self.algo not in ("maml", "fomaml", "anil"):
            raise ArgumentError("msl_iterations", f"weighs the query loss after each step of the inner loop that the "
                                                  f"meta-gradient differentiates (algo maml, fomaml or anil), not "
                                                  f"{self.algo!r}'s")
        if self.msl_iterations and self.steps < 2:
            raise ArgumentError("msl_iterations", f"the multi-step loss weighs the query loss after each inner step; "
                                                  f"with steps {self.steps} it is the plain loss (use steps >= 2)")
        if self.bn_per_step and self.steps < 2:
            raise ArgumentError("bn_per_step", f"one BatchNorm set per inner step is plain BatchNorm with steps "
                                               f"{self.steps} (use steps >= 2)")
        if self.bn_per_step and (self.algo not in ("maml", "fomaml") or self.linnet or self.model is not None):
            raise ArgumentError("bn_per_step", "is built for the ConvNet with algo maml or fomaml, without LinNet")
        if self.first_order_iterations and self.algo not in ("maml", "anil"):
            raise ArgumentError("first_order_iterations", f"anneals second-order maml or anil from first order; algo "
                                                          f"{self.algo!r} has no second order to anneal to")

    def _check_estimator_settings(self):
        if self.algo in ("imaml", "truncated", "hfmaml") and self.transform != "none":
            raise ArgumentError("transform", f"algo {self.algo!r} runs its own plain gradient-descent inner loop; "
                                             f"use transform 'none' (reptile and es accept every transform)")
        imaml_only = ("imaml_solver", "proximal"), ("cg_damping", 0.0), ("cg_lambda_damping", 0.0)
        for name, default in imaml_only:
            if self.algo != "imaml" and getattr(self, name) != default:
                raise ArgumentError(name, f"is a setting of --algo imaml, not {self.algo!r}")
        if self.algo != "reptile" and self.reptile_scale != "rates":
            raise ArgumentError("reptile_scale", f"is a setting of --algo reptile, not {self.algo!r}")
        if self.transform != "adam" and (self.adam_beta1, self.adam_beta2, self.adam_eps) != (0.9, 0.999, 1e-8):
            name = next(n for n, d in (("adam_beta1", 0.9), ("adam_beta2", 0.999), ("adam_eps", 1e-8))
                        if getattr(self, n) != d)
            raise ArgumentError(name, f"sets the inner Adam (--transform adam), not transform {self.transform!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if getattr(self, name) >= 1:
                raise ArgumentError(name, f"expected a number in [0, 1), got {getattr(self, name):g}")
        if self.outer_optimizer != "adam" and self.outer_eps != 1e-8:
            raise ArgumentError("outer_eps", "is Adam's epsilon; --outer-optimizer sgd has none")
        if self.inner_batch is not None:
            if self.algo in ("imaml", "truncated", "hfmaml") or self.algo in ("protonet", "r2d2"):
                raise ArgumentError("inner_batch", f"algo {self.algo!r} has no inner loop of the learner's to take "
                                                   f"minibatches in (maml, fomaml, anil, reptile and es have)")
            support = self.ways * (self.train_shots if self.train_shots is not None else self.shots)
            if self.inner_batch > support:
                raise ArgumentError("inner_batch", f"expected at most the {support} support examples of a training "
                                                   f"task (ways x train shots), got {self.inner_batch}")
        if self.algo == "imaml" and self.inner_lr <= 0:
            raise ArgumentError("inner_lr", f"iMAML's inner solver descends with it: expected a positive rate, got "
                                            f"{self.inner_lr:g}")

    @classmethod
    def from_dict(cls, values: Mapping) -> "TrainConfig":
        """A config from a dict of fields; unknown keys are an error (``TypeError`` naming them)."""
        fields = set(declared())
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ArgumentTypeError(unknown[0], f"not a training setting (settings: {', '.join(sorted(fields))})")
        return cls(**dict(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def torch_dtype(self):
        """The ``torch.dtype`` of ``dtype``."""
        import torch  # lazy: this module is torch-free (module docstring); whoever asks has torch loaded

        return getattr(torch, self.dtype)


def declared() -> dict[str, Setting]:
    """``{field name: Setting}`` of every :class:`TrainConfig` field, in declaration order."""
    return {field.name: field.metadata["setting"] for field in dataclasses.fields(TrainConfig)}


def flag(name: str) -> str:
    """The command-line option of setting ``name`` (``--meta-batch``; ``--model`` for ``model_import``);
    the library-recorded ``model``/``model_fingerprint`` are spelled ``--model`` too (the option that
    supplies the model)."""
    spelled = declared()[name].flag
    if spelled is None:
        return "--model"
    return "--" + name.replace("_", "-") if spelled is True else spelled


def check_model_kwargs(kwargs) -> dict:
    """``kwargs`` if it is a JSON object of keyword arguments (string keys, JSON values), else
    ``ArgumentTypeError`` naming ``model_kwargs``."""
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) and key.isidentifier() for key in kwargs):
        raise ArgumentTypeError("model_kwargs", f"expected a JSON object of keyword arguments, got {kwargs!r}")
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError):
        raise ArgumentTypeError("model_kwargs", f"expected JSON values (numbers, strings, lists, objects), got "
                                                f"{kwargs!r}") from None
    return kwargs


#: Settings that change the sequence of weights; a resumed run must keep them (``batching``,
#: ``tasks_per_chunk`` and ``compile`` only through floating-point rounding, but a resumed run is
#: bitwise the uninterrupted one). Derived from the fields' ``identity``.
IDENTITY = tuple(name for name, declared_setting in declared().items() if declared_setting.identity)
TrainConfig.IDENTITY = IDENTITY  # the name the code has used for it


def resume_config(saved: Mapping, given: Mapping) -> TrainConfig:
    """The config of a resumed run: the saved one, with the settings that do not change the weights
    (``iterations``, validation, checkpointing, ``on_nonfinite``) overridable. A given identity
    setting that differs from the saved one raises ``ValueError`` naming it."""
    saved = TrainConfig.from_dict(saved)
    given_config = dict(given)
    TrainConfig.from_dict({**saved.to_dict(), **given_config})  # validates the given values
    for name in IDENTITY:
        if name in given_config and given_config[name] is not None and given_config[name] != getattr(saved, name):
            raise ArgumentError(name, f"the run being resumed used {getattr(saved, name)!r}, got {given_config[name]!r}"
                             f" (a resumed run keeps its settings; use a new --out folder to change them)")
    if saved.outer_lr_schedule != "constant" and given_config.get("iterations") not in (None, saved.iterations):
        # The schedule's horizon is the run's length: a longer run would have taken other steps.
        raise ArgumentError("iterations", f"the run being resumed decays its outer learning rate "
                                          f"({saved.outer_lr_schedule}) over {saved.iterations} iterations; got "
                                          f"{given_config['iterations']} (use a new --out folder)")
    overrides = {k: v for k, v in given_config.items() if k not in IDENTITY}
    return TrainConfig.from_dict({**saved.to_dict(), **overrides})
