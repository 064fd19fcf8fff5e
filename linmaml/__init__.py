"""linmaml: when MAML can adapt fast, and how to assist when it cannot.

Subpackages: ``closedform`` (numpy/sympy, exact MAML on deep linear networks), ``tasks`` (task
families shared by every part), ``meta`` (model-agnostic MAML/ANIL and meta-optimizers in torch),
``simulator`` (deep linear models in torch, cross-checked against the closed forms),
``benchmarks`` (few-shot data, CNNs, training), ``plots``.
"""
__version__ = "0.1.0"
