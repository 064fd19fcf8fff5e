"""Few-shot benchmarks: data, episodes, backbones, training (:mod:`linmaml.benchmarks.train`),
evaluation and checkpoints.

``load_learner`` (:mod:`linmaml.benchmarks.loading`) and ``Run`` (:mod:`linmaml.benchmarks.run`, the
one way to open a trained run) are importable from here; they are loaded on first use, so importing a
submodule does not pull in torch's training stack.
"""
__all__ = ["load_learner", "Run"]


def __getattr__(name):
    if name == "load_learner":
        from linmaml.benchmarks.loading import load_learner  # lazy: keeps `linmaml --help` torch-free

        return load_learner
    if name == "Run":
        from linmaml.benchmarks.run import Run  # lazy: as load_learner, torch only on first use

        return Run
    raise AttributeError(f"module 'linmaml.benchmarks' has no attribute {name!r}")
