"""The optax front end: each method as a gradient transformation, a thin composition of its
closed-form rule (:mod:`vsgd_bayes.rules`), tested to be exactly the rule.

One module per method, the shared per-leaf plumbing in ``_common``:

* :mod:`vsgd_bayes.optax.vsgd`: :func:`scale_by_vsgd` and :func:`vsgd` (as :func:`optax.adamw`
  composes :func:`optax.scale_by_adam`).
* :mod:`vsgd_bayes.optax.kalman`: :func:`scale_by_kalman_vsgd` and :func:`kalman_vsgd`.
* :mod:`vsgd_bayes.optax.factored`: :func:`scale_by_factored_vsgd` and :func:`factored_vsgd`.
* :mod:`vsgd_bayes.optax.curvature`: :func:`scale_by_curvature_kalman_vsgd` and
  :func:`curvature_kalman_vsgd` (whose ``update`` needs ``params``: the model's input is the
  displacement of the point at which each gradient was taken).
* :mod:`vsgd_bayes.optax.kronecker`: :func:`scale_by_kronecker_vsgd` and :func:`kronecker_vsgd`
  (VSGD in the eigenbasis of each 2-D leaf's noise Kronecker factors).

Example:
    >>> import jax.numpy as jnp, optax
    >>> from vsgd_bayes.optax import vsgd
    >>> params = {"w": jnp.ones(3)}
    >>> optimizer = vsgd(learning_rate=0.01)
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update({"w": jnp.full(3, 0.5)}, state, params)
    >>> optax.apply_updates(params, updates)["w"].shape
    (3,)
"""

from __future__ import annotations

from vsgd_bayes.optax.curvature import (
    ScaleByCurvatureKalmanVSGDState,
    curvature_kalman_vsgd,
    scale_by_curvature_kalman_vsgd,
)
from vsgd_bayes.optax.factored import (
    ScaleByFactoredVSGDState,
    factored_vsgd,
    scale_by_factored_vsgd,
)
from vsgd_bayes.optax.kalman import ScaleByKalmanVSGDState, kalman_vsgd, scale_by_kalman_vsgd
from vsgd_bayes.optax.kronecker import (
    ScaleByKroneckerVSGDState,
    kronecker_vsgd,
    scale_by_kronecker_vsgd,
)
from vsgd_bayes.optax.vsgd import ScaleByVSGDState, scale_by_vsgd, vsgd

__all__ = [
    "ScaleByVSGDState",
    "scale_by_vsgd",
    "vsgd",
    "ScaleByKalmanVSGDState",
    "scale_by_kalman_vsgd",
    "kalman_vsgd",
    "ScaleByFactoredVSGDState",
    "scale_by_factored_vsgd",
    "factored_vsgd",
    "ScaleByCurvatureKalmanVSGDState",
    "scale_by_curvature_kalman_vsgd",
    "curvature_kalman_vsgd",
    "ScaleByKroneckerVSGDState",
    "scale_by_kronecker_vsgd",
    "kronecker_vsgd",
]
