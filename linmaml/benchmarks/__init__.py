"""Few-shot benchmarks: data, episodes, backbones, training (:mod:`linmaml.benchmarks.train`),
evaluation and checkpoints.

``load_learner`` (:mod:`linmaml.benchmarks.loading`) is importable from here; it is loaded on first
use, so importing a submodule does not pull in torch's training stack.
"""
__all__ = ["load_learner"]


def __getattr__(name):
    if name == "load_learner":
        from linmaml.benchmarks.loading import load_learner

        return load_learner
    raise AttributeError(f"module 'linmaml.benchmarks' has no attribute {name!r}")
