"""The engine's strategies for computing a meta-batch (:mod:`linmaml.meta.engine` explains each), and
vmap's randomness choices for models that draw random numbers.

Declared here, in the torch-free foundation, because the run settings
(:mod:`linmaml.benchmarks.settings`) offer them as the ``batching`` choices and the command line
builds its options from those settings without importing torch (importing torch costs seconds on
every ``linmaml`` command). :mod:`linmaml.meta.engine` exports the same tuple as ``STRATEGIES``.
"""
from __future__ import annotations

#: ``loop`` (one task at a time), ``split`` (inner loops vmapped in chunks, queries one at a time),
#: ``vmap`` (whole chunks vmapped).
STRATEGIES = ("loop", "split", "vmap")

#: ``torch.func.vmap``'s randomness for a model that draws random numbers (Dropout) under the vmapped
#: strategies: "different" (independent per task, as the loop), "same" (shared within a chunk) or
#: "error" (refuse such a model). The engine's default is "error"; a training run's is "different".
RANDOMNESS = ("different", "same", "error")
