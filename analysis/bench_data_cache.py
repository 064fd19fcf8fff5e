"""Thin wrapper: the measurement lives in :mod:`linmaml.analysis.bench_data_cache` (cold vs warm load of
the real Omniglot through the cache of preprocessed data).

    python analysis/bench_data_cache.py [--data-root DIR] [--repeats R] [--out FILE]
"""
import sys

from linmaml.analysis.bench_data_cache import main

if __name__ == "__main__":
    sys.exit(main())
