"""``python -m linmaml.bench``: the harness's script form (:func:`linmaml.bench.harness.main`)."""
import sys

from linmaml.bench.harness import main

if __name__ == "__main__":
    sys.exit(main())
