"""The verification table, one module per part of the toolkit.

Each module here registers rows with :func:`linmaml.verification.identity`; ``linmaml verify`` and
``tests/test_verification.py`` run them all. Modules about the closed forms import numpy/sympy only.
"""
