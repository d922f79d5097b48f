"""Run the benchmark protocol: a learning-rate grid on validation, then seeds on test.

For every task and optimizer, with the same budget (steps, batch size) for all:

1. train once per learning rate of the optimizer's grid with the first seed and keep the rate
   with the best *validation* metric (a run whose loss becomes non-finite is "diverged" and
   never chosen);
2. train with the chosen rate for every other seed (the first seed's run is reused);
3. report mean and standard deviation over the seeds of the final *test* metric, the wall
   time per training step and per optimizer step.

Example:
    >>> from vsgd_bayes.apps.bench.runner import run_task
    >>> result = run_task("digits-cnn", optimizers=["adamw"], seeds=1, quick=True,
    ...                   lr_grids={"adamw": [1e-3]}, progress=False)
    >>> result["summary"]["adamw"]["lr"]
    0.001
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from vsgd_bayes.apps.bench.optimizers import LABELS, OPTIMIZERS, check_optimizer_name, make_optimizer
from vsgd_bayes.apps.bench.tasks import make_task

__all__ = ["LR_GRIDS", "QUICK_LR_GRIDS", "train_once", "run_task", "format_table", "plot_curves", "show_progress"]

#: Learning-rate grids, four points each (the same budget for every optimizer). AdamW takes
#: normalised steps (|step| <~ lr); VSGD and ConstantVSGD too, but their step
#: mu / sqrt(mu^2 + sigma^2) shrinks where the gradient posterior is uncertain, so their grids
#: sit half a decade higher (the authors' default is lr = 0.1); SGD's step scales with the
#: gradient, so its grid sits higher still.
LR_GRIDS: Dict[str, List[float]] = {
    "vsgd": [3e-3, 1e-2, 3e-2, 1e-1],
    "constant-vsgd": [3e-3, 1e-2, 3e-2, 1e-1],
    "adamw": [1e-3, 3e-3, 1e-2, 3e-2],
    "sgd": [1e-2, 3e-2, 1e-1, 3e-1],
}

#: ``--quick`` (CI) grids: two points, enough to exercise the selection.
QUICK_LR_GRIDS: Dict[str, List[float]] = {name: grid[1:3] for name, grid in LR_GRIDS.items()}


def show_progress() -> bool:
    """Progress bars only on an interactive terminal and never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_once(task, optimizer: str, lr: float, seed: int, settings, progress: bool = False) -> Dict[str, Any]:
    """Train one model; return the validation/test metrics, the curves and the timings."""
    torch.manual_seed(seed)
    model = task.build_model()
    opt = make_optimizer(optimizer, model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    curve: List[Dict[str, float]] = []
    step_seconds = optimizer_seconds = 0.0
    smoothed = None
    diverged = False
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, desc=f"{task.name} {optimizer} lr={lr:g} seed={seed}", leave=False)
    model.train()
    for step in range(1, settings.steps + 1):
        batch = task.sample_batch(generator, settings.batch_size)
        _synchronize(task.device)
        start = time.perf_counter()
        loss = task.loss(model, batch, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _synchronize(task.device)
        before_step = time.perf_counter()
        opt.step()
        _synchronize(task.device)
        end = time.perf_counter()
        step_seconds += end - start
        optimizer_seconds += end - before_step
        value = loss.item()
        if not math.isfinite(value):
            diverged = True
            break
        # Exponential moving average of the training loss, for the curves only.
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        if step % settings.eval_every == 0 or step == settings.steps:
            model.eval()
            val_metric, val_loss = task.evaluate(model, "val")
            model.train()
            curve.append({"step": step, "train_loss": smoothed, "val_metric": val_metric, "val_loss": val_loss})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.3g}")
    if bar is not None:
        bar.close()
    steps_done = step
    result: Dict[str, Any] = {
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "steps": steps_done,
        "diverged": diverged,
        "ms_per_step": 1e3 * step_seconds / steps_done,
        "ms_per_optimizer_step": 1e3 * optimizer_seconds / steps_done,
        "curve": curve,
    }
    if diverged:
        result.update(val_metric=math.nan, test_metric=math.nan, test_loss=math.nan)
    else:
        model.eval()
        result["val_metric"] = task.evaluate(model, "val")[0]
        result["test_metric"], result["test_loss"] = task.evaluate(model, "test")
    return result


def _better(task, candidate: Dict[str, Any], best: Optional[Dict[str, Any]]) -> bool:
    if candidate["diverged"] or not math.isfinite(candidate["val_metric"]):
        return False
    if best is None:
        return True
    if task.higher_is_better:
        return candidate["val_metric"] > best["val_metric"]
    return candidate["val_metric"] < best["val_metric"]


def run_task(
    task_name: str,
    optimizers: Sequence[str] = OPTIMIZERS,
    seeds: int = 3,
    quick: bool = False,
    device: str = "cpu",
    lr_grids: Optional[Dict[str, List[float]]] = None,
    steps: Optional[int] = None,
    progress: Optional[bool] = None,
    log=print,
) -> Dict[str, Any]:
    """Run the protocol on one task; return every run and a per-optimizer summary.

    Args:
        task_name: one of ``digits-cnn``, ``digits-vae``, ``char-lm``.
        optimizers: names from :data:`vsgd_bayes.apps.bench.optimizers.OPTIMIZERS`.
        seeds: number of seeds (0, 1, ...); seed 0 also runs the learning-rate grid.
        quick: the task's tiny CI settings and two-point grids.
        device: torch device of the data and the models.
        lr_grids: overrides of the grids, per optimizer.
        steps: override of the number of training steps.
        progress: tqdm bars (default: only on a terminal, never under CI).
        log: called with one line per finished run (``None``: silent).

    Returns:
        ``{"task", "metric", "higher_is_better", "settings", "runs", "summary"}``.
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"Invalid seeds: {seeds!r} (must be an integer >= 1)")
    for name in optimizers:
        check_optimizer_name(name)
    task = make_task(task_name, device)
    settings = task.quick_settings if quick else task.settings
    if steps is not None:
        if steps < 1:
            raise ValueError(f"Invalid steps: {steps!r} (must be >= 1)")
        settings = type(settings)(steps=steps, batch_size=settings.batch_size, eval_every=min(settings.eval_every, steps))
    grids = dict(QUICK_LR_GRIDS if quick else LR_GRIDS)
    grids.update(lr_grids or {})
    progress = show_progress() if progress is None else progress
    runs: List[Dict[str, Any]] = []
    summary: Dict[str, Any] = {}

    def record(run: Dict[str, Any], stage: str) -> None:
        run["stage"] = stage
        runs.append(run)
        if log is not None:
            log(
                f"[{task_name}] {LABELS[run['optimizer']]:<13} lr={run['lr']:<7g} seed={run['seed']} "
                f"{stage:<6} val={run['val_metric']:.4f} test={run['test_metric']:.4f} "
                f"{run['ms_per_step']:.2f} ms/step{' DIVERGED' if run['diverged'] else ''}"
            )

    for name in optimizers:
        best = None
        for lr in grids[name]:
            run = train_once(task, name, lr, 0, settings, progress)
            record(run, "grid")
            if _better(task, run, best):
                best = run
        if best is None:
            summary[name] = {"lr": None, "diverged": True}
            continue
        chosen = [best] + [train_once(task, name, best["lr"], seed, settings, progress) for seed in range(1, seeds)]
        for run in chosen[1:]:
            record(run, "seed")
        finals = [run["test_metric"] for run in chosen]
        finite = [value for value in finals if math.isfinite(value)]
        summary[name] = {
            "lr": best["lr"],
            "seeds": len(chosen),
            "diverged_seeds": sum(run["diverged"] for run in chosen),
            "test_metric_mean": statistics.fmean(finite) if finite else math.nan,
            # Sample standard deviation over seeds (0 with a single seed).
            "test_metric_std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "test_metrics": finals,
            "ms_per_step": statistics.fmean(run["ms_per_step"] for run in chosen),
            "ms_per_optimizer_step": statistics.fmean(run["ms_per_optimizer_step"] for run in chosen),
        }
    return {
        "task": task_name,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "settings": {"steps": settings.steps, "batch_size": settings.batch_size, "eval_every": settings.eval_every},
        "lr_grids": {name: grids[name] for name in optimizers},
        "seeds": seeds,
        "device": device,
        "runs": runs,
        "summary": summary,
    }


def format_table(results: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table: task, optimizer, chosen lr, test metric mean ± std, ms per step."""
    lines = [
        "| task | metric | optimizer | chosen lr | test metric (mean ± std) | seeds | ms / step | ms / optimizer step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        arrow = "↑" if result["higher_is_better"] else "↓"
        for name, row in result["summary"].items():
            if row.get("lr") is None:
                lines.append(f"| {result['task']} | {result['metric']} {arrow} | {LABELS[name]} | all diverged | – | – | – | – |")
                continue
            diverged = f" ({row['diverged_seeds']} diverged)" if row["diverged_seeds"] else ""
            lines.append(
                f"| {result['task']} | {result['metric']} {arrow} | {LABELS[name]} | {row['lr']:g} | "
                f"{row['test_metric_mean']:.4f} ± {row['test_metric_std']:.4f}{diverged} | {row['seeds']} | "
                f"{row['ms_per_step']:.2f} | {row['ms_per_optimizer_step']:.3f} |"
            )
    return "\n".join(lines)


def plot_curves(result: Dict[str, Any], path: str) -> None:
    """Save the smoothed training loss and the validation metric of the chosen runs (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, row in result["summary"].items():
        if row.get("lr") is None:
            continue
        chosen = [run for run in result["runs"] if run["optimizer"] == name and run["lr"] == row["lr"] and not run["diverged"]]
        if not chosen:
            continue
        length = min(len(run["curve"]) for run in chosen)
        steps = [point["step"] for point in chosen[0]["curve"][:length]]
        for axis, key in ((left, "train_loss"), (right, "val_metric")):
            values = torch.tensor([[point[key] for point in run["curve"][:length]] for run in chosen])
            line, = axis.plot(steps, values.mean(0), label=f"{LABELS[name]} (lr={row['lr']:g})")
            axis.fill_between(steps, values.min(0).values, values.max(0).values, color=line.get_color(), alpha=0.2)
    left.set(xlabel="step", ylabel="training loss (EMA 0.9)", title=result["task"])
    right.set(xlabel="step", ylabel=f"validation {result['metric']}", title="mean over seeds, band: min-max")
    if result["task"] != "digits-cnn":
        left.set_yscale("log")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
