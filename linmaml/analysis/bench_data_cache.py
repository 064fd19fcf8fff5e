"""Cold versus warm load of the real Omniglot through the cache of preprocessed data
(:mod:`linmaml.benchmarks.data.cache`), measured in one process:

    python analysis/bench_data_cache.py [--data-root DIR] [--repeats R] [--out FILE]

Each repeat points ``$LINMAML_CACHE`` at a fresh empty folder and times
:meth:`linmaml.benchmarks.data.omniglot.Omniglot.load` twice: the first call (cold: read the files,
verify them, decode, resize to 28x28, hash the sources and write the entry) and the second (warm:
hash the sources, read the entry, check its digest). It checks that both give the same arrays and
prints (and with ``--out`` writes) the median seconds of each and their ratio as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def measure(data_root=None, repeats: int = 3) -> dict:
    """``{"cold_s": [...], "warm_s": [...], "cold_median_s", "warm_median_s", "ratio", ...}``."""
    import numpy as np

    from linmaml.benchmarks.data.cache import ENV_VAR
    from linmaml.benchmarks.data.omniglot import Omniglot

    cold, warm = [], []
    saved = os.environ.get(ENV_VAR)
    try:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(prefix="linmaml-cache-bench-") as folder:
                os.environ[ENV_VAR] = folder
                start = time.perf_counter()
                first = Omniglot.load(data_root)
                cold.append(time.perf_counter() - start)
                start = time.perf_counter()
                second = Omniglot.load(data_root)
                warm.append(time.perf_counter() - start)
                if first.cached or not second.cached:
                    raise RuntimeError("expected a miss, then a hit")
                if not (np.array_equal(first.pixels, second.pixels) and np.array_equal(first.char_id, second.char_id)):
                    raise RuntimeError("the cached arrays differ from the fresh preprocessing")
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved
    formats = sorted({s.format for s in first.sets.values()})
    return {"what": "Omniglot.load: cold (read, verify, decode, resize, write the cache) vs warm (cache hit)",
            "formats": formats, "size": first.size, "repeats": repeats,
            "cold_s": [round(v, 4) for v in cold], "warm_s": [round(v, 4) for v in warm],
            "cold_median_s": round(statistics.median(cold), 4), "warm_median_s": round(statistics.median(warm), 4),
            "ratio": round(statistics.median(cold) / statistics.median(warm), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="data root holding omniglot/ (default: $LINMAML_DATA)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = measure(args.data_root, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from linmaml import _io

        _io.atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
