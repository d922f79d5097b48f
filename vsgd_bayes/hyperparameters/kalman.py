"""Kalman VSGD's hyperparameters: defaults, validation and scalar schedules (no JAX, no torch).

Kalman VSGD (``derivations/11_kalman_vsgd.md``) keeps VSGD's model and filters g exactly given
the drift-to-noise ratio lambda = q / r, with recursive maximum likelihood of lambda and of the
innovation variance.
"""

from __future__ import annotations

import math
from typing import Any

# Imported for its registrations: lr, weight_decay and eps are checked as VSGD checks them.
import vsgd_bayes.hyperparameters.vsgd  # noqa: F401
from vsgd_bayes.hyperparameters.checks import check_hyperparameter, register_requirements

__all__ = [
    "DEFAULTS",
    "LOG_RATIO_BOUND",
    "STEP_VARIANCES",
    "validate_hyperparameters",
    "ratio_step_size",
    "averaging_weight",
]

#: Defaults of Kalman VSGD, chosen by ``benchmarks/kalman_identifiability.py --coordinates 100
#: --ratio-step-scale C --kappa K`` (seed 0; see derivations/11_kalman_vsgd.md):
#: ``initial_drift_to_noise`` lambda_0 = q / r at the start (scale-free: a ratio of variances);
#: ``ratio_step_scale`` c of the Robbins-Monro steps c / t on ln lambda (natural-gradient units):
#: c = 1 fails the q/r = 1e-4 target from lambda_0 = 1 (RMSE 1.28x the oracle's, starts' gains
#: 33% apart), c = 1.5, 2, 3 meet every target; c = 2 gave the smallest errors at 1e-4 (drift
#: 26-29%, RMSE 1.06-1.08x, starts within 0.4%); ``max_ratio_change`` the largest change of
#: ln lambda in one step; ``kappa`` the exponent of the averaging weight t^-kappa of the
#: innovation variance: 0.8 and 1 both meet the targets (noise variance within 2.2% and 0.9%),
#: 0.8 forgets the first steps faster, so that S can follow a noise level that falls during
#: training; ``eps`` in the parameter step's denominator: 0, because any eps > 0 breaks
#: the step's scale invariance for gradients not far above eps (measured: eps = 1e-8 with the
#: loss scaled by 1e-3 moves a digits-MLP trajectory visibly); the 0/0 of a coordinate whose
#: gradient has always been 0 is read as 0 by a floor at the dtype's smallest normal number.
DEFAULTS: dict[str, Any] = {
    "lr": 0.1,
    "initial_drift_to_noise": 1.0,
    "ratio_step_scale": 2.0,
    "max_ratio_change": 1.0,
    "kappa": 0.8,
    "weight_decay": 0.0,
    "eps": 0.0,
    "step_variance": "predictive",
}

#: The variance in the step's denominator mu / sqrt(mu^2 + v) [kalman-step-variance]
#: (derivations/11_kalman_vsgd.md, "Which variance belongs in the step"): ``"predictive"``
#: v = S, the predictive variance of the next mini-batch gradient (the choice of Adam's
#: denominator; the default since 0.3.0); ``"posterior"`` v = sigma^2 = S k (1 - k), the
#: posterior variance of g_t (VSGD's choice, the default until 0.3.0). Measured here: the
#: posterior's step marched a weight to 23 over 24,000 digits-vae steps (validation -ELBO
#: 457) where the predictive one ended at its best (23.87); under protocol v2 at budget 1 the
#: predictive step was better or level on all five tasks (benchmarks/RESULTS.md).
STEP_VARIANCES = ("posterior", "predictive")

#: The bound on ln lambda, kept within [-LOG_RATIO_BOUND, LOG_RATIO_BOUND] (lambda in
#: [1e-12, 1e12]), because a noiseless stream drives lambda to infinity (gain 1), and
#: e^(ln lambda) must stay finite in float32. At the bounds the gain is ~1e-6 and 1 - 1e-12.
LOG_RATIO_BOUND = 12.0 * math.log(10.0)

# lr, weight_decay and eps have VSGD's requirements, kappa Constant VSGD's (the same
# Robbins-Monro conditions on t^-kappa).
register_requirements(
    {
        "initial_drift_to_noise": (
            lambda v: math.exp(-LOG_RATIO_BOUND) <= v <= math.exp(LOG_RATIO_BOUND),
            "in [1e-12, 1e12]",
        ),
        "ratio_step_scale": (lambda v: v >= 0.0, ">= 0"),
        "max_ratio_change": (lambda v: v > 0.0, "> 0"),
        "kappa": (lambda v: 0.5 < v <= 1.0, "in (0.5, 1]"),
    },
    choices={"step_variance": STEP_VARIANCES},
)


def validate_hyperparameters(
    lr: Any = DEFAULTS["lr"],
    initial_drift_to_noise: Any = DEFAULTS["initial_drift_to_noise"],
    ratio_step_scale: Any = DEFAULTS["ratio_step_scale"],
    max_ratio_change: Any = DEFAULTS["max_ratio_change"],
    kappa: Any = DEFAULTS["kappa"],
    weight_decay: Any = DEFAULTS["weight_decay"],
    eps: Any = DEFAULTS["eps"],
    step_variance: Any = DEFAULTS["step_variance"],
) -> None:
    """Raise ``ValueError`` naming the argument and the value if a Kalman VSGD hyperparameter
    is invalid: ``lr``, ``weight_decay``, ``eps``, ``ratio_step_scale`` >= 0,
    ``max_ratio_change`` > 0, ``kappa`` in (0.5, 1], ``initial_drift_to_noise`` in
    [1e-12, 1e12], all finite real scalars; ``step_variance`` one of :data:`STEP_VARIANCES`.

    Example:
        >>> validate_hyperparameters(initial_drift_to_noise=0.0)
        Traceback (most recent call last):
        ...
        ValueError: Invalid initial_drift_to_noise: 0.0 (must be in [1e-12, 1e12])
    """
    values = dict(
        lr=lr,
        initial_drift_to_noise=initial_drift_to_noise,
        ratio_step_scale=ratio_step_scale,
        max_ratio_change=max_ratio_change,
        kappa=kappa,
        weight_decay=weight_decay,
        eps=eps,
        step_variance=step_variance,
    )
    for name, value in values.items():
        check_hyperparameter(name, value)


def ratio_step_size(step: Any, ratio_step_scale: float) -> Any:
    """Robbins-Monro step size c / t of ln lambda at the 1-based step ``step``."""
    return ratio_step_scale / step


def averaging_weight(step: Any, kappa: float) -> Any:
    """Weight t^-kappa of the newest squared innovation in the innovation variance (1 at t=1)."""
    return step ** (-kappa)
