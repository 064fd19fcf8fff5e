"""The paper's figures and the performance harness, as importable modules of the installed package.

``linmaml reproduce`` runs every figure module here (``fig_*.py``: a ``NAME`` and a
``run(out_dir, quick)``); ``linmaml bench`` runs the benchmark harness. The scripts in the source
tree's ``analysis/`` folder are thin wrappers around these modules, so a wheel installed anywhere
runs the same code. The library's core (closed forms, ``meta``, simulator, benchmarks) never
imports this package.
"""
