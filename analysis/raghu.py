"""Thin wrapper: the logic lives in :mod:`linmaml.analysis.raghu` (so an installed wheel runs it too)."""
from linmaml.analysis.raghu import main

if __name__ == "__main__":
    main()
