"""Thin wrapper: the figure lives in :mod:`linmaml.analysis.layers` (so an installed wheel runs it too)."""
import sys

from linmaml.analysis.layers import main

if __name__ == "__main__":
    sys.exit(main())
