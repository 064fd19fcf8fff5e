"""Thin wrapper: the sweep lives in :mod:`linmaml.analysis.depth_width` (so an installed wheel runs it too)."""
import sys

from linmaml.analysis.depth_width import main

if __name__ == "__main__":
    sys.exit(main())
