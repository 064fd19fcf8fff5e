"""Thin wrapper: the figure lives in :mod:`linmaml.analysis.fig_lr_sweep` (so an installed wheel runs it too)."""
from linmaml.analysis.fig_lr_sweep import main

if __name__ == "__main__":
    main()
