"""Thin wrapper: the validation-split study of MAML++'s training options lives in :mod:`linmaml.analysis.recipe_options`."""
import sys

from linmaml.analysis.recipe_options import main

if __name__ == "__main__":
    sys.exit(main())
