r"""Kalman VSGD as an optax gradient transformation.

:func:`scale_by_kalman_vsgd` turns gradients into the Kalman VSGD direction
mu_t / sqrt(mu_t^2 + sigma_t^2) by calling :func:`vsgd_bayes.rules.kalman.posterior_update` and
:func:`vsgd_bayes.rules.kalman.normalized_direction` on every leaf; :func:`kalman_vsgd` composes
it with decoupled weight decay and the learning rate exactly as :func:`vsgd_bayes.optax.vsgd`
does. No maths is re-implemented here (tested bitwise equal to
:func:`vsgd_bayes.rules.kalman.step`). The conventions are those of :mod:`vsgd_bayes.optax`:
per-leaf step counters, ``None`` gradients skip their leaf, complex leaves are real pairs on a
trailing axis of size 2, state dtype at least float32, validation when built.

References:
    Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep Neural
    Networks", 2024, https://arxiv.org/abs/2404.06549; Ljung, "Analysis of recursive
    stochastic algorithms", IEEE TAC 1977 (the recursive prediction-error method).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.optax._common import (
    as_real,
    check_unless_traced,
    from_real,
    place_like,
    transpose_states,
    unzip_updates,
)
from vsgd_bayes.rules import kalman as kalman_rule

__all__ = ["ScaleByKalmanVSGDState", "scale_by_kalman_vsgd", "kalman_vsgd"]

_DEFAULTS = hp.KALMAN_DEFAULTS


class ScaleByKalmanVSGDState(NamedTuple):
    """State of :func:`scale_by_kalman_vsgd`: pytrees with the structure of the parameters,
    one per field of :class:`vsgd_bayes.rules.kalman.KalmanVSGDState`."""

    step: Any
    gradient_mean: Any
    innovation_variance: Any
    log_drift_to_noise: Any
    gain_sensitivity: Any


def scale_by_kalman_vsgd(
    initial_drift_to_noise: float = _DEFAULTS["initial_drift_to_noise"],
    ratio_step_scale: float = _DEFAULTS["ratio_step_scale"],
    max_ratio_change: float = _DEFAULTS["max_ratio_change"],
    kappa: float = _DEFAULTS["kappa"],
    eps: float = _DEFAULTS["eps"],
    step_variance: str = _DEFAULTS["step_variance"],
) -> optax.GradientTransformation:
    r"""Rescale gradients by the Kalman VSGD posterior over the true gradient.

    Per coordinate: a steady-state Kalman filter of the true gradient at the drift-to-noise
    ratio lambda (gain k(lambda)), recursive maximum likelihood of ln lambda and of the
    innovation variance S, and the direction mu_t / sqrt(mu_t^2 + v_t) with v_t = S_t (the
    predictive variance of the next gradient, default) or S_t k (1 - k) (the posterior
    variance, ``step_variance="posterior"``; ``derivations/11_kalman_vsgd.md``).

    Args:
        initial_drift_to_noise: lambda_0 = q / r at the start, in [1e-12, 1e12].
        ratio_step_scale: c of the Robbins-Monro steps c / t on ln lambda (>= 0).
        max_ratio_change: largest change of ln lambda in one step (> 0).
        kappa: exponent of the innovation variance's averaging weight t^-kappa, in (0.5, 1].
        eps: added to the direction's denominator (>= 0; 0 keeps it scale-invariant).
        step_variance: ``"predictive"`` (S_t, default) or ``"posterior"`` (sigma_t^2) in the
            direction's denominator (:func:`vsgd_bayes.rules.kalman.step_variance_of`).

    Returns:
        An :class:`optax.GradientTransformation` with a :class:`ScaleByKalmanVSGDState`.

    Example:
        >>> import jax.numpy as jnp
        >>> transformation = scale_by_kalman_vsgd()
        >>> state = transformation.init({"w": jnp.zeros(2)})
        >>> updates, state = transformation.update({"w": jnp.array([0.3, -0.1])}, state)
        >>> state.step
        {'w': Array(1, dtype=int32)}
    """
    check_unless_traced(
        initial_drift_to_noise=initial_drift_to_noise,
        ratio_step_scale=ratio_step_scale,
        max_ratio_change=max_ratio_change,
        kappa=kappa,
        eps=eps,
        step_variance=step_variance,
    )

    def init_leaf(param):
        leaf = kalman_rule.init_state(as_real(jnp.asarray(param)), initial_drift_to_noise)
        return leaf._replace(**{
            name: place_like(getattr(leaf, name), param)
            for name in kalman_rule.KalmanVSGDState._fields[1:]
        })

    def init_fn(params):
        return transpose_states(
            jax.tree.map(init_leaf, params),
            jax.tree.structure(params),
            kalman_rule.KalmanVSGDState,
            ScaleByKalmanVSGDState,
        )

    def update_leaf(gradient, *fields):
        leaf_state = kalman_rule.KalmanVSGDState(*fields)
        if gradient is None:  # no gradient for this leaf: skip it, like torch's grad None
            return None, leaf_state
        gradient_variance, leaf_state = kalman_rule.posterior_update(
            as_real(gradient),
            leaf_state,
            ratio_step_scale=ratio_step_scale,
            max_ratio_change=max_ratio_change,
            kappa=kappa,
            step_variance=step_variance,
        )
        direction = kalman_rule.normalized_direction(
            leaf_state.gradient_mean, gradient_variance, eps
        )
        return from_real(direction, gradient.dtype), leaf_state

    def update_fn(updates, state, params=None):
        del params  # the direction does not depend on the parameters
        pairs = jax.tree.map(update_leaf, updates, *state, is_leaf=lambda x: x is None)
        return unzip_updates(
            pairs, updates, kalman_rule.KalmanVSGDState, ScaleByKalmanVSGDState
        )

    return optax.GradientTransformation(init_fn, update_fn)


def kalman_vsgd(
    learning_rate: optax.ScalarOrSchedule = _DEFAULTS["lr"],
    initial_drift_to_noise: float = _DEFAULTS["initial_drift_to_noise"],
    ratio_step_scale: float = _DEFAULTS["ratio_step_scale"],
    max_ratio_change: float = _DEFAULTS["max_ratio_change"],
    kappa: float = _DEFAULTS["kappa"],
    eps: float = _DEFAULTS["eps"],
    weight_decay: float = _DEFAULTS["weight_decay"],
    mask: Any | Callable[[optax.Params], Any] | None = None,
    step_variance: str = _DEFAULTS["step_variance"],
) -> optax.GradientTransformation:
    r"""Kalman VSGD with decoupled weight decay:
    ``chain(scale_by_kalman_vsgd(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, as :func:`vsgd_bayes.optax.vsgd`.

    .. math::

        \theta_t = \theta_{t-1} - \eta_t\,(u_t + \lambda_{wd}\,\theta_{t-1}),\qquad
        u_t = \mu_t / \sqrt{\mu_t^2 + \sigma_t^2}

    With ``weight_decay=0`` the result is bitwise equal to :func:`vsgd_bayes.rules.kalman.step`.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> loss = lambda params: jnp.sum((params["w"] - 3.0) ** 2)
        >>> optimizer = kalman_vsgd(learning_rate=0.1)
        >>> params = {"w": jnp.zeros(2)}
        >>> state = optimizer.init(params)
        >>> for _ in range(500):
        ...     updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(jnp.allclose(params["w"], 3.0, atol=0.1))
        True
    """
    check_unless_traced(lr=learning_rate, weight_decay=weight_decay)
    return optax.chain(
        scale_by_kalman_vsgd(
            initial_drift_to_noise=initial_drift_to_noise,
            ratio_step_scale=ratio_step_scale,
            max_ratio_change=max_ratio_change,
            kappa=kappa,
            eps=eps,
            step_variance=step_variance,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
