"""The paper's figures and the analyses behind them, as importable modules of the installed package.

``linmaml reproduce`` runs every figure module here (``fig_*.py``: a ``NAME`` and a
``run(out_dir, quick)``); :mod:`~linmaml.analysis.layers` and :mod:`~linmaml.analysis.depth_width`
draw figures from trained Omniglot runs, :mod:`~linmaml.analysis.omniglot_maml` records published
numbers. The performance harness of ``linmaml bench`` lives in :mod:`linmaml.bench`. The source
tree's ``analysis/`` folder holds scripts that are not part of the wheel (see its README). The
library's core (closed forms, ``meta``, simulator, benchmarks) never imports this package.
"""
