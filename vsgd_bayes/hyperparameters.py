"""Hyperparameters, defaults, validation and scalar schedules of VSGD.

This module is framework-free (it imports neither JAX nor torch) and is the one place where
every front end (the JAX rule, the optax transformation, the torch optimizers) takes its
defaults, its validation and its scalar formulas from.

Symbols (see ``derivations/README.md`` for the full notation table):

=====================  ==================  ===============================================
paper symbol           argument            meaning
=====================  ==================  ===============================================
eta                    ``lr``              learning rate
K_g                    ``variance_ratio``  prior ratio Var(g_hat - g) / Var(g_t - g_{t-1})
gamma                  ``prior_strength``  strength of the Gamma priors on the precisions
kappa_1, kappa_2       ``kappa1/kappa2``   Robbins-Monro exponents, rho_{t,i} = t^(-kappa_i)
lambda                 ``weight_decay``    decoupled (AdamW-style) weight decay
epsilon                ``eps``             added to the denominator of the parameter step
=====================  ==================  ===============================================

The two initialisations differ only in the prior shape a_0 (derived in
``derivations/05_first_step.md``):

* ``"paper"`` (Algorithm 1): a_0 = gamma, so the first step uses the prior variances
  b_0 / a_0 = (1, K_g).
* ``"reference"`` (the authors' published code, the default): the code stores 2a and adds
  1e-4 to it, which is the same algorithm with a_0 = gamma + 5e-5. With gamma = 1e-8 the first
  step then uses the variances gamma / (gamma + 5e-5) ~= 2.0e-4 and K_g times that.
  The authors' code holds its three constants 2a = 2 gamma + 1 + 1e-4, 2 gamma and
  2 K_g gamma as float32 tensors whatever the parameters' dtype; ``"reference"`` uses them
  rounded the same way (:func:`authors_float32`), in :func:`prior_shape` and
  :func:`prior_rates`, for every front end and every dtype. In float32, 2a - 1 is 1.000166e-4
  instead of 1.0002e-4, which makes the first-step variances 3.4e-5 larger (relative); see
  ``derivations/05_first_step.md``. ``"paper"`` uses the exact values.

In both cases the posterior shape after any step is a = a_0 + 1/2 (the closed-form target of
the shape never changes, so it is a constant and is not stored).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULTS",
    "CONSTANT_DEFAULTS",
    "INITS",
    "REFERENCE_SHAPE_OFFSET",
    "REFERENCE_CONSTANT_DTYPE",
    "VSGDHyperparameters",
    "REQUIREMENTS",
    "check_hyperparameter",
    "validate_hyperparameters",
    "authors_float32",
    "prior_shape",
    "posterior_shape",
    "constant_posterior_shape",
    "shape_before_step",
    "prior_rates",
    "step_sizes",
    "KALMAN_DEFAULTS",
    "LOG_RATIO_BOUND",
    "validate_kalman_hyperparameters",
    "ratio_step_size",
    "averaging_weight",
]

#: Defaults of the authors' implementation (``ghattg=30, ps=1e-8, tau1=0.81, tau2=0.9,
#: lr=0.1, weight_decay=0, eps=1e-8``), under this project's names.
DEFAULTS: dict[str, Any] = {
    "lr": 0.1,
    "variance_ratio": 30.0,
    "prior_strength": 1e-8,
    "kappa1": 0.81,
    "kappa2": 0.9,
    "weight_decay": 0.0,
    "eps": 1e-8,
    "init": "reference",
}

#: Defaults of Constant VSGD (derived here; no published code has them). It shares VSGD's
#: lr, prior, eps and init; ``kappa`` (its one Robbins-Monro exponent) is VSGD's kappa1. The
#: ratio differs: Constant VSGD's momentum is fixed at K_g / (1 + K_g), and K_g = 9 gives
#: Adam's and SGD-momentum's well-tried beta_1 = 0.9 (VSGD's prior ratio 30 would freeze a
#: heavier 0.968, whereas VSGD's own momentum adapts).
CONSTANT_DEFAULTS: dict[str, Any] = {
    "lr": DEFAULTS["lr"],
    "variance_ratio": 9.0,
    "prior_strength": DEFAULTS["prior_strength"],
    "kappa": DEFAULTS["kappa1"],
    "weight_decay": DEFAULTS["weight_decay"],
    "eps": DEFAULTS["eps"],
    "init": DEFAULTS["init"],
}

INITS: tuple[str, ...] = ("reference", "paper")

#: The authors' code uses the constant 2a = 2*gamma + 1 + 1e-4 for both precisions; in terms of
#: the shape itself that is an offset of 1e-4 / 2 on the prior shape (and hence on every
#: posterior shape). Kept so that trajectories match the published results. This is the
#: nominal value: the constants themselves are rounded to float32 (:func:`authors_float32`).
REFERENCE_SHAPE_OFFSET = 0.5e-4

#: The dtype in which the authors' code holds its constants 2a, 2 gamma and 2 K_g gamma
#: (``torch.tensor`` of a Python float: torch's default dtype), whatever the parameters' dtype.
REFERENCE_CONSTANT_DTYPE = np.float32


def _is_real_number(value: Any) -> bool:
    # Accepts Python and NumPy scalars as well as 0-dim tensors of either framework
    # (anything that converts to float) but rejects bools, strings and containers.
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        return False
    if isinstance(value, numbers.Real):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    shape = getattr(value, "shape", ())
    return tuple(shape) == ()


def _check(name: str, value: Any, ok: bool, requirement: str) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (must be {requirement})")


#: Requirement on each hyperparameter: (predicate on its float value, text for the error).
REQUIREMENTS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v >= 0.0, ">= 0"),
    "variance_ratio": (lambda v: v > 0.0, "> 0"),
    # gamma = 0 makes the first step 0/0 (the authors' code does not check it).
    "prior_strength": (lambda v: v > 0.0, "> 0"),
    # Robbins-Monro conditions: sum rho_t = inf and sum rho_t^2 < inf for rho_t = t^-kappa.
    "kappa1": (lambda v: 0.5 < v <= 1.0, "in (0.5, 1]"),
    "kappa2": (lambda v: 0.5 < v <= 1.0, "in (0.5, 1]"),
    "kappa": (lambda v: 0.5 < v <= 1.0, "in (0.5, 1]"),
    "weight_decay": (lambda v: v >= 0.0, ">= 0"),
    "eps": (lambda v: v >= 0.0, ">= 0"),
}


def check_hyperparameter(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` and ``value`` unless it meets its requirement.

    ``init`` must be one of :data:`INITS`; ``lr`` may also be a callable schedule (optax), which
    is not checked; every other value must be a finite real scalar meeting
    :data:`REQUIREMENTS`.
    """
    if name == "init":
        _check("init", value, isinstance(value, str) and value in INITS, f"one of {INITS}")
        return
    if name == "lr" and callable(value):
        return
    _check(name, value, _is_real_number(value), "a real scalar")
    _check(name, value, math.isfinite(float(value)), "finite")
    predicate, requirement = REQUIREMENTS[name]
    _check(name, value, predicate(float(value)), requirement)


def validate_hyperparameters(
    lr: Any = DEFAULTS["lr"],
    variance_ratio: Any = DEFAULTS["variance_ratio"],
    prior_strength: Any = DEFAULTS["prior_strength"],
    kappa1: Any = DEFAULTS["kappa1"],
    kappa2: Any = DEFAULTS["kappa2"],
    weight_decay: Any = DEFAULTS["weight_decay"],
    eps: Any = DEFAULTS["eps"],
    init: Any = DEFAULTS["init"],
) -> None:
    """Raise ``ValueError`` naming the argument and the value if any hyperparameter is invalid.

    Requirements: ``lr >= 0``, ``eps >= 0``, ``weight_decay >= 0``, ``prior_strength > 0``
    (gamma = 0 makes the first step 0/0), ``variance_ratio > 0``, ``kappa1`` and ``kappa2`` in
    (0.5, 1] (the Robbins-Monro conditions sum rho = inf, sum rho^2 < inf), all finite real
    scalars, and ``init`` one of ``"reference"``, ``"paper"``.

    Example:
        >>> validate_hyperparameters(kappa1=0.4)
        Traceback (most recent call last):
        ...
        ValueError: Invalid kappa1: 0.4 (must be in (0.5, 1])
    """
    values = dict(
        lr=lr,
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa1=kappa1,
        kappa2=kappa2,
        weight_decay=weight_decay,
        eps=eps,
        init=init,
    )
    for name, value in values.items():
        check_hyperparameter(name, value)


@dataclass(frozen=True)
class VSGDHyperparameters:
    """The VSGD hyperparameters, validated at construction.

    Example:
        >>> hp = VSGDHyperparameters(variance_ratio=9.0)
        >>> hp.posterior_shape  # about gamma + 1/2 + 5e-5 for the reference initialisation
        0.5000500082969666
    """

    lr: float = DEFAULTS["lr"]
    variance_ratio: float = DEFAULTS["variance_ratio"]
    prior_strength: float = DEFAULTS["prior_strength"]
    kappa1: float = DEFAULTS["kappa1"]
    kappa2: float = DEFAULTS["kappa2"]
    weight_decay: float = DEFAULTS["weight_decay"]
    eps: float = DEFAULTS["eps"]
    init: str = DEFAULTS["init"]

    def __post_init__(self) -> None:
        validate_hyperparameters(**asdict(self))

    @property
    def prior_shape(self) -> float:
        return prior_shape(self.prior_strength, self.init)

    @property
    def posterior_shape(self) -> float:
        return posterior_shape(self.prior_strength, self.init)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def authors_float32(value: Any) -> Any:
    """``value`` as the authors' code holds it: rounded to float32, in ``value``'s own type.

    A Python (or 0-dim torch) number gives a Python float; a NumPy or JAX array, traced ones
    included (e.g. under ``optax.inject_hyperparams``), keeps its type and dtype. This is the
    one place where the ``"reference"`` constants are rounded.

    Example:
        >>> authors_float32(1.0 + 1e-4) - 1.0  # 2a - 1 with gamma -> 0: not 1e-4
        0.00010001659393310547
    """
    if hasattr(value, "astype"):  # NumPy or JAX array or scalar
        return value.astype(REFERENCE_CONSTANT_DTYPE).astype(value.dtype)
    return float(REFERENCE_CONSTANT_DTYPE(float(value)))


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"Invalid init: {init!r} (must be one of {INITS})")


def prior_shape(prior_strength: float, init: str = DEFAULTS["init"]) -> float:
    """Shape a_0 of both Gamma priors: gamma (paper) or about gamma + 5e-5 (reference).

    For ``"reference"``, a_0 = (2a - 1) / 2 with the authors' constant 2a = 2 gamma + 1 + 1e-4
    rounded to float32 (:func:`authors_float32`); both the subtraction and the halving are
    exact in float64 and float32. With gamma = 1e-8 that is 5.0008297e-5 rather than 5.001e-5.
    """
    # No float() here: JAX callers pass traced values (e.g. under optax.inject_hyperparams).
    _check_init(init)
    if init == "paper":
        return prior_strength
    twice_shape = authors_float32(2.0 * prior_strength + 1.0 + 2.0 * REFERENCE_SHAPE_OFFSET)
    return (twice_shape - 1.0) / 2.0


def posterior_shape(prior_strength: float, init: str = DEFAULTS["init"]) -> float:
    """Shape a = a_0 + 1/2 of both Gamma posteriors after any step (one observation each)."""
    return prior_shape(prior_strength, init) + 0.5


def constant_posterior_shape(prior_strength: float, init: str = DEFAULTS["init"]) -> float:
    """Constant VSGD's shape a = a_0 + 1 after any step: its one precision sees two Gaussian
    factors per step (``derivations/07_constant_vsgd.md``)."""
    return prior_shape(prior_strength, init) + 1.0


def shape_before_step(step: int, prior_strength: float, init: str = DEFAULTS["init"]) -> float:
    """The shape that the variational rates are divided by at step ``step`` (counted from 1).

    At step 1 the rates are still the prior's, so their shape is a_0; afterwards it is a.
    """
    if step <= 1:
        return prior_shape(prior_strength, init)
    return posterior_shape(prior_strength, init)


def prior_rates(
    prior_strength: float, variance_ratio: float, init: str = DEFAULTS["init"]
) -> tuple[float, float]:
    """Rates (b_{0,g}, b_{0,g_hat}) = (gamma, K_g * gamma) of the two Gamma priors.

    They are the rates before step 1 and the constant terms of the global targets. For
    ``"paper"`` they are exact; for ``"reference"`` they are the authors' constants 2 gamma and
    2 K_g gamma rounded to float32 (:func:`authors_float32`), halved (exactly).
    """
    _check_init(init)
    if init == "paper":
        return prior_strength, variance_ratio * prior_strength
    return (
        authors_float32(2.0 * prior_strength) / 2.0,
        authors_float32(2.0 * variance_ratio * prior_strength) / 2.0,
    )


def step_sizes(step: Any, kappa1: float, kappa2: float) -> tuple[Any, Any]:
    """Robbins-Monro step sizes rho_{t,1} = t^(-kappa1), rho_{t,2} = t^(-kappa2).

    ``step`` is the 1-based step count; it may be a Python number or an array/tensor of any
    framework (the power is taken with ``**``). rho_1 = 1, so step 1 overwrites the rates.
    """
    return step ** (-kappa1), step ** (-kappa2)


# --------------------------------------------------------------------------------------------
# Kalman VSGD (derivations/11_kalman_vsgd.md): the same model, exact filtering of g given the
# drift-to-noise ratio lambda = q / r, and recursive maximum likelihood of lambda and of the
# innovation variance.
# --------------------------------------------------------------------------------------------

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
KALMAN_DEFAULTS: dict[str, Any] = {
    "lr": 0.1,
    "initial_drift_to_noise": 1.0,
    "ratio_step_scale": 2.0,
    "max_ratio_change": 1.0,
    "kappa": 0.8,
    "weight_decay": 0.0,
    "eps": 0.0,
}

#: ln lambda is kept within [-LOG_RATIO_BOUND, LOG_RATIO_BOUND], lambda in [1e-12, 1e12]: a
#: noiseless stream drives lambda to infinity (gain 1), and e^(ln lambda) must stay finite in
#: float32. At the bounds the gain is ~1e-6 and 1 - 1e-12.
LOG_RATIO_BOUND = 12.0 * math.log(10.0)

REQUIREMENTS.update(
    {
        "initial_drift_to_noise": (
            lambda v: math.exp(-LOG_RATIO_BOUND) <= v <= math.exp(LOG_RATIO_BOUND),
            "in [1e-12, 1e12]",
        ),
        "ratio_step_scale": (lambda v: v >= 0.0, ">= 0"),
        "max_ratio_change": (lambda v: v > 0.0, "> 0"),
    }
)


def validate_kalman_hyperparameters(
    lr: Any = KALMAN_DEFAULTS["lr"],
    initial_drift_to_noise: Any = KALMAN_DEFAULTS["initial_drift_to_noise"],
    ratio_step_scale: Any = KALMAN_DEFAULTS["ratio_step_scale"],
    max_ratio_change: Any = KALMAN_DEFAULTS["max_ratio_change"],
    kappa: Any = KALMAN_DEFAULTS["kappa"],
    weight_decay: Any = KALMAN_DEFAULTS["weight_decay"],
    eps: Any = KALMAN_DEFAULTS["eps"],
) -> None:
    """Raise ``ValueError`` naming the argument and the value if a Kalman VSGD hyperparameter
    is invalid: ``lr``, ``weight_decay``, ``eps``, ``ratio_step_scale`` >= 0,
    ``max_ratio_change`` > 0, ``kappa`` in (0.5, 1], ``initial_drift_to_noise`` in
    [1e-12, 1e12], all finite real scalars.

    Example:
        >>> validate_kalman_hyperparameters(initial_drift_to_noise=0.0)
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
    )
    for name, value in values.items():
        check_hyperparameter(name, value)


def ratio_step_size(step: Any, ratio_step_scale: float) -> Any:
    """Robbins-Monro step size c / t of ln lambda at the 1-based step ``step``."""
    return ratio_step_scale / step


def averaging_weight(step: Any, kappa: float) -> Any:
    """Weight t^-kappa of the newest squared innovation in the innovation variance (1 at t=1)."""
    return step ** (-kappa)
