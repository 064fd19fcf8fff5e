"""Thin wrapper: the logic lives in :mod:`linmaml.analysis.omniglot_maml` (so an installed wheel runs it too)."""
from linmaml.analysis.omniglot_maml import main

if __name__ == "__main__":
    main()
