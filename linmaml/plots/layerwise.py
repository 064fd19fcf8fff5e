"""The table and the figure of ``linmaml analyze`` (:mod:`linmaml.benchmarks.layerwise` measures).

:func:`format_table` writes the result as plain-text tables (per parameter tensor: shape, relative
update, its block's CKA; the ablation's accuracies with 95% CIs; the bottom-layer preconditioner's
spectrum); :func:`draw` draws it as four panels (updates, block CKA, ablation, spectrum) titled in
words (:func:`describe_run`).
"""
from __future__ import annotations

import numpy as np

from linmaml.plots import figure  # by module: tests swap plots.figure.save_figure

__all__ = ["format_table", "describe_run", "draw", "ALGO_WORDS", "TRANSFORM_WORDS"]


def format_table(result: dict) -> str:
    """The analysis as plain-text tables (per layer, ablation, preconditioner spectrum)."""
    def num(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [f"{'parameter':<34} {'shape':<16} {'|dθ|/|θ|':>10} {'CKA(block)':>11}"]
    for row in result["layers"]:
        lines.append(f"{row['name']:<34} {'x'.join(map(str, row['shape'])):<16} "
                     f"{num(row['relative_update'], '.4f'):>10} {num(row['cka'], '.4f'):>11}")
    lines.append("")
    lines.append(f"{'adapted':<34} {'accuracy %':>11} {'ci95':>7}")
    for row in result["ablation"]:
        lines.append(f"{row['label']:<34} {row['accuracy']:>11.2f} {row['ci95']:>7.2f}")
    pre = result.get("preconditioner")
    if pre:
        top = ", ".join(f"{v:.3g}" for v in pre["eigenvalues"][:5])
        plain = ", ".join(f"{v:.3g}" for v in pre["eigenvalues_plain"][:5])
        lines += ["", f"bottom-layer preconditioner on {pre['parameter']} ({pre['tasks']} tasks):",
                  f"  sym(J U J^T) top eigenvalues {top}  condition {num(pre['condition'], '.3g')}",
                  f"  J J^T        top eigenvalues {plain}  condition {num(pre['condition_plain'], '.3g')}"]
        if "kfo_left" in pre:
            lines.append(f"  KFO L^T L eigenvalues {min(pre['kfo_left']):.3g}..{max(pre['kfo_left']):.3g}, "
                         f"R^T R {min(pre['kfo_right']):.3g}..{max(pre['kfo_right']):.3g}")
    return "\n".join(lines)


ALGO_WORDS = {"maml": "second-order MAML (every parameter adapts)", "fomaml": "first-order MAML (every parameter "
              "adapts)", "anil": "ANIL (only the head adapts)"}
TRANSFORM_WORDS = {"none": "plain gradient inner step", "kfo": "KFO inner step (LᵀL)G(RᵀR)",
                   "metasgd": "Meta-SGD inner step", "metacurvature": "Meta-Curvature inner step",
                   "rates": "learned per-step inner rates"}


def describe_run(result: dict) -> str:
    """The figure's title in words (not the settings' keys): algorithm, inner step, network, tasks, steps."""
    s, steps = result.get("settings", {}), result["steps"]
    algo, transform = s.get("algo", ""), s.get("transform", "")
    words = [ALGO_WORDS.get(algo, algo), TRANSFORM_WORDS.get(transform, transform)]
    if s.get("linnet"):
        words.append(f"{s['linnet']} LinNet layers")
    return (", ".join(w for w in words if w) + f"; {s.get('layers', '?')} conv blocks × {s.get('hidden', '?')} filters; "
            f"{result['tasks']} test tasks, {steps} inner step{'' if steps == 1 else 's'}")


def draw(result: dict, path) -> None:
    """The analysis as a PNG: relative updates, block CKA, ablation with CIs, preconditioner spectrum."""
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 5.2), gridspec_kw={"width_ratios": [1.6, 1, 1.2, 1]})

    def tick_labels(ax, labels, rotation, fontsize):
        # rotated labels anchored at their right end, so each ends under its own bar
        ax.set_xticks(range(len(labels)), labels, rotation=rotation, fontsize=fontsize, ha="right",
                      rotation_mode="anchor")

    layers = result["layers"]
    ax = axes[0]
    values = [r["relative_update"] or 0.0 for r in layers]
    ax.bar(range(len(layers)), values, color=["C0" if r["adapted"] else "0.7" for r in layers])
    tick_labels(ax, [r["name"] for r in layers], 60, 6)
    ax.set_yscale("symlog", linthresh=1e-4)
    top = max(values, default=1.0)
    ax.set_ylim(0, 4 * max(top, 1e-4))  # room above the tallest bar (the head's, 2.7 in the README's run)
    for i, value in enumerate(values):
        if value == top and value > 0:
            ax.annotate(f"{value:.2g}", (i, value), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel(r"$\|\Delta\theta\| / \|\theta\|$ (mean over tasks)")
    ax.set_title("inner-loop update per tensor (0: does not move; grey: not adapted)", fontsize=9)
    ax = axes[1]
    blocks = result["blocks"]
    ax.bar(range(len(blocks)), [b["cka"] or 0.0 for b in blocks], color="C2")
    tick_labels(ax, [b["name"] for b in blocks], 30, 7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear CKA, query features before vs after")
    ax.set_title("feature reuse (1) vs rapid learning (<1)", fontsize=10)
    ax = axes[2]
    rows = result["ablation"]
    ax.bar(range(len(rows)), [r["accuracy"] for r in rows], yerr=[r["ci95"] for r in rows], capsize=3, color="C1")
    tick_labels(ax, [r["label"] for r in rows], 30, 7)
    low = min(r["accuracy"] - r["ci95"] for r in rows)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_ylabel("query accuracy % (95% CI)")
    ax.set_title("accuracy when only these parameters adapt", fontsize=10)
    ax = axes[3]
    pre = result.get("preconditioner")
    if pre:
        ax.semilogy(np.maximum(pre["eigenvalues"], 1e-12), "o-", ms=3, label=r"sym($J U J^T$)")
        ax.semilogy(np.maximum(pre["eigenvalues_plain"], 1e-12), "s--", ms=3, label=r"$J J^T$")
        ax.legend(fontsize=7)
        ax.set_xlabel("index")
        ax.set_title(f"bottom-layer preconditioner: {pre['parameter']}", fontsize=8)
    else:
        ax.axis("off")
    fig.suptitle(describe_run(result), fontsize=11)
    fig.tight_layout()
    figure.save_figure(fig, path)
