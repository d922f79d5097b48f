"""Was the budget long enough?  The state of the final seeds' validation curves at its end.

The protocol reports the test metric at the end of a fixed budget. If the validation curves
are still improving there, the table ranks how fast each optimizer gets somewhere as well as
where it gets; if they got worse (overfitting), it ranks regularisation too. This module
gives each (task, optimizer) one of three words:

* ``"improving"``: over the last fifth of the budget the mean validation curve improved by
  more than two standard errors of the final validation metric's mean over the seeds;
* ``"worsening"``: it got worse by more than that (the curves passed their best);
* ``"flat"``: it moved by at most that much, i.e. by no more than the seed-to-seed noise of
  the number it ends at.

A budget is long enough for a task when no optimizer's curves are ``"improving"``.

Example:
    >>> from vsgd_bayes.apps.bench.curves import curve_state
    >>> run = lambda values: {"diverged": False, "curve": [
    ...     {"step": 100 * (i + 1), "val_metric": v} for i, v in enumerate(values)]}
    >>> curve_state([run([9.0, 5.0, 4.0]), run([9.5, 5.5, 4.2])], higher_is_better=False)["state"]
    'improving'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["NOISE_MULTIPLE", "late_change", "curve_state"]

#: A late change within this many standard errors of the final mean counts as flat.
NOISE_MULTIPLE = 2.0


def _finished(runs: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [run["curve"] for run in runs if not run["diverged"] and run["curve"]]


def late_change(runs: Sequence[dict[str, Any]]) -> float:
    """Change of the mean validation metric over the last fifth of the budget.

    From the last curve point at or before 80 % of the budget (the first point if none is) to
    the last point; ``nan`` without two points.
    """
    curves = _finished(runs)
    if not curves:
        return math.nan
    length = min(len(curve) for curve in curves)
    if length < 2:
        return math.nan
    steps = [point["step"] for point in curves[0][:length]]
    cut = 0.8 * steps[-1]
    start = max([i for i, step in enumerate(steps) if step <= cut] or [0])
    means = [
        statistics.fmean(curve[i]["val_metric"] for curve in curves) for i in (start, length - 1)
    ]
    return means[1] - means[0]


def curve_state(runs: Sequence[dict[str, Any]], higher_is_better: bool) -> dict[str, Any]:
    """``{"change", "noise", "state"}``: the late change, the standard error of the final
    validation metric's mean over the runs, and ``"improving"``, ``"flat"``, ``"worsening"``
    (``"unknown"`` with fewer than two finished runs or a curve of one point)."""
    change = late_change(runs)
    finals = [curve[-1]["val_metric"] for curve in _finished(runs)]
    noise = statistics.stdev(finals) / math.sqrt(len(finals)) if len(finals) > 1 else math.nan
    if not (math.isfinite(change) and math.isfinite(noise)):
        state = "unknown"
    elif abs(change) <= NOISE_MULTIPLE * noise:
        state = "flat"
    else:
        state = "improving" if (change > 0) == higher_is_better else "worsening"
    return {"change": change, "noise": noise, "state": state}
