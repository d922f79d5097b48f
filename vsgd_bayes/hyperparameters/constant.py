"""Constant VSGD's hyperparameters: defaults, validation and its shape (no JAX, no torch).

Constant VSGD (``derivations/07_constant_vsgd.md``) shares VSGD's model with one precision per
coordinate and a fixed ratio K_g between the drift and noise variances; its arguments are
VSGD's, with one Robbins-Monro exponent ``kappa`` instead of ``kappa1``/``kappa2``.
"""

from __future__ import annotations

from typing import Any

from vsgd_bayes.hyperparameters.checks import check_hyperparameter, register_requirements
from vsgd_bayes.hyperparameters.vsgd import DEFAULTS as VSGD_DEFAULTS
from vsgd_bayes.hyperparameters.vsgd import prior_shape

__all__ = ["DEFAULTS", "validate_hyperparameters", "posterior_shape"]

#: Defaults of Constant VSGD (derived here; no published code has them). It shares VSGD's
#: lr, prior, eps and init; ``kappa`` (its one Robbins-Monro exponent) is VSGD's kappa1. The
#: ratio differs: Constant VSGD's momentum is fixed at K_g / (1 + K_g), and K_g = 9 gives
#: Adam's and SGD-momentum's well-tried beta_1 = 0.9 (VSGD's prior ratio 30 would freeze a
#: heavier 0.968, whereas VSGD's own momentum adapts).
DEFAULTS: dict[str, Any] = {
    "lr": VSGD_DEFAULTS["lr"],
    "variance_ratio": 9.0,
    "prior_strength": VSGD_DEFAULTS["prior_strength"],
    "kappa": VSGD_DEFAULTS["kappa1"],
    "weight_decay": VSGD_DEFAULTS["weight_decay"],
    "eps": VSGD_DEFAULTS["eps"],
    "init": VSGD_DEFAULTS["init"],
}

# The Robbins-Monro conditions on rho_t = t^-kappa, as for VSGD's kappa1 and kappa2; every
# other argument has VSGD's requirement.
register_requirements({"kappa": (lambda v: 0.5 < v <= 1.0, "in (0.5, 1]")})


def validate_hyperparameters(**values: Any) -> None:
    """Raise ``ValueError`` naming the argument and the value if a Constant VSGD
    hyperparameter among ``values`` (names of :data:`DEFAULTS`) is invalid.

    Example:
        >>> validate_hyperparameters(kappa=0.5)
        Traceback (most recent call last):
        ...
        ValueError: Invalid kappa: 0.5 (must be in (0.5, 1])
    """
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected Constant VSGD hyperparameters {unknown}")
    for name, value in values.items():
        check_hyperparameter(name, value)


def posterior_shape(prior_strength: float, init: str = DEFAULTS["init"]) -> float:
    """Constant VSGD's shape a = a_0 + 1 after any step: its one precision sees two Gaussian
    factors per step (``derivations/07_constant_vsgd.md``)."""
    return prior_shape(prior_strength, init) + 1.0
