"""Schedule-Free averaging, an option of every optimizer of the family (no JAX, no torch).

Schedule-Free (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
NeurIPS 2024) replaces a learning-rate schedule by an average of the iterates. With the base
step Delta_t (here: the VSGD family's step, decoupled weight decay included) computed from the
gradient at y_t,

    z_{t+1} = z_t + Delta_t(g_hat at y_t)
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},   c_{t+1} = w_{t+1} / sum_{i<=t+1} w_i
    y_{t+1} = beta x_{t+1} + (1 - beta) z_{t+1}

with w_t = (max_{i<=t} eta_i)^2 (the weighting of the paper's code and of
``optax.contrib.schedule_free``; a constant rate gives c_t = 1/t, the uniform average).
Gradients are taken at y; the model is evaluated at x. beta is
``schedule_free_momentum``. Nothing in VSGD's model speaks for or against it
(``derivations/13_schedule_free.md``): it is an empirical option (measured here, issue 23).

Example:
    >>> averaging_weight(0.1, 0.0)
    (1.0, 0.010000000000000002)
    >>> check_schedule_free_momentum(1.0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid schedule_free_momentum: 1.0 (must be in (0, 1), or None for off)
"""

from __future__ import annotations

import math
from typing import Any

from vsgd_bayes.hyperparameters.checks import is_real_number

__all__ = ["WEIGHT_LR_POWER", "check_schedule_free_momentum", "averaging_weight"]

#: The power of the largest rate so far in the averaging weight w_t (the paper's default).
WEIGHT_LR_POWER = 2.0

_REQUIREMENT = "in (0, 1), or None for off"


def check_schedule_free_momentum(value: Any) -> None:
    """Raise ``ValueError`` naming the argument and the value unless it is None or a real in
    (0, 1) (beta = 0 would make x unrecoverable from y and z, beta = 1 never moves y)."""
    if value is None:
        return
    ok = is_real_number(value) and math.isfinite(float(value)) and 0.0 < float(value) < 1.0
    if not ok:
        raise ValueError(f"Invalid schedule_free_momentum: {value!r} (must be {_REQUIREMENT})")


def averaging_weight(lr_max: float, weight_sum: float) -> tuple[float, float]:
    """(c_{t+1}, the new sum of weights) for the largest rate so far ``lr_max`` and the sum of
    the weights before this step; c = 0 while every rate has been 0 (x stays where it is)."""
    weight = float(lr_max) ** WEIGHT_LR_POWER
    total = float(weight_sum) + weight
    return (weight / total if total > 0.0 else 0.0), total
