"""Thin wrapper: the logic lives in :mod:`linmaml.analysis.time_to_accuracy` (so an installed wheel runs it too)."""
from linmaml.analysis.time_to_accuracy import main

if __name__ == "__main__":
    main()
