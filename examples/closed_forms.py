"""The closed forms in ten lines: MAML on a deep linear network, exactly, in numpy.

For a depth-2 linear model f(x) = W2·W1·x on linear regression tasks y = W_τ x + ε
(:class:`linmaml.tasks.RegressionFamily`), the script computes

* the exact MAML objective (one inner step of size α on every layer, averaged over sampled tasks)
  and its exact meta-gradient, one array per layer (``closedform.maml_loss``, ``maml_grad``);
* the implicit preconditioner P of the inner step: vec ΔW_e = −α P vec G + O(α²), where G is the
  task loss's gradient with respect to the end-to-end map W_e = W2·W1 (``closedform.preconditioner``);
* the expected query loss after one inner step, exact over the whole task family (population
  gradient in the inner step; ``closedform.expected_post_adaptation_loss``);
* the inner learning rate that a *shallow* model at the same end-to-end map W_e should use, and its
  expected loss after one step with n support points (``closedform.optimal_inner_lr``).

Everything is float64 numpy, no autograd; tests/test_examples.py checks the printed numbers against
a direct loop, finite differences and Monte Carlo. ``--json`` prints them as one object; ``--quick``
is accepted for uniformity with the other examples (this one takes well under a second either way).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from linmaml import closedform as cf
from linmaml.tasks import RegressionFamily

LR = 0.05


def problem(tasks: int = 100):
    """(family, tasks, weights): the task family, ``tasks`` sampled tasks (seed 0) and a depth-2 net
    [W1 (8, 4), W2 (1, 8)] (seed 0)."""
    family = RegressionFamily(d_in=4, d_out=1, task_mean=1.0, task_cov=1.0, noise_std=0.1, n_support=10, n_query=10)
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(8, 4)) / 2, rng.normal(size=(1, 8)) / 2]
    return family, family.sample(tasks, seed=0), weights


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for uniformity (always quick)")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    args = parser.parse_args(argv)

    family, tasks, weights = problem()
    loss = cf.maml_loss(weights, tasks, lr=LR, steps=1)                    # exact MAML objective
    grads = cf.maml_grad(weights, tasks, lr=LR, steps=1)                   # exact, one array per layer
    P = cf.preconditioner(weights)                                         # (4, 4): d_out·d_in squared
    expected = cf.expected_post_adaptation_loss(weights, family, lr=LR)    # over the whole task family
    W_e = weights[1] @ weights[0]                                          # the end-to-end map (1, 4)
    best_lr = cf.optimal_inner_lr(W_e, family)                             # best α for a shallow model at W_e
    shallow = cf.expected_post_adaptation_loss(W_e, family, lr=best_lr)    # ... and its loss after 1 step
    before = cf.expected_post_adaptation_loss(weights, family, lr=LR, steps=0)

    if args.json:
        print(json.dumps({"lr": LR, "maml_loss": loss, "maml_grad": [g.tolist() for g in grads],
                          "preconditioner": P.tolist(), "expected_loss_before": before,
                          "expected_loss_after_one_step": expected, "optimal_inner_lr_shallow": best_lr,
                          "shallow_expected_loss_at_optimal_lr": shallow}))
        return
    eigenvalues = np.linalg.eigvalsh(P)
    print(f"MAML objective (100 tasks, one step of {LR}): {loss:.6f}; meta-gradient norms per layer: "
          + ", ".join(f"{np.linalg.norm(g):.4f}" for g in grads))
    print(f"implicit preconditioner P (4x4): eigenvalues {np.array2string(eigenvalues, precision=4)}")
    print(f"expected query loss over the family: {before:.4f} before adaptation, {expected:.4f} after one step")
    print(f"shallow model at W_e: optimal inner lr {best_lr:.4f}, expected loss after one step {shallow:.4f}")


if __name__ == "__main__":
    main()
