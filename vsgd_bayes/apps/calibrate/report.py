"""Aggregate calibration runs over seeds; Markdown tables and PNG figures.

Every scalar of a checkpoint (e.g. the median over coordinates of log10(r/s^2)) is first
computed per seed; the tables give the mean over seeds and the figures its min-max band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vsgd_bayes.apps.calibrate.metrics import NOMINAL_LEVELS

__all__ = ["SCALARS", "scalar", "aggregate", "format_table", "plot_reliability", "plot_metrics"]

#: name -> path into one checkpoint record (missing: the metric does not apply).
SCALARS: dict[str, tuple[str, ...]] = {
    "noise_log10_median": ("metrics", "noise", "log10_ratio", "median"),
    "noise_log10_q25": ("metrics", "noise", "log10_ratio", "q25"),
    "noise_log10_q75": ("metrics", "noise", "log10_ratio", "q75"),
    "drift_log10_median": ("drift", "log10_ratio", "median"),
    "drift_log10_q25": ("drift", "log10_ratio", "q25"),
    "drift_log10_q75": ("drift", "log10_ratio", "q75"),
    **{
        f"coverage_{level:g}": ("metrics", "z_predictive", "coverage", f"{level:g}")
        for level in NOMINAL_LEVELS
    },
    "robust_scale": ("metrics", "z_predictive", "robust_scale"),
    "z_std": ("metrics", "z_predictive", "std"),
    "fraction_beyond_10": ("metrics", "z_predictive", "fraction_beyond_10"),
    "posterior_only_coverage_0.95": ("metrics", "z_posterior", "coverage", "0.95"),
    "estimation_ratio": ("metrics", "estimation", "ratio"),
    "momentum_median": ("metrics", "momentum", "median"),
    "momentum_q25": ("metrics", "momentum", "q25"),
    "momentum_q75": ("metrics", "momentum", "q75"),
    "subset_ratio": ("subset", "ratio"),
    "abs_true_gradient_median": ("scale", "abs_true_gradient", "median"),
    "minibatch_std_median": ("scale", "minibatch_std", "median"),
    "loss": ("loss",),
}


def scalar(record: dict[str, Any], name: str) -> float:
    """The scalar ``name`` of one checkpoint record (NaN where it does not apply)."""
    value: Any = record
    for key in SCALARS[name]:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            return math.nan
        value = value[key]
    return float(value)


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per checkpoint step: every scalar's mean, min and max over the seeds that reached it."""
    steps = sorted({record["step"] for run in runs for record in run["checkpoints"]})
    rows = []
    for step in steps:
        records = [r for run in runs for r in run["checkpoints"] if r["step"] == step]
        row: dict[str, Any] = {"step": step, "seeds": len(records)}
        for name in SCALARS:
            values = np.array([scalar(r, name) for r in records])
            values = values[np.isfinite(values)]
            if values.size:
                row[name] = {
                    "mean": float(values.mean()), "min": float(values.min()),
                    "max": float(values.max()),
                }
        verdicts = [r["metrics"]["z_predictive"]["verdict"] for r in records
                    if "z_predictive" in r["metrics"]]
        if verdicts:
            row["verdicts"] = verdicts
        rows.append(row)
    return rows


def _mean(row: dict[str, Any], name: str, digits: int = 2, signed: bool = False) -> str:
    if name not in row:
        return "–"
    value = row[name]["mean"]
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _significant(row: dict[str, Any], name: str) -> str:
    return f"{row[name]['mean']:.3g}" if name in row else "–"


def format_table(results: dict[str, Any], steps: str = "all") -> str:
    """A Markdown table: task, optimizer, step, then the mean over seeds of each metric.

    ``steps="final"`` keeps only the last checkpoint, ``"middle"`` the middle one.
    """
    levels = " / ".join(f"{level:g}" for level in NOMINAL_LEVELS)
    lines = [
        (
            "| task | optimizer | step | noise log10(r/s²) median [IQR] | "
            f"drift log10(q/d²) median | coverage at {levels} | robust scale | std z | "
            "‖μ−g*‖²/‖ĝ−g*‖² | β₁ median [IQR] |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, by_optimizer in results.items():
        for entry in by_optimizer.values():
            rows = entry["aggregate"]
            chosen = {"final": rows[-1:], "middle": rows[len(rows) // 2 : len(rows) // 2 + 1]}
            for row in chosen.get(steps, rows):
                noise = (
                    f"{_mean(row, 'noise_log10_median', signed=True)} "
                    f"[{_mean(row, 'noise_log10_q25', signed=True)}, "
                    f"{_mean(row, 'noise_log10_q75', signed=True)}]"
                    if "noise_log10_median" in row else "–"
                )
                coverage = (
                    " / ".join(f"{row[f'coverage_{level:g}']['mean']:.3f}"
                               for level in NOMINAL_LEVELS)
                    if "coverage_0.5" in row else "–"
                )
                momentum = (
                    f"{_mean(row, 'momentum_median', 3)} [{_mean(row, 'momentum_q25', 3)}, "
                    f"{_mean(row, 'momentum_q75', 3)}]" if "momentum_median" in row else "–"
                )
                lines.append(
                    f"| {task} | {entry['label']} | {row['step']} | {noise} | "
                    f"{_mean(row, 'drift_log10_median', signed=True)} | {coverage} | "
                    f"{_significant(row, 'robust_scale')} | {_significant(row, 'z_std')} | "
                    f"{_significant(row, 'estimation_ratio')} | {momentum} |"
                )
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(task: str, by_optimizer: dict[str, Any], path: str) -> None:
    """Observed against nominal coverage, at the middle and the last checkpoint."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for axis, when in ((axes[0], "middle"), (axes[1], "final")):
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        for entry in by_optimizer.values():
            rows = [row for row in entry["aggregate"] if "coverage_0.5" in row]
            if len(rows) < 2:
                continue
            row = rows[len(rows) // 2 if when == "middle" else -1]
            observed = [row[f"coverage_{level:g}"]["mean"] for level in NOMINAL_LEVELS]
            low = [row[f"coverage_{level:g}"]["min"] for level in NOMINAL_LEVELS]
            high = [row[f"coverage_{level:g}"]["max"] for level in NOMINAL_LEVELS]
            line, = axis.plot(NOMINAL_LEVELS, observed, marker="o",
                              label=f"{entry['label']} (step {row['step']})")
            axis.fill_between(NOMINAL_LEVELS, low, high, color=line.get_color(), alpha=0.2)
        axis.set(xlabel="nominal coverage of μ ± c·σ_pred", title=f"{task}: {when} checkpoint",
                 xlim=(0.45, 1.0), ylim=(0.0, 1.02))
        axis.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("observed coverage of g* (seed mean; band min-max)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_metrics(task: str, by_optimizer: dict[str, Any], path: str) -> None:
    """The metrics against the step: noise and drift calibration, 95% coverage, robust scale,
    estimation error, beta_1 (lines: mean over seeds; bands: min-max over seeds)."""
    plt = _pyplot()
    panels = [
        ("noise_log10_median", "noise: median log10(r / s²)", "linear", 0.0),
        ("drift_log10_median", "drift: median log10(q / d²)", "linear", 0.0),
        ("coverage_0.95", "coverage of the 95% interval", "linear", 0.95),
        ("robust_scale", "robust scale 1.4826·median|z|", "log", 1.0),
        ("estimation_ratio", "‖est − g*‖² / ‖ĝ − g*‖²", "log", 1.0),
        ("momentum_median", "median β₁ (band: seeds' IQR)", "linear", None),
    ]
    figure, axes = plt.subplots(2, 3, figsize=(14, 7))
    for axis, (name, title, scale, reference) in zip(axes.ravel(), panels):
        for entry in by_optimizer.values():
            rows = [row for row in entry["aggregate"] if name in row]
            if not rows:
                continue
            steps = [row["step"] for row in rows]
            line, = axis.plot(steps, [row[name]["mean"] for row in rows], marker="o",
                              label=entry["label"])
            if name == "momentum_median":
                low = [row["momentum_q25"]["mean"] for row in rows]
                high = [row["momentum_q75"]["mean"] for row in rows]
            else:
                low = [row[name]["min"] for row in rows]
                high = [row[name]["max"] for row in rows]
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        if reference is not None:
            axis.axhline(reference, color="grey", linestyle=":")
        axis.set(xscale="log", yscale=scale, xlabel="step", title=title)
    axes[0, 0].legend(fontsize=7)
    axes[1, 1].legend(fontsize=7)
    figure.suptitle(f"{task}: calibration of the gradient posterior against the step")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
