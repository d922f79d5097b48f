"""Run the benchmark protocol (version 2) on one task.

For every task and optimizer, with the same budget (steps, batch size) for all:

1. **Selection.** Train once per learning rate of the optimizer's grid (6 points half a
   decade apart, :data:`~vsgd_bayes.apps.bench.optimizers.OPTIMIZERS`) and per *selection*
   seed; a rate's score is the mean over those seeds of the final *validation* metric; a rate
   with a diverged run (non-finite loss) is never chosen.
2. **Extension.** While the best rate is the lowest (highest) rate tried, try one more rate a
   grid ratio below (above) it, at most ``max_extensions`` times per edge; the result records
   every added rate and whether the best was still at an edge when the cap stopped it.
3. **Final.** Train at the chosen rate with *final* seeds disjoint from the selection seeds;
   report the mean and sample standard deviation of the *test* metric, and, paired by seed
   (the seed fixes the initialisation and the batch order), the mean difference to AdamW
   and its standard error.
4. **Budget check.** Say whether the final seeds' validation curves were still improving,
   flat or worsening over the last fifth of the budget
   (:func:`~vsgd_bayes.apps.bench.curves.curve_state`). For the supervised tasks every run
   also keeps its best validation checkpoint and reports its test metric
   (``test_metric_at_best_val``: early stopping on validation, the same rule for every
   optimizer), so that a budget long enough to overfit still compares optimizers fairly.
5. **Best peer.** The peer (a row outside the VSGD family) with the best validation metric at
   its chosen rate is the task's bar (:func:`best_peer`; never chosen on test); every other
   row is paired against it as against AdamW, and :func:`headline` says, in paired standard
   errors, where each VSGD-family row stands against it.

Every row runs under the protocol's learning-rate schedule (``schedule``:
:mod:`~vsgd_bayes.apps.bench.schedules`) except a row that declares its own (Schedule-Free),
and trains through :class:`~vsgd_bayes.apps.bench.optimizers.TrainingOptimizer`, which applies
what the row declares (gradient context, train/eval mode).

A seed fixes the model's initialisation and the data order; the data split is fixed once
for all (:data:`~vsgd_bayes.apps.bench.tasks.SPLIT_SEED`).

Example:
    >>> from vsgd_bayes.apps.bench.runner import run_task
    >>> result = run_task("digits-cnn", optimizers=["adamw"], final_seeds=1, selection_seeds=1,
    ...                   quick=True, lr_grids={"adamw": [1e-3]}, progress=False, log=None)
    >>> result["summary"]["adamw"]["lr"]
    0.001
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vsgd_bayes.apps.bench.budget import scale_budget
from vsgd_bayes.apps.bench.curves import curve_state
from vsgd_bayes.apps.bench.optimizers import (
    LABELS,
    OPTIMIZERS,
    TrainingOptimizer,
    check_optimizer_name,
)
from vsgd_bayes.apps.bench.schedules import check_schedule
from vsgd_bayes.apps.bench.tasks import make_task

__all__ = [
    "FINAL_SEED_OFFSET",
    "MAX_EXTENSIONS",
    "train_once",
    "select_learning_rate",
    "paired_difference",
    "run_task",
    "merge_results",
    "best_peer",
    "headline",
    "format_table",
    "plot_curves",
    "show_progress",
]

#: Final seeds are FINAL_SEED_OFFSET, FINAL_SEED_OFFSET + 1, ...; selection seeds are 0, 1, ...
#: (fewer than FINAL_SEED_OFFSET of them, so the two sets never meet).
FINAL_SEED_OFFSET = 1000

#: At most this many rates are added beyond each edge of a grid.
MAX_EXTENSIONS = 4

#: Optimizer against which every other one is compared, seed by seed.
REFERENCE = "adamw"

#: Posterior samples of the Monte-Carlo predictive reading (rows with a posterior, tasks with
#: ``predict``): the test metric of the mean of the predicted probabilities over samples.
PREDICTIVE_SAMPLES = 16


def show_progress() -> bool:
    """Progress bars only on an interactive terminal and never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_once(
    task, optimizer: str, lr: float, seed: int, settings, progress: bool = False
) -> dict[str, Any]:
    """Train one model; return the validation/test metrics, the curves and the timings.

    A task with its own training loop (``task.run_training``, e.g. reinforcement learning)
    runs that; the others use the supervised loop here (``sample_batch``, ``loss``,
    ``evaluate``).
    """
    if hasattr(task, "run_training"):
        return task.run_training(optimizer, lr, seed, settings, progress)
    torch.manual_seed(seed)
    model = task.build_model()
    # Everything the optimizer's row declares (gradient context, train/eval mode) and the
    # schedule are applied by TrainingOptimizer; this loop knows no optimizer by name.
    opt = TrainingOptimizer(
        optimizer,
        model.parameters(),
        lr,
        settings.schedule,
        settings.steps,
        train_size=getattr(task, "train_size", None),
    )
    generator = torch.Generator().manual_seed(seed)
    curve: list[dict[str, float]] = []
    step_seconds = optimizer_seconds = 0.0
    smoothed = None
    diverged = False
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=settings.steps, desc=f"{task.name} {optimizer} lr={lr:g} seed={seed}", leave=False
        )
    # The best validation checkpoint so far (its step, metric and a copy of the weights).
    best_step, best_val, best_state = None, None, None
    model.train()
    opt.train()
    for step in range(1, settings.steps + 1):
        batch = task.sample_batch(generator, settings.batch_size)
        _synchronize(task.device)
        start = time.perf_counter()
        with opt.gradients():
            loss = task.loss(model, batch, generator)
            loss.backward()
        _synchronize(task.device)
        before_step = time.perf_counter()
        opt.step(step)
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
            # Evaluation and checkpoints at the weights the row evaluates (Schedule-Free: x).
            model.eval()
            opt.eval()
            val_metric, val_loss = task.evaluate(model, "val")
            if best_val is None or (
                val_metric > best_val if task.higher_is_better else val_metric < best_val
            ):
                best_step, best_val = step, val_metric
                # The last step's weights are the model's own: no copy needed.
                best_state = None if step == settings.steps else copy.deepcopy(model.state_dict())
            model.train()
            opt.train()
            curve.append(
                {
                    "step": step,
                    "train_loss": smoothed,
                    "val_metric": val_metric,
                    "val_loss": val_loss,
                }
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.3g}")
    if bar is not None:
        bar.close()
    steps_done = step
    result: dict[str, Any] = {
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "steps": steps_done,
        "schedule": opt.schedule,
        "diverged": diverged,
        "ms_per_step": 1e3 * step_seconds / steps_done,
        "ms_per_optimizer_step": 1e3 * optimizer_seconds / steps_done,
        "state_bytes_per_parameter": opt.state_bytes_per_parameter(),
        "gradient_contexts": opt.gradient_contexts,
        "curve": curve,
    }
    if diverged:
        result.update(val_metric=math.nan, test_metric=math.nan, test_loss=math.nan)
    else:
        model.eval()
        opt.eval()
        # The last step is always evaluated on validation: reuse it (evaluation is deterministic).
        result["val_metric"] = curve[-1]["val_metric"]
        result["test_metric"], result["test_loss"] = task.evaluate(model, "test")
        predictive = _predictive_test_metric(task, model, opt)
        if predictive is not None:
            result["test_metric_predictive"] = predictive
        result["best_val_step"], result["best_val_metric"] = best_step, best_val
        if best_state is None:
            result["test_metric_at_best_val"] = result["test_metric"]
        else:
            model.load_state_dict(best_state)
            result["test_metric_at_best_val"] = task.evaluate(model, "test")[0]
    return result


def _predictive_test_metric(task, model, opt: TrainingOptimizer) -> float | None:
    """Test metric of the Monte-Carlo predictive, p(y | x) ~ mean_s p(y | x, theta_s) over
    PREDICTIVE_SAMPLES posterior samples theta_s, at the end of the budget; ``None`` where the
    row has no posterior or the task cannot average predictions (``predict``)."""
    if opt.sample() is None or not hasattr(task, "predict"):
        return None
    total = None
    for _ in range(PREDICTIVE_SAMPLES):
        with opt.sample():
            probabilities = task.predict(model, "test")
        total = probabilities if total is None else total + probabilities
    return task.score_probabilities(total / PREDICTIVE_SAMPLES, "test")[0]


def _grid_ratio(grid: Sequence[float]) -> float:
    """The geometric step of a log-spaced grid (its mean, if the spacing is uneven)."""
    low, high = min(grid), max(grid)
    return (high / low) ** (1.0 / (len(grid) - 1))


def select_learning_rate(
    train: Callable[[float, int], dict[str, Any]],
    grid: Sequence[float],
    seeds: Sequence[int],
    higher_is_better: bool,
    max_extensions: int = MAX_EXTENSIONS,
) -> dict[str, Any]:
    """Choose a learning rate by the mean validation metric over ``seeds``; extend at the edges.

    Args:
        train: ``train(lr, seed)`` returns a run with ``val_metric`` and ``diverged``.
        grid: the starting rates (at least one; with one, nothing is extended).
        seeds: the selection seeds.
        higher_is_better: direction of the validation metric.
        max_extensions: most rates added beyond each edge.

    Returns:
        ``{"lr", "scores", "runs", "grid", "extensions", "at_edge"}``: the chosen rate (``None``
        when every rate had a diverged run), the score of every rate tried, the runs, the
        starting grid, the added rates as ``{"lr", "edge"}`` in order, and whether the chosen
        rate is still the lowest or highest rate tried (only possible once a cap is hit).
    """
    if not grid or any(not (isinstance(lr, (int, float)) and lr > 0) for lr in grid):
        raise ValueError(f"Invalid grid: {list(grid)!r} (must be non-empty positive rates)")
    if not seeds:
        raise ValueError(f"Invalid seeds: {list(seeds)!r} (must be non-empty)")
    scores: dict[float, float | None] = {}
    runs: list[dict[str, Any]] = []

    def score(lr: float) -> None:
        mine = [train(lr, seed) for seed in seeds]
        runs.extend(mine)
        values = [run["val_metric"] for run in mine]
        ok = not any(run["diverged"] for run in mine) and all(math.isfinite(v) for v in values)
        scores[lr] = statistics.fmean(values) if ok else None

    def best() -> float | None:
        finite = [(value, lr) for lr, value in scores.items() if value is not None]
        if not finite:
            return None
        sign = 1.0 if higher_is_better else -1.0
        # Ties go to the lower rate (the first in sorted order).
        return max(sorted(finite, key=lambda item: item[1]), key=lambda item: sign * item[0])[1]

    for lr in sorted(set(float(lr) for lr in grid)):
        score(lr)
    extensions: list[dict[str, Any]] = []
    ratio = _grid_ratio(sorted(scores)) if len(scores) > 1 else None
    added = {"low": 0, "high": 0}
    while ratio is not None:
        chosen, tried = best(), sorted(scores)
        if chosen is None:
            break
        if chosen == tried[0] and added["low"] < max_extensions:
            edge, lr = "low", float(f"{chosen / ratio:.3g}")
        elif chosen == tried[-1] and added["high"] < max_extensions:
            edge, lr = "high", float(f"{chosen * ratio:.3g}")
        else:
            break
        added[edge] += 1
        extensions.append({"lr": lr, "edge": edge})
        score(lr)
    chosen, tried = best(), sorted(scores)
    return {
        "lr": chosen,
        "scores": {lr: scores[lr] for lr in tried},
        "runs": runs,
        "grid": sorted(float(lr) for lr in grid),
        "extensions": extensions,
        "at_edge": chosen is not None and len(tried) > 1 and chosen in (tried[0], tried[-1]),
    }


def paired_difference(values: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Mean and standard error of ``values[i] - reference[i]`` over the pairs where both are finite.

    The standard error is the sample standard deviation of the differences over sqrt(n)
    (``nan`` with fewer than two pairs).
    """
    if len(values) != len(reference):
        raise ValueError(f"Invalid pairs: {len(values)} values against {len(reference)} references")
    differences = [
        a - b for a, b in zip(values, reference) if math.isfinite(a) and math.isfinite(b)
    ]
    n = len(differences)
    mean = statistics.fmean(differences) if n else math.nan
    error = statistics.stdev(differences) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "standard_error": error, "pairs": n}


def _mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (``nan``; std 0 with one)."""
    finite = [value for value in values if math.isfinite(value)]
    mean = statistics.fmean(finite) if finite else math.nan
    return mean, statistics.stdev(finite) if len(finite) > 1 else 0.0


def _curve_fields(final_runs: Sequence[dict[str, Any]], higher_is_better: bool) -> dict:
    """A row's budget-check fields, from its final runs' curves."""
    state = curve_state(final_runs, higher_is_better)
    return {
        "val_change_last_fifth": state["change"],
        "val_noise_final": state["noise"],
        "curve_state": state["state"],
    }


def _format_logged(value: float) -> str:
    """Four decimals, or a short exponent form for a nearly diverged run's huge metric."""
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.3e}"


def _compare_to_reference(summary: dict[str, Any]) -> None:
    """Add, to every row but AdamW's, its paired difference to AdamW (in place): of the test
    metric at the end (``vs_adamw``) and, where both have it, at the best validation
    checkpoint (``vs_adamw_at_best_val``)."""
    for row in summary.values():
        row.pop("vs_adamw", None)
        row.pop("vs_adamw_at_best_val", None)
    reference = summary.get(REFERENCE)
    if reference is None or reference.get("lr") is None:
        return
    for name, row in summary.items():
        if name == REFERENCE or row.get("lr") is None:
            continue
        row["vs_adamw"] = paired_difference(row["test_metrics"], reference["test_metrics"])
        if "test_metrics_at_best_val" in row and "test_metrics_at_best_val" in reference:
            row["vs_adamw_at_best_val"] = paired_difference(
                row["test_metrics_at_best_val"], reference["test_metrics_at_best_val"]
            )


def _chosen_validation(row: dict[str, Any]) -> float | None:
    """A row's selection score at its chosen rate: the mean validation metric over the
    selection seeds, the number that chose the rate."""
    if row.get("lr") is None:
        return None
    return {point["lr"]: point["val_metric"] for point in row["scores"]}.get(row["lr"])


def best_peer(summary: dict[str, Any], higher_is_better: bool) -> str | None:
    """The peer (a row of family ``"peer"``: not the VSGD family) with the best validation
    metric at its chosen rate (:func:`_chosen_validation`); never chosen on test, so that the
    bar every row is paired against is not picked with the numbers it is compared on. Ties go
    to the registry's order; ``None`` without a peer that trained."""
    sign = 1.0 if higher_is_better else -1.0
    candidates = [
        (sign * value, -index, name)
        for index, name in enumerate(summary)
        if name in OPTIMIZERS
        and OPTIMIZERS[name].family == "peer"
        and (value := _chosen_validation(summary[name])) is not None
        and math.isfinite(value)
    ]
    return max(candidates)[2] if candidates else None


def _compare_to_best_peer(result: dict[str, Any]) -> None:
    """Add ``result["best_peer"]``, every other row's paired difference to it (``vs_best_peer``
    and, where both have it, ``vs_best_peer_at_best_val``) and ``result["headline"]`` (in
    place)."""
    summary = result["summary"]
    for row in summary.values():
        row.pop("vs_best_peer", None)
        row.pop("vs_best_peer_at_best_val", None)
    name = best_peer(summary, result["higher_is_better"])
    result["best_peer"] = None
    if name is not None:
        peer = summary[name]
        result["best_peer"] = {
            "name": name,
            "label": LABELS[name],
            "lr": peer["lr"],
            "val_metric": _chosen_validation(peer),
            "chosen_by": "selection validation metric at the chosen rate (never test)",
        }
        for other, row in summary.items():
            if other == name or row.get("lr") is None:
                continue
            row["vs_best_peer"] = paired_difference(row["test_metrics"], peer["test_metrics"])
            if "test_metrics_at_best_val" in row and "test_metrics_at_best_val" in peer:
                row["vs_best_peer_at_best_val"] = paired_difference(
                    row["test_metrics_at_best_val"], peer["test_metrics_at_best_val"]
                )
    result["headline"] = headline(result)


def _in_standard_errors(paired: dict[str, Any]) -> str:
    error = paired["standard_error"]
    if not (math.isfinite(error) and error > 0):
        return "SE n/a"
    return f"{paired['mean'] / error:+.1f} SE"


def headline(result: dict[str, Any]) -> str:
    """One line: where each VSGD-family row stands against the task's best peer, as the paired
    mean difference of the test metric (at the best validation checkpoint where the task has
    one) in paired standard errors; positive is better for the VSGD row."""
    name = (result.get("best_peer") or {}).get("name")
    if name is None:
        return f"{result['task']}: no peer trained"
    sign = 1.0 if result["higher_is_better"] else -1.0
    parts = []
    for other, row in result["summary"].items():
        if other not in OPTIMIZERS or OPTIMIZERS[other].family != "vsgd":
            continue
        paired = row.get("vs_best_peer_at_best_val") or row.get("vs_best_peer")
        if not paired:
            continue
        better = {**paired, "mean": sign * paired["mean"]}
        parts.append(f"{LABELS[other]} {_in_standard_errors(better)}")
    where = (
        "at best val"
        if any("vs_best_peer_at_best_val" in r for r in result["summary"].values())
        else "at the end"
    )
    return (
        f"{result['task']}: best peer {LABELS[name]} (lr {result['best_peer']['lr']:g}, chosen on "
        f"validation); VSGD family vs it, {where}, paired, + = better: "
        + (", ".join(parts) if parts else "no VSGD-family row")
    )


def run_task(
    task_name,
    optimizers: Sequence[str] = tuple(OPTIMIZERS),
    final_seeds: int = 5,
    selection_seeds: int = 2,
    quick: bool = False,
    budget: float = 1.0,
    schedule: str = "constant",
    device: str = "cpu",
    lr_grids: dict[str, Sequence[float]] | None = None,
    steps: int | None = None,
    max_extensions: int = MAX_EXTENSIONS,
    progress: bool | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the protocol on one task; return every run and a per-optimizer summary.

    Args:
        task_name: a key of :data:`~vsgd_bayes.apps.bench.tasks.TASKS`, or a task object.
        optimizers: keys of :data:`~vsgd_bayes.apps.bench.optimizers.OPTIMIZERS`.
        final_seeds: seeds of the reported test metric (FINAL_SEED_OFFSET, ...).
        selection_seeds: seeds of the learning-rate selection (0, 1, ...).
        quick: the task's tiny CI settings (the protocol is unchanged).
        budget: factor on the task's steps (see :func:`~vsgd_bayes.apps.bench.budget.scale_budget`).
        schedule: ``constant``, ``cosine`` or ``step``
            (:mod:`~vsgd_bayes.apps.bench.schedules`), the same for every row but those that
            replace the schedule by design (Schedule-Free AdamW runs its warm-up).
        device: torch device of the data and the models.
        lr_grids: overrides of the starting grids, per optimizer.
        steps: override of the number of training steps (after ``budget``).
        max_extensions: most rates added beyond each edge of a grid.
        progress: tqdm bars (default: only on a terminal, never under CI).
        log: called with one line per finished run (``None``: silent).

    Returns:
        ``{"task", "metric", "higher_is_better", "settings", "protocol", "runs", "summary"}``.
    """
    for name, value in (("final_seeds", final_seeds), ("selection_seeds", selection_seeds)):
        if not isinstance(value, int) or not 1 <= value <= FINAL_SEED_OFFSET:
            raise ValueError(
                f"Invalid {name}: {value!r} (must be an integer in [1, {FINAL_SEED_OFFSET}])"
            )
    if not isinstance(max_extensions, int) or max_extensions < 0:
        raise ValueError(f"Invalid max_extensions: {max_extensions!r} (must be an integer >= 0)")
    for name in optimizers:
        check_optimizer_name(name)
    from vsgd_bayes.apps.bench.schedules import SCHEDULES

    check_schedule(schedule, SCHEDULES)
    task = make_task(task_name, device) if isinstance(task_name, str) else task_name
    settings = scale_budget(task.quick_settings if quick else task.settings, budget)
    settings = dataclasses.replace(settings, schedule=schedule)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"Invalid steps: {steps!r} (must be >= 1)")
        settings = dataclasses.replace(
            settings, steps=steps, eval_every=min(settings.eval_every, steps)
        )
    grids = {name: list(OPTIMIZERS[name].lr_grid) for name in optimizers}
    grids.update({name: list(grid) for name, grid in (lr_grids or {}).items() if name in grids})
    selection = list(range(selection_seeds))
    finals = list(range(FINAL_SEED_OFFSET, FINAL_SEED_OFFSET + final_seeds))
    progress = show_progress() if progress is None else progress
    runs: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}

    def train(name: str, stage: str) -> Callable[[float, int], dict[str, Any]]:
        def run(lr: float, seed: int) -> dict[str, Any]:
            result = train_once(task, name, lr, seed, settings, progress)
            result["stage"] = stage
            runs.append(result)
            if log is not None:
                log(
                    f"[{task.name}] {LABELS[name]:<13} lr={lr:<8g} seed={seed:<4} {stage:<9} "
                    f"val={_format_logged(result['val_metric'])} "
                    f"test={_format_logged(result['test_metric'])} "
                    f"{result['ms_per_step']:.2f} ms/step"
                    f"{' DIVERGED' if result['diverged'] else ''}"
                )
            return result

        return run

    for name in optimizers:
        chosen = select_learning_rate(
            train(name, "selection"), grids[name], selection, task.higher_is_better, max_extensions
        )
        protocol = {key: chosen[key] for key in ("grid", "extensions", "at_edge")}
        protocol["scores"] = [
            {"lr": lr, "val_metric": value} for lr, value in chosen["scores"].items()
        ]
        if chosen["lr"] is None:
            summary[name] = {"lr": None, "diverged": True, **protocol}
            continue
        final_runs = [train(name, "final")(chosen["lr"], seed) for seed in finals]
        metrics = [run["test_metric"] for run in final_runs]
        mean, std = _mean_and_std(metrics)
        summary[name] = {
            "lr": chosen["lr"],
            **protocol,
            "final_seeds": finals,
            "diverged_seeds": sum(run["diverged"] for run in final_runs),
            "test_metrics": metrics,
            "test_metric_mean": mean,
            # Sample standard deviation over seeds (0 with a single seed).
            "test_metric_std": std,
            **_curve_fields(final_runs, task.higher_is_better),
            "ms_per_step": statistics.fmean(run["ms_per_step"] for run in final_runs),
            "ms_per_optimizer_step": statistics.fmean(
                run["ms_per_optimizer_step"] for run in final_runs
            ),
            "family": OPTIMIZERS[name].family,
            # The schedule this row ran under (Schedule-Free: its own warm-up, whatever the
            # protocol's schedule).
            "schedule": final_runs[0].get("schedule", settings.schedule),
            "state_bytes_per_parameter": final_runs[0].get("state_bytes_per_parameter"),
        }
        if all("test_metric_predictive" in run for run in final_runs):
            predictive = [run["test_metric_predictive"] for run in final_runs]
            predictive_mean, predictive_std = _mean_and_std(predictive)
            summary[name].update(
                test_metrics_predictive=predictive,
                test_metric_predictive_mean=predictive_mean,
                test_metric_predictive_std=predictive_std,
                predictive_samples=PREDICTIVE_SAMPLES,
            )
        if all("test_metric_at_best_val" in run for run in final_runs):
            at_best = [run["test_metric_at_best_val"] for run in final_runs]
            best_mean, best_std = _mean_and_std(at_best)
            summary[name].update(
                test_metrics_at_best_val=at_best,
                test_metric_at_best_val_mean=best_mean,
                test_metric_at_best_val_std=best_std,
                best_val_steps=[run["best_val_step"] for run in final_runs],
            )
        if hasattr(task, "summarize"):
            summary[name].update(task.summarize(final_runs))
    _compare_to_reference(summary)
    result = {
        "task": task.name,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "settings": {
            "steps": settings.steps,
            "batch_size": settings.batch_size,
            "eval_every": settings.eval_every,
            "schedule": settings.schedule,
        },
        "schedule": settings.schedule,
        "budget": budget,
        "quick": quick,
        "protocol": {
            "selection_seeds": selection,
            "final_seeds": finals,
            "max_extensions": max_extensions,
            "reference": REFERENCE,
        },
        "lr_grids": grids,
        "step_unit": getattr(task, "step_unit", "step"),
        "train_loss_label": getattr(task, "train_loss_label", "training loss (EMA 0.9)"),
        "device": device,
        "runs": runs,
        "summary": summary,
    }
    _compare_to_best_peer(result)
    return result


def _ignores_protocol_schedule(part: dict[str, Any]) -> bool:
    """Whether every row of a part runs under its own schedule, whatever ``--schedule`` was."""
    names = list(part.get("summary", {}))
    return bool(names) and all(
        name in OPTIMIZERS and OPTIMIZERS[name].schedule is not None for name in names
    )


def _without_schedule(settings: Any) -> Any:
    if not isinstance(settings, dict):
        return settings
    return {key: value for key, value in settings.items() if key != "schedule"}


def merge_results(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One task's results run in parts (disjoint optimizers, same settings), as if run at once.

    Every run is seeded on its own, so a part's runs do not depend on the other parts; the
    paired differences to AdamW are recomputed over the merged summary.
    """
    if not parts:
        raise ValueError("Invalid parts: nothing to merge")
    # A part whose every row replaces the schedule by design (Schedule-Free: the registry's
    # ``schedule``) ran the same runs under any ``--schedule``: its schedule setting is not
    # compared, and the merged result takes the schedule of the parts it did apply to.
    scheduled = [part for part in parts if not _ignores_protocol_schedule(part)] or list(parts)
    first = scheduled[0]
    keys = ("task", "settings", "protocol", "quick", "budget")
    for part in parts:
        for key in keys:
            mine, theirs = part.get(key), first.get(key)
            if key == "settings" and part not in scheduled:
                mine, theirs = _without_schedule(mine), _without_schedule(theirs)
            if mine != theirs:
                raise ValueError(f"Invalid parts: {key} differs ({mine!r} vs {theirs!r})")
    names = [name for part in parts for name in part["summary"]]
    if len(set(names)) != len(names):
        raise ValueError(f"Invalid parts: an optimizer appears twice ({names})")
    merged = {**first, "runs": [], "summary": {}, "lr_grids": {}}
    for part in parts:
        merged["runs"] += part["runs"]
        merged["lr_grids"].update(part["lr_grids"])
        merged["summary"].update({name: dict(row) for name, row in part["summary"].items()})
    # Table order: the registry's.
    merged["summary"] = {
        name: merged["summary"][name] for name in OPTIMIZERS if name in merged["summary"]
    }
    merged["wall_seconds"] = sum(part.get("wall_seconds", math.nan) for part in parts)
    # The curve state is a function of the stored curves: recomputed, so that parts run before
    # it existed gain it too.
    for name, row in merged["summary"].items():
        if row.get("lr") is None:
            continue
        final_runs = [
            run for run in merged["runs"] if run["optimizer"] == name and run["stage"] == "final"
        ]
        row.update(_curve_fields(final_runs, merged["higher_is_better"]))
    _compare_to_reference(merged["summary"])
    _compare_to_best_peer(merged)
    return merged


def _format_metric(value: float, scale: float) -> str:
    """Four decimals for metrics below 100 in size (accuracies, perplexities), one above
    (returns)."""
    return f"{value:.4f}" if abs(scale) < 100 else f"{value:.1f}"


def _format_paired(paired: dict[str, Any] | None, scale: float) -> str:
    if not paired:
        return "–"
    sign = "+" if paired["mean"] >= 0 else "−"
    return (
        f"{sign}{_format_metric(abs(paired['mean']), scale)} ± "
        f"{_format_metric(paired['standard_error'], scale)}"
    )


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: chosen lr, extensions, final test metric, paired differences to AdamW
    and to the task's best peer, the state of the validation curves at the end of the budget,
    the same comparisons at each run's best validation checkpoint (supervised tasks), the
    time per step and the optimizer's state in bytes per parameter; then one headline line
    per task (:func:`headline`)."""
    lines = [
        "| task | metric | optimizer | chosen lr (grid, extensions) "
        "| test metric, mean ± std (seeds) | − AdamW, paired mean ± SE "
        "| − best peer, paired mean ± SE "
        "| val change, last 20 % (curves) | at best val: test metric (median step) "
        "| at best val: − AdamW | at best val: − best peer | ms / step | ms / opt. step "
        "| state B / param | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        arrow = "↑" if result["higher_is_better"] else "↓"
        peer = (result.get("best_peer") or {}).get("name")
        for name, row in result["summary"].items():
            grid = f"{min(row['grid']):g}–{max(row['grid']):g}"
            ext = "".join(f", +{e['lr']:g}" for e in row["extensions"])
            edge = ", still at edge" if row["at_edge"] else ""
            head = f"| {result['task']} | {result['metric']} {arrow} | {LABELS[name]} "
            if row.get("lr") is None:
                lines.append(
                    head
                    + f"| all diverged ({grid}{ext}) | – | – | – | – | – | – | – | – | – | – | – |"
                )
                continue
            diverged = f", {row['diverged_seeds']} diverged" if row["diverged_seeds"] else ""
            mean = row["test_metric_mean"]
            at_best = "–"
            if "test_metric_at_best_val_mean" in row:
                steps = [step for step in row["best_val_steps"] if step is not None]
                median = f" ({statistics.median(steps):g})" if steps else ""
                at_best = (
                    f"{_format_metric(row['test_metric_at_best_val_mean'], mean)} ± "
                    f"{_format_metric(row['test_metric_at_best_val_std'], mean)}{median}"
                )
            state = f" ({row['curve_state']})" if "curve_state" in row else ""
            notes = []
            if name == peer:
                notes.append("best peer")
            if row.get("schedule") not in (None, result.get("schedule", "constant")):
                notes.append(f"schedule: {row['schedule']}")
            if "test_metric_predictive_mean" in row:
                notes.append(
                    f"MC predictive ({row['predictive_samples']} samples): "
                    f"{_format_metric(row['test_metric_predictive_mean'], mean)} ± "
                    f"{_format_metric(row['test_metric_predictive_std'], mean)}"
                )
            if row.get("note"):
                notes.append(row["note"])
            memory = row.get("state_bytes_per_parameter")
            lines.append(
                head + f"| {row['lr']:g} ({grid}{ext}{edge}) | "
                f"{_format_metric(mean, mean)} ± {_format_metric(row['test_metric_std'], mean)} "
                f"({len(row['test_metrics'])}{diverged}) | "
                f"{_format_paired(row.get('vs_adamw'), mean)} | "
                f"{_format_paired(row.get('vs_best_peer'), mean)} | "
                f"{row['val_change_last_fifth']:+.3g}{state} | {at_best} | "
                f"{_format_paired(row.get('vs_adamw_at_best_val'), mean)} | "
                f"{_format_paired(row.get('vs_best_peer_at_best_val'), mean)} | "
                f"{row['ms_per_step']:.2f} | {row['ms_per_optimizer_step']:.3f} | "
                f"{'–' if memory is None else f'{memory:.1f}'} | {'; '.join(notes)} |"
            )
    headlines = [result.get("headline") or headline(result) for result in results]
    schedules = sorted({result.get("schedule", "constant") for result in results})
    return (
        "\n".join(lines)
        + f"\n\nSchedule: {', '.join(schedules)}. Headlines (paired SE against the best peer):\n"
        + "\n".join(f"- {line}" for line in headlines)
    )


def plot_curves(result: dict[str, Any], path: str) -> None:
    """Save the chosen runs' training loss and validation metric, and the selection scores (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, row in result["summary"].items():
        points = [(p["lr"], p["val_metric"]) for p in row["scores"] if p["val_metric"] is not None]
        line = None
        if points:
            (line,) = right.plot(*zip(*points), marker="o", label=LABELS[name])
            added = [(e["lr"], dict(points).get(e["lr"])) for e in row["extensions"]]
            added = [(lr, value) for lr, value in added if value is not None]
            if added:
                right.plot(
                    *zip(*added),
                    linestyle="none",
                    marker="s",
                    markersize=9,
                    markerfacecolor="none",
                    color=line.get_color(),
                )
        if row.get("lr") is None:
            continue
        chosen = [
            run
            for run in result["runs"]
            if run["optimizer"] == name
            and run["stage"] == "final"
            and not run["diverged"]
            and run["curve"]
        ]
        if not chosen:
            continue
        length = min(len(run["curve"]) for run in chosen)
        steps = [point["step"] for point in chosen[0]["curve"][:length]]
        color = line.get_color() if line is not None else None
        for axis, key in ((left, "train_loss"), (middle, "val_metric")):
            values = torch.tensor(
                [[point[key] for point in run["curve"][:length]] for run in chosen]
            )
            axis.plot(
                steps, values.mean(0), color=color, label=f"{LABELS[name]} (lr={row['lr']:g})"
            )
            axis.fill_between(
                steps, values.min(0).values, values.max(0).values, color=color, alpha=0.2
            )
    unit = result.get("step_unit", "step")
    left.set(
        xlabel=unit,
        ylabel=result.get("train_loss_label", "training loss (EMA 0.9)"),
        title=result["task"],
    )
    middle.set(
        xlabel=unit,
        ylabel=f"validation {result['metric']}",
        title="final seeds: mean, band min-max",
    )
    right.set(
        xscale="log",
        xlabel="learning rate",
        ylabel=f"validation {result['metric']}",
        title="selection: mean over seeds (□ extension)",
    )
    if result.get("log_loss_axis", True) and all(
        run["curve"] and min(p["train_loss"] for p in run["curve"]) > 0
        for run in result["runs"]
        if run["stage"] == "final" and not run["diverged"]
    ):
        left.set_yscale("log")
    scores = [p["val_metric"] for row in result["summary"].values() for p in row["scores"]]
    scores = [value for value in scores if value is not None]
    if (
        scores
        and not result["higher_is_better"]
        and min(scores) > 0
        and max(scores) > 2 * min(scores)
    ):
        # A nearly diverged rate (perplexity 1e20) would flatten the others: clip the axis.
        right.set_ylim(0.95 * min(scores), 2 * min(scores))
        right.set_title("selection (□ extension), clipped at 2× best")
    middle.legend(fontsize=8)
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
