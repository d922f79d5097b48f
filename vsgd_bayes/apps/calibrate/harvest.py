"""Train one model with one optimizer and measure its gradient posterior at checkpoints.

At each checkpoint t (after the optimizer's step t, parameters theta_t), with the training
itself untouched (the measurements use their own random generator and never write ``.grad``,
so the trajectory is the one an unmeasured run takes):

1. g*, the gradient of the task's full-batch objective (``task.true_gradient_batches()``);
2. M fresh mini-batch gradients at theta_t (the training batch size);
3. the optimizer's posterior and/or gradient estimate (its :class:`CalibratedOptimizer` row);
4. after each of the next K training steps, g* again: the drift measurement.

Then :func:`vsgd_bayes.apps.calibrate.metrics.checkpoint_metrics` and ``drift_calibration``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from vsgd_bayes.apps.calibrate import metrics
from vsgd_bayes.apps.calibrate.optimizers import CalibratedOptimizer

__all__ = ["checkpoint_steps", "flat_gradient", "true_gradient", "calibrate_run"]


def checkpoint_steps(steps: int, count: int, gap: int) -> list[int]:
    """``count`` log-spaced steps from 1 to about ``steps``, at least ``gap`` apart.

    Rounded log-spaced points are pushed forward where they would come closer than ``gap``
    (the drift measurement after a checkpoint needs the following ``gap - 1`` steps), so the
    last one may lie beyond ``steps``.

    Example:
        >>> checkpoint_steps(300, 6, 5)
        [1, 6, 11, 31, 96, 300]
    """
    if count < 2 or steps < 2 or gap < 1:
        raise ValueError(f"Invalid checkpoints: steps={steps}, count={count}, gap={gap}")
    chosen: list[int] = []
    for point in np.geomspace(1, steps, count):
        step = max(round(point), chosen[-1] + gap if chosen else 1)
        chosen.append(step)
    return chosen


def flat_gradient(loss: torch.Tensor, params: list[torch.Tensor]) -> np.ndarray:
    """d loss / d params, every coordinate of every parameter in one float64 vector (unused
    parameters get zeros); ``.grad`` is not touched."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).to(torch.float64)
            for p, g in zip(params, grads)
        ]
    ).numpy()


def true_gradient(task, model, params: list[torch.Tensor]) -> tuple[np.ndarray, float, Any]:
    """(g*, full-batch loss, halves): the gradient of the mean loss over the task's full-batch
    chunks; halves = (g over the first half of the chunks, g over the second) for a subset."""
    batches = task.true_gradient_batches()
    grads, losses = [], []
    for batch in batches:
        loss = task.loss(model, batch, None)
        losses.append(loss.item())
        grads.append(flat_gradient(loss, params))
    half = len(grads) // 2
    halves = None
    if task.true_gradient_is_subset:
        halves = (np.mean(grads[:half], axis=0), np.mean(grads[half:], axis=0))
    return np.mean(grads, axis=0), float(np.mean(losses)), halves


def _flat(tensors: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors]).numpy()


def _posterior(row: CalibratedOptimizer, optimizer, params) -> metrics.Posterior | None:
    if row.posterior is None:
        return None
    fields = [row.posterior(optimizer, p) for p in params]
    return metrics.Posterior(
        *(_flat([getattr(f, name) for f in fields]) for name in metrics.Posterior._fields)
    )


def calibrate_run(
    task, row: CalibratedOptimizer, seed: int, settings, lr: float | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``task``'s model with ``row``'s optimizer; measure at the checkpoints.

    Args:
        task: a calibration task (``vsgd_bayes.apps.calibrate.tasks``).
        row: the optimizer's declaration.
        seed: seeds the initialisation, the batch order and the fresh batches.
        settings: a ``CalibrationSettings``.
        lr: override of the row's learning rate for this task.
        progress: a tqdm bar over the steps.

    Returns:
        ``{"seed", "lr", "diverged", "wall_seconds", "checkpoints": [...]}``, one dict per
        checkpoint with ``step``, ``loss`` (full-batch), ``metrics`` and ``drift``.
    """
    lr = row.learning_rates[task.name] if lr is None else lr
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = task.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = row.build(params, lr)
    generator = torch.Generator().manual_seed(seed)
    steps = checkpoint_steps(settings.steps, settings.checkpoints, settings.drift_steps + 1)
    total = steps[-1] + settings.drift_steps
    records: list[dict[str, Any]] = []
    trail: list[np.ndarray] = []  # g* at the checkpoint and the steps after it
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"{task.name} {row.name} seed={seed}", leave=False)
    diverged = False
    for step in range(1, total + 1):
        loss = task.loss(model, task.sample_batch(generator, settings.batch_size), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            diverged = True
            break
        if trail:
            trail.append(true_gradient(task, model, params)[0])
            if len(trail) == settings.drift_steps + 1:
                posterior = records[-1].pop("_posterior")
                records[-1]["drift"] = (
                    metrics.drift_calibration(posterior.drift_variance, np.stack(trail))
                    if posterior is not None else None
                )
                trail = []
        if step in steps:
            records.append(_measure(task, model, params, optimizer, row, seed, step, settings))
            true = records[-1].pop("_true_gradient")
            # Drift is a property of a posterior; the baselines skip its K extra g*.
            trail = [true] if row.posterior is not None else []
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for record in records:  # a run that diverged leaves its last drift unmeasured
        record.pop("_posterior", None)
        record.setdefault("drift", None)
    return {
        "seed": seed, "lr": lr, "diverged": diverged,
        "wall_seconds": time.perf_counter() - started, "checkpoints": records,
    }


def _measure(task, model, params, optimizer, row, seed, step, settings) -> dict[str, Any]:
    true, loss, halves = true_gradient(task, model, params)
    # Fresh batches from their own generator: the training batch order is left unchanged.
    generator = torch.Generator().manual_seed(1_000_003 * (seed + 1) + step)
    minibatches = np.stack(
        [
            flat_gradient(
                task.loss(model, task.sample_batch(generator, settings.batch_size), generator),
                params,
            )
            for _ in range(settings.minibatches)
        ]
    )
    posterior = _posterior(row, optimizer, params)
    estimate = None
    if row.estimate is not None:
        estimate = _flat([row.estimate(optimizer, p, step) for p in params])
    record: dict[str, Any] = {
        "step": step,
        "loss": loss,
        "metrics": metrics.checkpoint_metrics(true, minibatches, posterior, estimate),
        "true_gradient_norm": float(np.linalg.norm(true)),
        # The gradient's scale per coordinate: |g*| and the mini-batch noise std s.
        "scale": {
            "abs_true_gradient": metrics.summary(np.abs(true)),
            "minibatch_std": metrics.summary(minibatches.std(axis=0, ddof=1)),
        },
        "_true_gradient": true,
        "_posterior": posterior,
    }
    if halves is not None:
        record["subset"] = metrics.subset_error(halves[0], halves[1], minibatches)
    return record
