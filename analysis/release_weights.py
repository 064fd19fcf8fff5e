"""Thin wrapper: the logic lives in :mod:`linmaml.analysis.release_weights` (so an installed wheel runs it too)."""
import sys

from linmaml.analysis.release_weights import main

if __name__ == "__main__":
    sys.exit(main())
