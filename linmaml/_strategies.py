"""The engine's strategies for computing a meta-batch (:mod:`linmaml.meta.engine` explains each).

Declared here, in the torch-free foundation, because the run settings
(:mod:`linmaml.benchmarks.settings`) offer them as the ``batching`` choices and the command line
builds its options from those settings without importing torch (importing torch costs seconds on
every ``linmaml`` command). :mod:`linmaml.meta.engine` exports the same tuple as ``STRATEGIES``.
"""
from __future__ import annotations

#: ``loop`` (one task at a time), ``split`` (inner loops vmapped in chunks, queries one at a time),
#: ``vmap`` (whole chunks vmapped).
STRATEGIES = ("loop", "split", "vmap")
