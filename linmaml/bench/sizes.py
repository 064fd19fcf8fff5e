"""Sizes, cases and targets of the benchmark (:mod:`linmaml.bench.harness`), full and quick."""
from __future__ import annotations

NAME = "bench"
CASES = ("surface", "deep_linear", "sinusoid", "maml", "kfo", "anil", "allocator", "transforms")
META_CASES = {"maml": dict(algo="maml", transform="none"), "kfo": dict(algo="maml", transform="kfo"),
              "anil": dict(algo="anil", transform="none")}

FULL = {
    "reps": 5,
    # The reference is timed on the whole grid where that takes under a second (1 and 3 steps); at 5
    # steps (~8 s for the grid) on a subsample, scaled per point — which credits the subsample's
    # fixed overhead to the reference, so that ratio leans slightly in the closed form's favour.
    "surface": dict(grid=400, range=2.0, steps=[1, 3, 5], lr=0.1, mean=1.0, std=0.5, x_var=1.0,
                    reference_points={1: 160000, 3: 160000, 5: 400}),
    "deep_linear": dict(d_in=100, width=100, depth=4, d_out=1, steps=5, tasks=100, n_support=20, n_query=20,
                        lr=0.01, task_std=0.1, noise_std=0.1),
    "meta": dict(image=28, ways=5, shots=1, query=15, meta_batch=32, steps=1, inner_lr=0.4, layers=4, hidden=64,
                 agreement_tasks=4, compiled=True, compiled_check_layers=1, batched_cases=["maml"], memory=True),
    # Finn et al.'s sinusoid set-up; each call takes milliseconds, so many interleaved rounds.
    "sinusoid": dict(tasks=25, n_support=10, n_query=10, hidden=40, lr=0.01, reps=31),
    # the maml case in fresh processes per allocator policy (bench_allocator): rounds × 2 processes
    "allocator": dict(rounds=4, reps=3),
    # linmaml train's step with each learned transform beside plain MAML's, at the sizes of
    # configs/omniglot-5w1s.json (bench_transforms); more rounds than the other cases: the ratios
    # are a few tens of per cent, and the load of a shared machine drifts.
    "transforms": dict(image=28, ways=5, shots=1, query=5, meta_batch=16, steps=1, inner_lr=0.4, layers=4,
                       hidden=64, pool="stride", transforms=["kfo", "metacurvature", "metasgd", "rates"],
                       perturb=0.1, reps=15, agreement_tasks=2),
}
QUICK = {
    "reps": 5,
    "surface": dict(grid=40, range=2.0, steps=[1, 3, 5], lr=0.1, mean=1.0, std=0.5, x_var=1.0,
                    reference_points={1: 200, 3: 100, 5: 30}),
    "deep_linear": dict(d_in=10, width=10, depth=4, d_out=1, steps=5, tasks=10, n_support=5, n_query=5,
                        lr=0.01, task_std=0.3, noise_std=0.1),
    "meta": dict(image=8, ways=3, shots=1, query=2, meta_batch=4, steps=1, inner_lr=0.4, layers=2, hidden=4,
                 agreement_tasks=2, compiled=False, compiled_check_layers=1, batched_cases=["maml", "kfo", "anil"],
                 memory=False),
    "sinusoid": dict(tasks=4, n_support=5, n_query=5, hidden=8, lr=0.01, reps=3),
    "allocator": dict(rounds=1, reps=1),
    "transforms": dict(image=8, ways=3, shots=1, query=2, meta_batch=4, steps=1, inner_lr=0.4, layers=2,
                       hidden=4, pool="stride", transforms=["kfo", "metacurvature", "metasgd", "rates"],
                       perturb=0.1, reps=3, agreement_tasks=2),
}
TARGETS = {"surface_ratio": 100.0, "surface_seconds_5_steps": 0.2, "meta_ratio": 1.5,
           "deep_linear_agreement": 1e-10, "meta_agreement_float64": 1e-10,
           # the per-task loop against its learn2learn-style reference: at least as fast, 1.5× the goal
           "sinusoid_ratio": 1.0, "sinusoid_goal": 1.5}
