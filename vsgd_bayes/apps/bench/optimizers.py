"""The optimizers compared by the benchmarks, built by name.

``VSGD`` and ``ConstantVSGD`` come from :mod:`vsgd_bayes.torch` (imported only when asked for,
so that the baselines run without it); the baselines are torch's ``AdamW`` and ``SGD`` with
heavy-ball momentum 0.9. Every optimizer takes the same ``weight_decay`` (decoupled for VSGD,
ConstantVSGD and AdamW, L2 for SGD, as each is usually run).

Example:
    >>> import torch
    >>> from vsgd_bayes.apps.bench.optimizers import make_optimizer
    >>> layer = torch.nn.Linear(2, 1)
    >>> make_optimizer("adamw", layer.parameters(), lr=1e-3).__class__.__name__
    'AdamW'
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Tuple

import torch

__all__ = ["OPTIMIZERS", "LABELS", "make_optimizer", "check_optimizer_name"]

#: Names accepted on the command lines, in the order the tables list them.
OPTIMIZERS: Tuple[str, ...] = ("vsgd", "constant-vsgd", "adamw", "sgd")

#: How the tables and plots name them.
LABELS: Dict[str, str] = {
    "vsgd": "VSGD",
    "constant-vsgd": "ConstantVSGD",
    "adamw": "AdamW",
    "sgd": "SGD-momentum",
}

#: Heavy-ball momentum of the SGD baseline (the usual value, and VSGD's K_g = 9 equivalent).
SGD_MOMENTUM = 0.9


def check_optimizer_name(name: Any) -> str:
    """Return ``name`` if it is one of :data:`OPTIMIZERS`, else raise ``ValueError``."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r} (must be one of {OPTIMIZERS})")
    return name


def make_optimizer(
    name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0, **options: Any
) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` (one of :data:`OPTIMIZERS`) over ``params``.

    Args:
        name: ``"vsgd"``, ``"constant-vsgd"``, ``"adamw"`` or ``"sgd"``.
        params: parameters or parameter groups.
        lr: learning rate eta.
        weight_decay: lambda; decoupled for VSGD/ConstantVSGD/AdamW, L2 for SGD.
        **options: passed on to the optimizer (e.g. ``variance_ratio`` for VSGD).

    Returns:
        the ``torch.optim.Optimizer``.
    """
    check_optimizer_name(name)
    if name in ("vsgd", "constant-vsgd"):
        # Imported lazily: the baselines must run even where vsgd_bayes.torch is unavailable.
        from vsgd_bayes.torch import VSGD, ConstantVSGD

        cls = VSGD if name == "vsgd" else ConstantVSGD
        return cls(params, lr=lr, weight_decay=weight_decay, **options)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **options)
    options.setdefault("momentum", SGD_MOMENTUM)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, **options)
