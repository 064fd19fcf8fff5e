"""Thin wrapper: the figure lives in :mod:`linmaml.analysis.fig_direction` (so an installed wheel runs it too)."""
from linmaml.analysis.fig_direction import main

if __name__ == "__main__":
    main()
