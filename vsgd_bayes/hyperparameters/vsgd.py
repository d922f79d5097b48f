"""VSGD's hyperparameters: defaults, validation and scalar schedules.

Framework-free (it imports neither JAX nor torch): every front end of VSGD (the JAX rule, the
optax transformation, the torch optimizer) takes its defaults, its validation and its scalar
formulas from here. Constant VSGD and Kalman VSGD build on these
(:mod:`vsgd_bayes.hyperparameters.constant`, :mod:`vsgd_bayes.hyperparameters.kalman`).

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

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vsgd_bayes.hyperparameters.checks import (
    check_choice,
    check_hyperparameter,
    register_requirements,
)

__all__ = [
    "DEFAULTS",
    "INITS",
    "REFERENCE_SHAPE_OFFSET",
    "REFERENCE_CONSTANT_DTYPE",
    "VSGDHyperparameters",
    "validate_hyperparameters",
    "authors_float32",
    "prior_shape",
    "posterior_shape",
    "shape_before_step",
    "prior_rates",
    "step_sizes",
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

#: The two initialisations, the authors' code's ("reference", the default) and Algorithm 1's.
INITS: tuple[str, ...] = ("reference", "paper")

#: The authors' code uses the constant 2a = 2*gamma + 1 + 1e-4 for both precisions; in terms of
#: the shape itself that is an offset of 1e-4 / 2 on the prior shape (and hence on every
#: posterior shape). Kept so that trajectories match the published results. This is the
#: nominal value: the constants themselves are rounded to float32 (:func:`authors_float32`).
REFERENCE_SHAPE_OFFSET = 0.5e-4

#: The dtype in which the authors' code holds its constants 2a, 2 gamma and 2 K_g gamma
#: (``torch.tensor`` of a Python float: torch's default dtype), whatever the parameters' dtype.
REFERENCE_CONSTANT_DTYPE = np.float32


#: Requirement on each VSGD hyperparameter: (predicate on its float value, text for the error).
register_requirements(
    {
        "lr": (lambda v: v >= 0.0, ">= 0"),
        "variance_ratio": (lambda v: v > 0.0, "> 0"),
        # gamma = 0 makes the first step 0/0 (the authors' code does not check it).
        "prior_strength": (lambda v: v > 0.0, "> 0"),
        # Robbins-Monro conditions: sum rho_t = inf and sum rho_t^2 < inf for rho_t = t^-kappa.
        "kappa1": (lambda v: 0.5 < v <= 1.0, "in (0.5, 1]"),
        "kappa2": (lambda v: 0.5 < v <= 1.0, "in (0.5, 1]"),
        "weight_decay": (lambda v: v >= 0.0, ">= 0"),
        "eps": (lambda v: v >= 0.0, ">= 0"),
    },
    choices={"init": INITS},
)


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


def prior_shape(prior_strength: float, init: str = DEFAULTS["init"]) -> float:
    """Shape a_0 of both Gamma priors: gamma (paper) or about gamma + 5e-5 (reference).

    For ``"reference"``, a_0 = (2a - 1) / 2 with the authors' constant 2a = 2 gamma + 1 + 1e-4
    rounded to float32 (:func:`authors_float32`); both the subtraction and the halving are
    exact in float64 and float32. With gamma = 1e-8 that is 5.0008297e-5 rather than 5.001e-5.
    """
    # No float() here: JAX callers pass traced values (e.g. under optax.inject_hyperparams).
    check_choice("init", init)
    if init == "paper":
        return prior_strength
    twice_shape = authors_float32(2.0 * prior_strength + 1.0 + 2.0 * REFERENCE_SHAPE_OFFSET)
    return (twice_shape - 1.0) / 2.0


def posterior_shape(prior_strength: float, init: str = DEFAULTS["init"]) -> float:
    """Shape a = a_0 + 1/2 of both Gamma posteriors after any step (one observation each)."""
    return prior_shape(prior_strength, init) + 0.5


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
    check_choice("init", init)
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


