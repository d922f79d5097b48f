"""Schedule-Free averaging around any optimizer of the family (the skeleton's option
``schedule_free_momentum``; the formulas in :mod:`vsgd_bayes.hyperparameters.schedule_free`).

The parameters hold y_t in train mode (where gradients are taken) and x_t in eval mode; the
state ``schedule_free_z`` holds z_t, and x is recovered from y and z (x = (y - (1 - beta) z) /
beta), so the option costs one tensor per parameter, as Schedule-Free AdamW's. A step of the
optimizer's own path moves y by Delta_t; ``average_`` turns that into the three updates
of the module above. The arithmetic is in the state dtype (at least float32). Each function
works on the local tensors (DTensor shards) and on complex tensors as real pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vsgd_bayes.hyperparameters.schedule_free import averaging_weight
from vsgd_bayes.torch._common import as_float, as_real, local_tensors, state_dtype

__all__ = ["Z", "is_on", "in_train_mode", "start_", "average_", "to_eval_", "to_train_"]

#: The state key of z_t.
Z = "schedule_free_z"


def is_on(group: dict[str, Any]) -> bool:
    return group.get("schedule_free_momentum") is not None


def in_train_mode(group: dict[str, Any]) -> bool:
    return group.get("train_mode", True)


def _real(tensors: list[Tensor]) -> list[Tensor]:
    return as_real(local_tensors(tensors))


def _average_of(y: Tensor, z: Tensor, beta: float) -> Tensor:
    """x = (y - (1 - beta) z) / beta [schedule-free-eval], a new tensor."""
    return (y - (1.0 - beta) * z) / beta


def _gradient_point_(x: Tensor, z: Tensor, beta: float) -> Tensor:
    """x <- beta x + (1 - beta) z = y [schedule-free-y], in place; returns x."""
    return x.mul_(beta).add_(z, alpha=1.0 - beta)


def start_(params: list[Tensor], states: list[dict[str, Any]]) -> list[Tensor]:
    """Before the path's step: y_t (a copy, in the state dtype) of every parameter, and z_0 =
    y_0 created for a parameter at its first step."""
    ys = []
    for param, state in zip(params, states):
        y = param.detach().to(dtype=state_dtype(param.dtype), copy=True)
        if Z not in state:
            state[Z] = y.clone()
        ys.append(y)
    return ys


def average_(params: list[Tensor], ys: list[Tensor], states: list[dict[str, Any]],
             group: dict[str, Any]) -> None:
    """After the path's step (the parameters hold y_t + Delta_t): z_{t+1} = z_t + Delta_t
    [schedule-free-z], x_{t+1} = (1 - c) x_t + c z_{t+1} [schedule-free-x] with x_t from
    [schedule-free-eval], and the parameters set to y_{t+1} = beta x_{t+1} + (1 - beta) z_{t+1}
    [schedule-free-y]; the group's largest rate and sum of weights advance."""
    beta = float(group["schedule_free_momentum"])
    lr_max = max(float(group.get("schedule_free_lr_max", 0.0)), as_float(group["lr"]))
    weight, total = averaging_weight(lr_max, group.get("schedule_free_weight_sum", 0.0))
    zs = [state[Z] for state in states]
    for param, y, z in zip(_real(params), _real(ys), _real(zs)):
        x = _average_of(y, z, beta)  # x_t
        z.add_(param.to(z.dtype) - y)  # z_{t+1} = z_t + Delta_t
        x.lerp_(z, weight)  # x_{t+1}
        param.copy_(_gradient_point_(x, z, beta))  # y_{t+1}
    group["schedule_free_lr_max"] = lr_max
    group["schedule_free_weight_sum"] = total


def _switch_(group: dict[str, Any], state: dict, to_eval: bool) -> None:
    beta = float(group["schedule_free_momentum"])
    params = [p for p in group["params"] if Z in state.get(p, {})]
    zs = [state[p][Z] for p in params]
    for param, z in zip(_real(params), _real(zs)):
        value = param.to(z.dtype, copy=True)
        param.copy_(_average_of(value, z, beta) if to_eval else _gradient_point_(value, z, beta))
    group["train_mode"] = not to_eval


@torch.no_grad()
def to_eval_(groups: list[dict[str, Any]], state: dict) -> None:
    """Parameters of the Schedule-Free groups in train mode from y to x (others untouched)."""
    for group in groups:
        if is_on(group) and in_train_mode(group):
            _switch_(group, state, to_eval=True)


@torch.no_grad()
def to_train_(groups: list[dict[str, Any]], state: dict) -> None:
    """Parameters of the Schedule-Free groups in eval mode from x back to y."""
    for group in groups:
        if is_on(group) and not in_train_mode(group):
            _switch_(group, state, to_eval=False)
