"""Thin wrapper: the multi-seed depth × width comparisons live in :mod:`linmaml.analysis.depth_width_seeds`."""
import sys

from linmaml.analysis.depth_width_seeds import main

if __name__ == "__main__":
    sys.exit(main())
