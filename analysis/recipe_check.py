"""Thin wrapper: the logic lives in :mod:`linmaml.analysis.recipe_check` (so an installed wheel runs it too)."""
import sys

from linmaml.analysis.recipe_check import main

if __name__ == "__main__":
    sys.exit(main())
