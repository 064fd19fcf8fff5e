"""Thin wrapper: the figure lives in :mod:`linmaml.analysis.fig_estimators` (so an installed wheel runs it too)."""
from linmaml.analysis.fig_estimators import main

if __name__ == "__main__":
    main()
