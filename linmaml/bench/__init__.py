"""``linmaml bench``: the performance harness, named by its command (apart from the figures in
:mod:`linmaml.analysis` and from the Omniglot benchmarks in :mod:`linmaml.benchmarks`).

:mod:`~linmaml.bench.harness` runs the cases and writes ``bench.json`` (``python -m linmaml.bench``
is its script form); :mod:`~linmaml.bench.sizes` holds the sizes, cases and targets,
:mod:`~linmaml.bench.timing` the interleaved timings and memory probes, and one module per family of
cases: :mod:`~linmaml.bench.case_closedform` (surface, deep_linear), :mod:`~linmaml.bench.case_sinusoid`,
:mod:`~linmaml.bench.case_meta` (maml, kfo, anil), :mod:`~linmaml.bench.case_allocator`.
:mod:`~linmaml.bench.gpu_check` is the prepared check for a machine with a GPU, which reuses the
meta cases; :mod:`~linmaml.bench.data_cache` times a cold against a warm load of the real Omniglot
through the cache of preprocessed data. The speed ratios quoted in help texts and comments elsewhere
are measured here.
"""
