"""The training budget of a task, and its scaling by ``--budget``.

Example:
    >>> from vsgd_bayes.apps.bench.budget import TaskSettings, scale_budget
    >>> scale_budget(TaskSettings(steps=1000, batch_size=64, eval_every=50), 0.1)
    TaskSettings(steps=100, batch_size=64, eval_every=5, schedule='constant')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TaskSettings", "scale_budget"]


@dataclass(frozen=True)
class TaskSettings:
    """Training budget of a task (the same for every optimizer).

    ``steps`` counts optimizer steps for the supervised tasks and environment steps for the
    reinforcement-learning task; ``eval_every`` is in the same unit. ``schedule`` names the
    learning-rate schedule over the budget (:mod:`~vsgd_bayes.apps.bench.schedules`): it is
    part of the budget because it is a function of the step and of ``steps``.
    """

    steps: int
    batch_size: int
    eval_every: int
    schedule: str = "constant"


def scale_budget(settings: TaskSettings, budget: float) -> TaskSettings:
    """``settings`` with ``steps`` and ``eval_every`` times ``budget`` (at least 1 each).

    Scaling both keeps the number of points of the curves, so a short CI run and a full run
    by hand follow the same protocol on the same time axis, in fractions of the budget.
    """
    if not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"Invalid budget: {budget!r} (must be a finite number > 0)")
    steps = max(1, round(settings.steps * budget))
    eval_every = min(steps, max(1, round(settings.eval_every * budget)))
    return TaskSettings(
        steps=steps,
        batch_size=settings.batch_size,
        eval_every=eval_every,
        schedule=settings.schedule,
    )
