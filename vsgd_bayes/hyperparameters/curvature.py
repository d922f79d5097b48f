"""Curvature Kalman VSGD's hyperparameters: defaults, validation (no JAX, no torch).

Curvature Kalman VSGD (``derivations/15_curvature_kalman_vsgd.md``) replaces VSGD's random
walk of the true gradient by the step-following model chosen on held-out data in
``derivations/14_gradient_models.md``: per coordinate g' = g + h (theta' - theta) + w_g,
h' = h + w_h, g_hat = g + v, filtered exactly (a 2 x 2 Kalman filter with the displacement of
the gradient point as known input), its two variance ratios learned by recursive maximum
likelihood and its noise variance by the concentrated maximum-likelihood average.
"""

from __future__ import annotations

import math
from typing import Any

# Imported for its registrations: lr, weight_decay, eps (VSGD's), initial_drift_to_noise,
# ratio_step_scale, max_ratio_change, kappa and step_variance (Kalman VSGD's) are checked as
# those methods check them.
import vsgd_bayes.hyperparameters.kalman  # noqa: F401
from vsgd_bayes.hyperparameters.checks import check_hyperparameter, register_requirements

__all__ = [
    "DEFAULTS",
    "CURVATURE_STEPS",
    "CURVATURE_LOG_RATIO_BOUND",
    "validate_hyperparameters",
    "initial_log_curvature_drift_to_noise",
]

#: Defaults of Curvature Kalman VSGD:
#: ``initial_drift_to_noise`` lambda_g,0 = q_g / r at the start, as Kalman VSGD's;
#: ``initial_curvature_drift_to_noise`` the curvature's drift q_h against the noise r, in
#: units of the first step's lr (lambda_h,0 = value / lr^2, because h has the units of a
#: gradient per unit of parameter, and lr is the only parameter scale the optimizer knows):
#: 1e-2, the middle of the grid on which the step-following model was fitted offline
#: (q_h mean(dtheta^2) / r in {1e-4, 1e-2, 1}, derivations/14_gradient_models.md);
#: ``ratio_step_scale`` c of the Gauss-Newton steps c / t on (ln lambda_g, ln lambda_h)
#: (recursive prediction-error method, Ljung 1977): c = 1, the textbook gain, left starts 4
#: decades apart 1.45x apart after 20,000 simulated steps; c = 2 brought them within 3%
#: (derivations/15_curvature_kalman_vsgd.md, "Identifiability");
#: ``max_ratio_change``, ``kappa``, ``eps``, ``step_variance`` as Kalman VSGD's;
#: ``curvature_step`` ``"none"``: VSGD's normalised step at rate lr; ``"trust_region"``: the
#: rate min(lr, abs(mu_g) / mu_h) where the curvature's posterior mean mu_h > 0 (the plug-in
#: Newton step mu_g / mu_h, bounded by the trust region lr), lr elsewhere.
DEFAULTS: dict[str, Any] = {
    "lr": 0.1,
    "initial_drift_to_noise": 1.0,
    "initial_curvature_drift_to_noise": 1e-2,
    "ratio_step_scale": 2.0,
    "max_ratio_change": 1.0,
    "kappa": 0.8,
    "weight_decay": 0.0,
    "eps": 0.0,
    "step_variance": "predictive",
    "curvature_step": "none",
}

#: How the curvature posterior enters the step (see :data:`DEFAULTS`).
CURVATURE_STEPS = ("none", "trust_region")

#: The bound +-55.3 on ln lambda_g and ln lambda_h (lambda in [1e-24, 1e24]), wider than
#: Kalman VSGD's 1e+-12 because lambda_h carries the units 1 / parameter^2 (1e-2 / lr^2 at the
#: start), and e^55.3 is still far inside float32's range.
CURVATURE_LOG_RATIO_BOUND = 24.0 * math.log(10.0)

register_requirements(
    {
        "initial_curvature_drift_to_noise": (
            lambda v: 1e-12 <= v <= 1e12,
            "in [1e-12, 1e12]",
        ),
        # the base rate that sets the unit of lambda_h,0 where the rate is a schedule (optax's
        # argument; torch reads a scheduler's ``initial_lr``): a rate, so lr's requirement
        "initial_learning_rate": (lambda v: v >= 0.0, ">= 0"),
    },
    choices={"curvature_step": CURVATURE_STEPS},
)


def initial_log_curvature_drift_to_noise(initial_curvature_drift_to_noise: Any, lr: Any) -> float:
    """ln lambda_h,0 = ln(``initial_curvature_drift_to_noise`` / lr^2): the curvature's drift in
    units of the first rate's squared step. A rate of 0 (an optimizer that does not move) has
    no step scale; the unit 1 is taken then.

    Example:
        >>> round(initial_log_curvature_drift_to_noise(1e-2, 0.1), 12) == 0.0
        True
    """
    scale = float(lr) if float(lr) > 0.0 else 1.0
    return math.log(float(initial_curvature_drift_to_noise)) - 2.0 * math.log(scale)


def validate_hyperparameters(
    lr: Any = DEFAULTS["lr"],
    initial_drift_to_noise: Any = DEFAULTS["initial_drift_to_noise"],
    initial_curvature_drift_to_noise: Any = DEFAULTS["initial_curvature_drift_to_noise"],
    ratio_step_scale: Any = DEFAULTS["ratio_step_scale"],
    max_ratio_change: Any = DEFAULTS["max_ratio_change"],
    kappa: Any = DEFAULTS["kappa"],
    weight_decay: Any = DEFAULTS["weight_decay"],
    eps: Any = DEFAULTS["eps"],
    step_variance: Any = DEFAULTS["step_variance"],
    curvature_step: Any = DEFAULTS["curvature_step"],
) -> None:
    """Raise ``ValueError`` naming the argument and the value if a hyperparameter is invalid:
    Kalman VSGD's requirements for the arguments it shares, ``initial_curvature_drift_to_noise``
    in [1e-12, 1e12], ``curvature_step`` one of :data:`CURVATURE_STEPS`.

    Example:
        >>> validate_hyperparameters(curvature_step="newton")
        Traceback (most recent call last):
        ...
        ValueError: Invalid curvature_step: 'newton' (must be one of ('none', 'trust_region'))
    """
    values = dict(
        lr=lr,
        initial_drift_to_noise=initial_drift_to_noise,
        initial_curvature_drift_to_noise=initial_curvature_drift_to_noise,
        ratio_step_scale=ratio_step_scale,
        max_ratio_change=max_ratio_change,
        kappa=kappa,
        weight_decay=weight_decay,
        eps=eps,
        step_variance=step_variance,
        curvature_step=curvature_step,
    )
    for name, value in values.items():
        check_hyperparameter(name, value)
