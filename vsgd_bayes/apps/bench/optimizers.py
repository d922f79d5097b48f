"""The optimizers compared by the benchmarks: one registry, :data:`OPTIMIZERS`, one row each.

A row (:class:`OptimizerSpec`) gives the optimizer's label in tables and plots, a function
that builds it, and the learning-rate grid the protocol starts from. To add an optimizer,
append one row; every task, the CLI's ``--optimizers`` and the tables pick it up.

``VSGD``, ``ConstantVSGD`` and ``KalmanVSGD`` come from :mod:`vsgd_bayes.torch` (imported only
when built, so that the baselines run without it); the baselines are torch's ``AdamW`` and
``SGD`` with heavy-ball momentum 0.9. Every optimizer takes the same ``weight_decay``
(decoupled for the VSGD family and AdamW, L2 for SGD, as each is usually run).

Example:
    >>> import torch
    >>> from vsgd_bayes.apps.bench.optimizers import make_optimizer
    >>> layer = torch.nn.Linear(2, 1)
    >>> make_optimizer("adamw", layer.parameters(), lr=1e-3).__class__.__name__
    'AdamW'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "OPTIMIZERS",
    "LABELS",
    "OptimizerSpec",
    "log_grid",
    "make_optimizer",
    "check_optimizer_name",
]

#: Heavy-ball momentum of the SGD baseline (the usual value, and VSGD's K_g = 9 equivalent).
SGD_MOMENTUM = 0.9


def log_grid(lowest: float, points: int = 6, ratio: float = 10**0.5) -> tuple[float, ...]:
    """``points`` learning rates ``lowest * ratio**k``, rounded to 3 significant digits.

    The default, 6 points half a decade apart, spans 2.5 decades.
    """
    return tuple(float(f"{lowest * ratio**k:.3g}") for k in range(points))


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the benchmarks.

    Attributes:
        label: its name in tables and plots.
        build: ``build(params, lr, weight_decay, **options)`` returns the torch optimizer.
        lr_grid: the starting learning-rate grid (the protocol extends it at an edge).
    """

    label: str
    build: Callable[..., torch.optim.Optimizer]
    lr_grid: tuple[float, ...]


def _vsgd(
    params: Iterable[Any], lr: float, weight_decay: float, **options: Any
) -> torch.optim.Optimizer:
    # Imported lazily: the baselines must run even where vsgd_bayes.torch is unavailable.
    from vsgd_bayes.torch import VSGD

    return VSGD(params, lr=lr, weight_decay=weight_decay, **options)


def _constant_vsgd(
    params: Iterable[Any], lr: float, weight_decay: float, **options: Any
) -> torch.optim.Optimizer:
    from vsgd_bayes.torch import ConstantVSGD

    return ConstantVSGD(params, lr=lr, weight_decay=weight_decay, **options)


def _kalman_vsgd(
    params: Iterable[Any], lr: float, weight_decay: float, **options: Any
) -> torch.optim.Optimizer:
    from vsgd_bayes.torch import KalmanVSGD

    return KalmanVSGD(params, lr=lr, weight_decay=weight_decay, **options)


def _adamw(
    params: Iterable[Any], lr: float, weight_decay: float, **options: Any
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **options)


def _sgd(
    params: Iterable[Any], lr: float, weight_decay: float, **options: Any
) -> torch.optim.Optimizer:
    options.setdefault("momentum", SGD_MOMENTUM)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, **options)


#: The registry, in the order the tables list the optimizers. Grids: 6 points half a decade
#: apart (2.5 decades). AdamW's step is normalised (|step| <~ lr) and its usual rate is 1e-3;
#: VSGD's and ConstantVSGD's step mu / sqrt(mu^2 + sigma^2) shrinks where the gradient
#: posterior is uncertain, so their grids sit half a decade higher and reach the authors'
#: default 0.1; SGD's step scales with the gradient and its usual rate is 0.1 (momentum 0.9).
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "vsgd": OptimizerSpec("VSGD", _vsgd, log_grid(1e-3)),
    "constant-vsgd": OptimizerSpec("ConstantVSGD", _constant_vsgd, log_grid(1e-3)),
    # Kalman VSGD takes VSGD's step (|step| < lr) with another inference: VSGD's grid.
    "kalman-vsgd": OptimizerSpec("KalmanVSGD", _kalman_vsgd, log_grid(1e-3)),
    "adamw": OptimizerSpec("AdamW", _adamw, log_grid(1e-4)),
    "sgd": OptimizerSpec("SGD-momentum", _sgd, log_grid(1e-3)),
}

#: How the tables and plots name them.
LABELS: dict[str, str] = {name: spec.label for name, spec in OPTIMIZERS.items()}


def check_optimizer_name(name: Any) -> str:
    """Return ``name`` if it is one of :data:`OPTIMIZERS`, else raise ``ValueError``."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r} (must be one of {tuple(OPTIMIZERS)})")
    return name


def make_optimizer(
    name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0, **options: Any
) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` (one of :data:`OPTIMIZERS`) over ``params``.

    Args:
        name: a key of :data:`OPTIMIZERS`, e.g. ``"vsgd"`` or ``"adamw"``.
        params: parameters or parameter groups.
        lr: learning rate eta.
        weight_decay: lambda; decoupled for VSGD/ConstantVSGD/AdamW, L2 for SGD.
        **options: passed on to the optimizer (e.g. ``variance_ratio`` for VSGD).

    Returns:
        the ``torch.optim.Optimizer``.
    """
    check_optimizer_name(name)
    return OPTIMIZERS[name].build(params, lr=lr, weight_decay=weight_decay, **options)
