"""Hyperparameters of every method: defaults, validation and scalar schedules.

Framework-free (imports neither JAX nor torch): the one place where every front end (the JAX
rules, optax, torch) takes its defaults, its checks and its scalar formulas from. One module
per method, the shared checking helpers in :mod:`~vsgd_bayes.hyperparameters.checks`:

* :mod:`~vsgd_bayes.hyperparameters.vsgd`: VSGD (the prior, both initialisations, rho_t).
* :mod:`~vsgd_bayes.hyperparameters.constant`: Constant VSGD.
* :mod:`~vsgd_bayes.hyperparameters.kalman`: Kalman VSGD.
* :mod:`~vsgd_bayes.hyperparameters.factored`: Factored VSGD (row x column precisions).
* :mod:`~vsgd_bayes.hyperparameters.curvature`: Curvature Kalman VSGD (step-following model).
* :mod:`~vsgd_bayes.hyperparameters.kronecker`: Kronecker VSGD (VSGD in the noise's Kronecker
  eigenbasis).

The names below are this package's flat interface (``from vsgd_bayes import hyperparameters as
hp``; ``hp.DEFAULTS``, ``hp.KALMAN_DEFAULTS``), kept stable; a method's own module names its
objects without the method's prefix (``hyperparameters.kalman.DEFAULTS``).
"""

from __future__ import annotations

from vsgd_bayes.hyperparameters import constant, curvature, factored, kalman, kronecker, vsgd
from vsgd_bayes.hyperparameters.checks import (
    CHOICES,
    REQUIREMENTS,
    check_hyperparameter,
    register_requirements,
)
from vsgd_bayes.hyperparameters.constant import DEFAULTS as CONSTANT_DEFAULTS
from vsgd_bayes.hyperparameters.constant import posterior_shape as constant_posterior_shape
from vsgd_bayes.hyperparameters.constant import (
    validate_hyperparameters as validate_constant_hyperparameters,
)
from vsgd_bayes.hyperparameters.curvature import CURVATURE_STEPS
from vsgd_bayes.hyperparameters.curvature import DEFAULTS as CURVATURE_DEFAULTS
from vsgd_bayes.hyperparameters.curvature import (
    validate_hyperparameters as validate_curvature_hyperparameters,
)
from vsgd_bayes.hyperparameters.factored import DEFAULTS as FACTORED_DEFAULTS
from vsgd_bayes.hyperparameters.factored import FACTORIZATIONS
from vsgd_bayes.hyperparameters.factored import (
    validate_hyperparameters as validate_factored_hyperparameters,
)
from vsgd_bayes.hyperparameters.kalman import DEFAULTS as KALMAN_DEFAULTS
from vsgd_bayes.hyperparameters.kalman import (
    LOG_RATIO_BOUND,
    averaging_weight,
    ratio_step_size,
)
from vsgd_bayes.hyperparameters.kalman import (
    validate_hyperparameters as validate_kalman_hyperparameters,
)
from vsgd_bayes.hyperparameters.kronecker import DEFAULTS as KRONECKER_DEFAULTS
from vsgd_bayes.hyperparameters.kronecker import (
    validate_hyperparameters as validate_kronecker_hyperparameters,
)
from vsgd_bayes.hyperparameters.vsgd import (
    DEFAULTS,
    INITS,
    REFERENCE_CONSTANT_DTYPE,
    REFERENCE_SHAPE_OFFSET,
    VSGDHyperparameters,
    authors_float32,
    posterior_shape,
    prior_rates,
    prior_shape,
    shape_before_step,
    step_sizes,
    validate_hyperparameters,
)

__all__ = [
    "vsgd",
    "constant",
    "kalman",
    "factored",
    "curvature",
    "kronecker",
    "CHOICES",
    "REQUIREMENTS",
    "check_hyperparameter",
    "register_requirements",
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
    "CONSTANT_DEFAULTS",
    "constant_posterior_shape",
    "validate_constant_hyperparameters",
    "KALMAN_DEFAULTS",
    "LOG_RATIO_BOUND",
    "validate_kalman_hyperparameters",
    "ratio_step_size",
    "averaging_weight",
    "FACTORED_DEFAULTS",
    "FACTORIZATIONS",
    "validate_factored_hyperparameters",
    "CURVATURE_DEFAULTS",
    "CURVATURE_STEPS",
    "validate_curvature_hyperparameters",
    "KRONECKER_DEFAULTS",
    "validate_kronecker_hyperparameters",
]
