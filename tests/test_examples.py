"""Every script in examples/ runs with --quick (in a subprocess, one thread) and prints a sensible
result; the closed-forms example's numbers are checked against independent computations (a direct
numpy loop, finite differences, Monte Carlo with its standard error)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TESTED = {"sinusoid_maml.py", "sinusoid_kfo.py", "omniglot_anil_custom_cnn.py", "closed_forms.py"}
NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf)"


def launch(name: str, *args: str, cwd: Path, timeout: float = 600,
           data_root: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if data_root is not None:
        env["LINMAML_DATA"] = str(data_root)
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_example(name: str, *args: str, cwd: Path, timeout: float = 600, data_root: Path | None = None) -> str:
    done = launch(name, *args, cwd=cwd, timeout=timeout, data_root=data_root)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


def numbers(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return [float(v) for v in match.groups()]


def test_every_example_is_run_here():
    assert {p.name for p in EXAMPLES.glob("*.py")} == TESTED


@pytest.mark.parametrize("name, args, flag", [
    ("sinusoid_maml.py", ["--iterations", "0"], "--iterations"),
    ("sinusoid_kfo.py", ["--tasks", "-1"], "--tasks"),
    ("omniglot_anil_custom_cnn.py", ["--meta-batch", "0"], "--meta-batch"),
    ("closed_forms.py", ["--no-such-flag"], "--no-such-flag"),
])
def test_bad_arguments_exit_2_naming_the_flag(tmp_path, name, args, flag):
    done = launch(name, *args, cwd=tmp_path)
    assert done.returncode == 2 and flag in done.stderr.splitlines()[-1] and not done.stdout


def test_omniglot_example_without_data_exits_2_in_one_line(tmp_path):
    done = launch("omniglot_anil_custom_cnn.py", "--quick", "--data-root", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "omniglot" in done.stderr


def test_sinusoid_maml_quick(tmp_path):
    out = run_example("sinusoid_maml.py", "--quick", cwd=tmp_path)
    t_vmap, t_loop, gap = numbers(rf"Engine\(vmap\) {NUMBER} ms/iteration, per-task learner\.adapt loop {NUMBER} "
                                  rf"ms/iteration .*weights agree to {NUMBER}", out)
    assert t_vmap > 0 and t_loop > 0
    assert gap < 1e-5  # the batched and the per-task meta-gradients are the same (float32 rounding)
    mse = numbers(rf"MSE before adaptation {NUMBER} \| after 1 step {NUMBER} \| after 10 steps {NUMBER}", out)
    assert all(math.isfinite(v) and v > 0 for v in mse)


def test_sinusoid_kfo_quick(tmp_path):
    out = run_example("sinusoid_kfo.py", "--quick", cwd=tmp_path)
    (gap,) = numbers(rf"learner\.adapt: adapted weights agree to {NUMBER}", out)
    assert gap < 1e-5  # the paper's hand-written inner loop is what learner.adapt computes
    maml, kfo, before = numbers(rf"MAML {NUMBER} \| MAML\+KFO {NUMBER} \(before adaptation, MAML {NUMBER}\)", out)
    assert all(math.isfinite(v) and v > 0 for v in (maml, kfo, before))
    # KFO keeps L (rows²) and R (cols²) per parameter: a weight (out, in) and its bias (out, 1).
    layers = [(40, 1), (40, 40), (1, 40)]
    expected = sum(out_ * out_ + in_ * in_ + out_ * out_ + 1 for out_, in_ in layers)
    assert numbers(rf"KFO adds {NUMBER} meta-parameters", out) == [expected]


def test_omniglot_anil_custom_cnn_quick(tmp_path, data_root):
    out = run_example("omniglot_anil_custom_cnn.py", "--quick", "--out", str(tmp_path / "run"), cwd=tmp_path,
                      data_root=data_root)
    assert "4 iterations" in out and "(done)" in out
    before, after = numbers(rf"accuracy {NUMBER} % before adaptation, {NUMBER} % after 3 inner steps", out)
    assert 0 <= before <= 100 and 0 <= after <= 100
    # the run folder was written where asked, with checkpoints a plain torch.load reads
    import torch

    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert "classifier.weight" in "".join(state["learner"])


# --------------------------------------------------------------------------------------------------
# closed_forms.py: its printed numbers against independent computations


def closed_forms_problem():
    spec = importlib.util.spec_from_file_location("closed_forms_example", EXAMPLES / "closed_forms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.problem()


def direct_maml_loss(W1, W2, tasks, lr):
    """One inner step of gradient descent on both layers of x ↦ W2 W1 x, task by task, written out."""
    total = 0.0
    for Xs, Ys, Xq, Yq in tasks:
        R = Xs @ W1.T @ W2.T - Ys                      # residuals (n, 1) of the loss 1/(2n)‖X Wᵀ − Y‖²
        G = R.T @ Xs / len(Xs)                         # ∂L/∂W_e, (1, 4)
        W1a, W2a = W1 - lr * W2.T @ G, W2 - lr * G @ W1.T
        total += 0.5 * np.mean(np.sum((Xq @ W1a.T @ W2a.T - Yq) ** 2, axis=1))
    return total / len(tasks)


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    return json.loads(run_example("closed_forms.py", "--quick", "--json", cwd=tmp_path_factory.mktemp("cf")))


def test_closed_forms_loss_and_meta_gradient(printed):
    family, tasks, (W1, W2) = closed_forms_problem()
    lr = printed["lr"]
    assert printed["maml_loss"] == pytest.approx(direct_maml_loss(W1, W2, tasks, lr), rel=1e-12)
    h = 1e-6
    for layer, W in enumerate((W1, W2)):
        numeric = np.zeros_like(W)
        for index in np.ndindex(W.shape):
            plus, minus = [W1.copy(), W2.copy()], [W1.copy(), W2.copy()]
            plus[layer][index] += h
            minus[layer][index] -= h
            numeric[index] = (direct_maml_loss(*plus, tasks, lr) - direct_maml_loss(*minus, tasks, lr)) / (2 * h)
        np.testing.assert_allclose(printed["maml_grad"][layer], numeric, rtol=1e-6, atol=1e-8)


def test_closed_forms_preconditioner(printed):
    """−P vec G is the derivative in α of the end-to-end map after one step of size α (column-major vec);
    the step is exactly quadratic in α at depth 2, so the central difference is exact up to rounding."""
    _, tasks, (W1, W2) = closed_forms_problem()
    P = np.array(printed["preconditioner"])
    Xs, Ys, _, _ = tasks[0]
    G = (Xs @ W1.T @ W2.T - Ys).T @ Xs / len(Xs)

    def end_to_end(alpha):
        return (W2 - alpha * G @ W1.T) @ (W1 - alpha * W2.T @ G)

    a = 1e-3
    derivative = (end_to_end(a) - end_to_end(-a)) / (2 * a)
    np.testing.assert_allclose(-P @ G.reshape(-1, order="F"), derivative.reshape(-1, order="F"), rtol=1e-9, atol=1e-12)


def test_closed_forms_expected_losses_by_monte_carlo(printed):
    """The deep model's expected loss after one population-gradient step, and the shallow model's after
    one step on n noisy support points at the printed optimal rate, by Monte Carlo (within 4 standard
    errors); and the Monte Carlo derivative in α of the shallow loss vanishes at that rate."""
    family, _, (W1, W2) = closed_forms_problem()
    lr, sigma, n = printed["lr"], family.noise_std, family.n_support
    rng = np.random.default_rng(12345)
    T = 200_000
    W_tau = 1.0 + rng.standard_normal((T, 1, 4))                # task_mean 1, task_cov I
    W_e = W2 @ W1

    def within(samples, value, label):
        mean, se = samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))
        assert abs(mean - value) < 4 * se, f"{label}: Monte Carlo {mean} ± {se}, printed {value}"

    # Before adaptation: ½‖W_e − W_τ‖² + ½σ² (x ~ N(0, I)), exact per task.
    within(0.5 * np.sum((W_e - W_tau) ** 2, axis=(1, 2)) + 0.5 * sigma ** 2, printed["expected_loss_before"], "before")
    # Deep, one step with the population gradient (W_e − W_τ) on both layers.
    D = W_e - W_tau
    W1a = W1 - lr * np.swapaxes(W2, -1, -2) @ D                 # (T, 8, 4)
    W2a = W2 - lr * D @ W1.T                                    # (T, 1, 8)
    deep = 0.5 * np.sum((W2a @ W1a - W_tau) ** 2, axis=(1, 2)) + 0.5 * sigma ** 2
    within(deep, printed["expected_loss_after_one_step"], "deep after one step")
    # Shallow model at W_e, one step of the printed rate on n noisy support points.
    alpha = printed["optimal_inner_lr_shallow"]
    X = rng.standard_normal((T, n, 4))
    Y = X @ np.swapaxes(W_tau, -1, -2) + sigma * rng.standard_normal((T, n, 1))
    U = np.swapaxes(X @ W_e.T - Y, -1, -2) @ X / n              # support gradient (T, 1, 4)
    shallow = 0.5 * np.sum((W_e - alpha * U - W_tau) ** 2, axis=(1, 2)) + 0.5 * sigma ** 2
    within(shallow, printed["shallow_expected_loss_at_optimal_lr"], "shallow at the optimal rate")
    slope = -np.sum((W_e - alpha * U - W_tau) * U, axis=(1, 2))  # d/dα of the per-task loss
    within(slope, 0.0, "slope at the optimal rate")
