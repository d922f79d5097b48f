"""Learning-rate schedules of the protocol: ``constant``, ``cosine``, ``step`` (and ``warmup``).

The rate of step t of a budget of T (t = 1..T, in the task's unit: optimizer steps, or
environment steps for reinforcement learning) is eta_t = eta * f(t, T), with

    constant:  f = 1
    cosine:    f = t / W                                   for t <= W = ceil(0.05 T),
               f = (1 + cos(pi (t - W) / (T - W))) / 2     after (to 0 at t = T)
    step:      f = 0.5 ** floor(3 (t - 1) / T)              (StepLR: x0.5 at each third)
    warmup:    f = min(1, t / W)                           (the linear warm-up alone)

``cosine`` is the usual cosine decay to zero after a 5 % linear warm-up; ``step`` is the
schedule of the VSGD paper's experiments (StepLR, the rate halved after each third of the
run). ``warmup`` is not offered on the command line: it is what a row that replaces the
schedule by design (Schedule-Free AdamW) runs under every ``--schedule`` (its own docs
advise a linear warm-up; the 5 % of ``cosine``).

Example:
    >>> from vsgd_bayes.apps.bench.schedules import schedule_factor
    >>> [schedule_factor("step", t, 9) for t in (1, 3, 4, 7, 9)]
    [1.0, 1.0, 0.5, 0.25, 0.25]
    >>> schedule_factor("cosine", 100, 100)
    0.0
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "WARMUP_FRACTION", "check_schedule", "schedule_factor", "warmup_steps"]

#: The schedules of ``--schedule`` (``warmup`` is internal: see the module docstring).
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")

#: Fraction of the budget the rate takes to rise linearly to eta (cosine and warmup).
WARMUP_FRACTION = 0.05


def check_schedule(name: object, allowed: tuple[str, ...] = SCHEDULES + ("warmup",)) -> str:
    """Return ``name`` if it is a schedule, else raise ``ValueError``."""
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"Invalid schedule: {name!r} (must be one of {allowed})")
    return name


def warmup_steps(total: int) -> int:
    """W = ceil(0.05 T), at least 1."""
    return max(1, math.ceil(WARMUP_FRACTION * total))


def schedule_factor(name: str, step: int, total: int) -> float:
    """f(t, T) of the module docstring; ``step`` is clipped to [1, total]."""
    check_schedule(name)
    if total < 1:
        raise ValueError(f"Invalid total: {total!r} (must be >= 1)")
    step = min(max(step, 1), total)
    if name == "constant":
        return 1.0
    if name == "step":
        return 0.5 ** math.floor(3 * (step - 1) / total)
    warm = warmup_steps(total)
    if step <= warm or name == "warmup":
        return min(1.0, step / warm)
    # cosine after the warm-up; W < T here since step > W.
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (total - warm)))
