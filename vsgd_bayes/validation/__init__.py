"""``vsgd-bayes validate``: each method's closed-form updates checked against exact references.

One harness (:mod:`~vsgd_bayes.validation.harness`) and one module of checks per method:

* :mod:`~vsgd_bayes.validation.vsgd`: VSGD's updates against the one-step ELBO of the NumPyro
  model (stationarity, natural gradient, coordinate ascent, NumPyro's estimator and SVI).
* :mod:`~vsgd_bayes.validation.kalman`: Kalman VSGD's filter, sensitivities and online
  estimates against a dense Gaussian posterior, ``jax.jvp`` and offline maximum likelihood.
* :mod:`~vsgd_bayes.validation.factored`: Factored VSGD's row x column updates against its
  one-step ELBO and NumPyro (stationarity, natural gradient, ascent, gauge, SVI, VSGD limit).
* :mod:`~vsgd_bayes.validation.curvature`: Curvature Kalman VSGD's 2 x 2 filter, tangents and
  online estimates against a dense Gaussian posterior, ``jax.jvp``, offline maximum likelihood
  and streams simulated from its NumPyro model.
* :mod:`~vsgd_bayes.validation.kronecker`: Kronecker VSGD's local posterior against the dense
  Gaussian conditional of its model, its basis refresh against a dense rotation of its state,
  the recovery of U's and V's eigenvectors from a matrix-normal stream, and its VSGD limit.

Every check has a deliberately broken twin in the tests that it must report as failed.
:data:`METHODS` is the registry that ``vsgd-bayes validate`` runs: a new method adds its
module of checks and one row here. The names of the VSGD checks (``run_checks``, ``CHECKS``,
``Updates``, ...) are also importable from this package, as before the layout had one module
per method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from vsgd_bayes.validation import curvature, factored, kalman, kronecker, vsgd
from vsgd_bayes.validation.harness import CheckResult, checked_run_arguments, format_table
from vsgd_bayes.validation.vsgd import CHECKS, TOLERANCES, Updates, draw_cases, run_checks

__all__ = [
    "METHODS",
    "ValidatedMethod",
    "CheckResult",
    "checked_run_arguments",
    "format_table",
    "CHECKS",
    "TOLERANCES",
    "Updates",
    "draw_cases",
    "run_checks",
    "curvature",
    "factored",
    "kalman",
    "kronecker",
    "vsgd",
]


class ValidatedMethod(NamedTuple):
    """One row of :data:`METHODS`: how ``vsgd-bayes validate`` runs and reports a method."""

    title: str
    run_checks: Callable[..., list[CheckResult]]
    json_key: str


#: The methods whose checks ``vsgd-bayes validate`` runs, in order, keyed by name.
METHODS: dict[str, ValidatedMethod] = {
    "vsgd": ValidatedMethod(
        "VSGD: closed-form updates against the one-step ELBO", vsgd.run_checks, "checks"
    ),
    "kalman-vsgd": ValidatedMethod(
        "Kalman VSGD: filter, sensitivities and online estimates against exact references",
        kalman.run_checks,
        "kalman_checks",
    ),
    "factored-vsgd": ValidatedMethod(
        "Factored VSGD: row x column updates against the one-step ELBO and NumPyro",
        factored.run_checks,
        "factored_checks",
    ),
    "curvature-kalman-vsgd": ValidatedMethod(
        "Curvature Kalman VSGD: 2 x 2 filter, tangents and online estimates against exact "
        "references",
        curvature.run_checks,
        "curvature_checks",
    ),
    "kronecker-vsgd": ValidatedMethod(
        "Kronecker VSGD: local posterior, basis refresh, basis recovery and the VSGD limit",
        kronecker.run_checks,
        "kronecker_checks",
    ),
}
