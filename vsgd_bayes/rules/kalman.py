r"""Kalman VSGD as pure JAX functions: exact filtering of the true gradient, recursive maximum
likelihood of its drift and noise. The single source of truth of the Kalman VSGD front ends.

The model is VSGD's sequential model, per coordinate a local-level model
g_t = g_{t-1} + N(0, q), g_hat_t = g_t + N(0, r) with unknown drift variance q and noise
variance r. Derived in ``derivations/11_kalman_vsgd.md`` (labels in brackets): with the
drift-to-noise ratio lambda = q / r held in the log, phi = ln lambda, the filter runs at its
steady-state gain k(lambda) (the exact posterior of g given (q, r) once the filter has
forgotten its start), and the innovation variance S and ln lambda are estimated by recursive
maximum likelihood (the prediction-error method) from the innovations v_t = g_hat_t - mu_{t-1}:

.. math::

    k &= \frac{2}{1 + \sqrt{1 + 4/\lambda}}, \quad 1 - k = k^2/\lambda
        && \text{[kalman-steady-gain]} \\
    v_t &= \hat g_t - \mu_{t-1}
        && \text{[kalman-innovation]} \\
    \phi_t &= \phi_{t-1} + \operatorname{clip}\!\Big(\frac{c}{t}\,
        \frac{(2-k)^2}{1-k}\,\frac{v_t s_{t-1}}{S_{t-1}}\Big)
        && \text{[kalman-ratio-step]} \\
    \mu_t &= \mu_{t-1} + k v_t, \quad s_t = (1-k)\,s_{t-1} + v_t
        && \text{[kalman-mean], [kalman-sensitivity]} \\
    S_t &= S_{t-1} + t^{-\kappa}(v_t^2 - S_{t-1})
        && \text{[kalman-innovation-variance]} \\
    q &= S k^2, \quad r = S(1-k), \quad \sigma_t^2 = S_t k (1-k)
        && \text{[kalman-variances]} \\
    \theta_t &= \theta_{t-1}(1 - \eta\lambda_{wd})
        - \eta\,\frac{\mu_t}{\max(\sqrt{\mu_t^2 + \sigma_t^2} + \epsilon, \text{tiny})}
        && \text{[parameter-step]}

By default (``step_variance="predictive"``, since 0.3.0) the step's sigma_t^2 is replaced by
S_t, the predictive variance of the next g_hat [kalman-step-variance] (the fix of the
long-run march); ``step_variance="posterior"`` keeps sigma_t^2.
Everything is per coordinate; s is the sensitivity d mu / d k. No quantity carries an absolute
variance scale at the start (S_1 = v_1^2), so with eps = 0 multiplying the gradients by any
c > 0 multiplies mu, s by c and S by c^2 and leaves the parameter step unchanged.

Example:
    >>> import jax.numpy as jnp
    >>> from vsgd_bayes import kalman_rule
    >>> params = jnp.array([1.0, -2.0])
    >>> state = kalman_rule.init_state(params)
    >>> params, state = kalman_rule.step(params, jnp.array([0.3, -0.1]), state)
    >>> state.step
    Array(1, dtype=int32)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules.vsgd import state_dtype

__all__ = [
    "KalmanVSGDState",
    "init_state",
    "steady_state_gain",
    "innovation",
    "ratio_score",
    "ratio_step",
    "filter_update",
    "innovation_variance_update",
    "variances",
    "normalized_direction",
    "step_variance_of",
    "parameter_step",
    "posterior_update",
    "step",
    "exact_filter",
]

_DEFAULTS = hp.KALMAN_DEFAULTS


class KalmanVSGDState(NamedTuple):
    """Per-parameter Kalman VSGD state (the torch optimizer's state keys are these names).

    Attributes:
        step: steps taken so far (int32 scalar), t - 1 before step t.
        gradient_mean: posterior mean mu of the true gradient.
        innovation_variance: S, the running estimate of E[v_t^2] (v_t the innovation).
        log_drift_to_noise: phi = ln lambda, lambda = q / r the drift-to-noise variance ratio.
        gain_sensitivity: s = d mu / d k, the derivative of the mean with respect to the gain.
    """

    step: jax.Array
    gradient_mean: jax.Array
    innovation_variance: jax.Array
    log_drift_to_noise: jax.Array
    gain_sensitivity: jax.Array


def init_state(
    params: jax.Array,
    initial_drift_to_noise: float = _DEFAULTS["initial_drift_to_noise"],
) -> KalmanVSGDState:
    """State before the first step: mu_0 = 0, S_0 = 0 (replaced by v_1^2 at step 1, whose
    averaging weight is 1), phi_0 = ln lambda_0, s_0 = 0."""
    dtype = state_dtype(params.dtype)
    return KalmanVSGDState(
        step=jnp.zeros([], jnp.int32),
        gradient_mean=jnp.zeros(params.shape, dtype),
        innovation_variance=jnp.zeros(params.shape, dtype),
        log_drift_to_noise=jnp.full(params.shape, math.log(initial_drift_to_noise), dtype),
        gain_sensitivity=jnp.zeros(params.shape, dtype),
    )


def steady_state_gain(log_drift_to_noise):
    """(k, 1 - k) at lambda = exp(phi) [kalman-steady-gain].

    k solves k^2 + lambda k - lambda = 0; 1 - k is computed as k^2 / lambda, without the
    cancellation of 1 - k near k = 1.
    """
    inverse_ratio = jnp.exp(-log_drift_to_noise)
    gain = 2.0 / (1.0 + jnp.sqrt(1.0 + 4.0 * inverse_ratio))
    return gain, gain * gain * inverse_ratio


def innovation(gradient, gradient_mean_prev):
    """v_t = g_hat_t - mu_{t-1} [kalman-innovation]."""
    return gradient - gradient_mean_prev


def ratio_score(innovation_t, gain_sensitivity_prev, innovation_variance_prev):
    """v_t s_{t-1} / S_{t-1}: the score of the innovation's log-density with respect to k,
    divided by nothing else (see [kalman-ratio-score]); 0 while S is 0 (then s is 0 too)."""
    tiny = jnp.finfo(innovation_variance_prev.dtype).tiny
    return innovation_t * gain_sensitivity_prev / jnp.maximum(innovation_variance_prev, tiny)


def ratio_step(log_drift_to_noise, score, gain, complement, step_size, max_ratio_change):
    """phi <- phi + clip(rho (2 - k)^2 / (1 - k) score) [kalman-ratio-step], kept in bounds.

    ``step_size`` rho = c / t; (2 - k)^2 / (1 - k) is the inverse expected Fisher information
    of phi times dk/dphi (a natural-gradient step). The change is clipped to
    +-``max_ratio_change`` and phi to +-:data:`vsgd_bayes.hyperparameters.LOG_RATIO_BOUND`.
    """
    change = step_size * (1.0 + complement) ** 2 / complement * score
    change = jnp.clip(change, -max_ratio_change, max_ratio_change)
    return jnp.clip(log_drift_to_noise + change, -hp.LOG_RATIO_BOUND, hp.LOG_RATIO_BOUND)


def filter_update(gradient_mean_prev, gain_sensitivity_prev, innovation_t, gain, complement):
    """(mu_t, s_t) = (mu_{t-1} + k v_t, (1 - k) s_{t-1} + v_t) [kalman-mean],
    [kalman-sensitivity]."""
    gradient_mean = gradient_mean_prev + gain * innovation_t
    gain_sensitivity = complement * gain_sensitivity_prev + innovation_t
    return gradient_mean, gain_sensitivity


def innovation_variance_update(innovation_variance_prev, innovation_t, weight):
    """S_t = S_{t-1} + w_t (v_t^2 - S_{t-1}), w_t = t^-kappa [kalman-innovation-variance]."""
    return innovation_variance_prev + weight * (innovation_t**2 - innovation_variance_prev)


def variances(innovation_variance, gain, complement):
    """(q, r, sigma^2) = (S k^2, S (1 - k), S k (1 - k)) [kalman-variances]: the drift and
    noise variances implied by (S, lambda) and the filter's posterior variance of g_t."""
    drift_variance = innovation_variance * gain * gain
    noise_variance = innovation_variance * complement
    return drift_variance, noise_variance, noise_variance * gain


def step_variance_of(innovation_variance, gain, complement,
                     step_variance=_DEFAULTS["step_variance"]):
    """The variance in the step's denominator [kalman-step-variance]: sigma^2 = S k (1 - k)
    (``"posterior"``, the posterior variance of g_t) or S (``"predictive"``, the predictive
    variance of the next g_hat: P + q + r at the steady state)."""
    if step_variance == "predictive":
        return innovation_variance
    return innovation_variance * complement * gain


def normalized_direction(gradient_mean, gradient_variance, eps):
    """clip(mu / max(sqrt(mu^2 + sigma^2) + eps, tiny), -1, 1): VSGD's direction, with 0/0
    read as 0.

    The denominator is 0 only when mu = sigma^2 = 0 (a coordinate whose gradient has always
    been exactly 0); the floor ``tiny`` (the dtype's smallest normal number) turns that 0/0 into
    0 without an eps, so the default eps = 0 keeps the step scale-invariant
    (eq:kalman-scale-invariance) for every gradient above the float range's floor.

    The clip changes nothing in exact arithmetic (``|mu| <= sqrt(mu^2 + sigma^2)``); it bounds the
    step by lr where mu^2 underflows while sigma^2 = 0 (float32, ``|mu|`` below ~1e-19 with S = 0:
    the unclipped quotient mu / tiny was a step of ~1e15 lr on a digits CNN).
    """
    tiny = jnp.finfo(gradient_mean.dtype).tiny
    denominator = jnp.sqrt(gradient_mean**2 + gradient_variance) + eps
    return jnp.clip(gradient_mean / jnp.maximum(denominator, tiny), -1.0, 1.0)


def parameter_step(params, gradient_mean, gradient_variance, lr, weight_decay, eps):
    """theta <- theta (1 - eta lambda_wd) - eta * direction [parameter-step], as
    :func:`vsgd_bayes.rules.vsgd.parameter_step` but with :func:`normalized_direction` above."""
    lr = jnp.asarray(lr, params.dtype)
    weight_decay = jnp.asarray(weight_decay, params.dtype)
    decayed = params * (1.0 - lr * weight_decay)
    return decayed - lr * normalized_direction(gradient_mean, gradient_variance, eps)


def posterior_update(
    gradient,
    state: KalmanVSGDState,
    *,
    ratio_step_scale=_DEFAULTS["ratio_step_scale"],
    max_ratio_change=_DEFAULTS["max_ratio_change"],
    kappa=_DEFAULTS["kappa"],
    step_variance=_DEFAULTS["step_variance"],
):
    """One step of the filter and of the estimator (no parameters involved).

    The gain is the one of phi_{t-1}; the score uses S_{t-1} and s_{t-1} (the prediction-error
    method evaluates the step's innovation under the estimate before the step).

    Returns:
        (step_variance, new_state): the variance of the step's denominator,
        :func:`step_variance_of` (S_t by default, sigma_t^2 = S_t k (1 - k) with
        ``step_variance="posterior"``), and the new state.
    """
    dtype = state.gradient_mean.dtype
    gradient = gradient.astype(dtype)
    step_count = state.step + 1
    t = step_count.astype(dtype)
    gain, complement = steady_state_gain(state.log_drift_to_noise)
    innovation_t = innovation(gradient, state.gradient_mean)
    score = ratio_score(innovation_t, state.gain_sensitivity, state.innovation_variance)
    log_drift_to_noise = ratio_step(
        state.log_drift_to_noise,
        score,
        gain,
        complement,
        hp.ratio_step_size(t, ratio_step_scale),
        max_ratio_change,
    )
    gradient_mean, gain_sensitivity = filter_update(
        state.gradient_mean, state.gain_sensitivity, innovation_t, gain, complement
    )
    innovation_variance = innovation_variance_update(
        state.innovation_variance, innovation_t, hp.averaging_weight(t, kappa)
    )
    gradient_variance = step_variance_of(innovation_variance, gain, complement, step_variance)
    new_state = KalmanVSGDState(
        step=step_count,
        gradient_mean=gradient_mean,
        innovation_variance=innovation_variance,
        log_drift_to_noise=log_drift_to_noise,
        gain_sensitivity=gain_sensitivity,
    )
    return gradient_variance, new_state


def step(
    params,
    gradient,
    state: KalmanVSGDState,
    *,
    lr=_DEFAULTS["lr"],
    ratio_step_scale=_DEFAULTS["ratio_step_scale"],
    max_ratio_change=_DEFAULTS["max_ratio_change"],
    kappa=_DEFAULTS["kappa"],
    weight_decay=_DEFAULTS["weight_decay"],
    eps=_DEFAULTS["eps"],
    step_variance=_DEFAULTS["step_variance"],
):
    """One Kalman VSGD step on one array: filter, estimator, then VSGD's parameter step.

    Hyperparameters are not validated here (jit-friendly); validate them once with
    :func:`vsgd_bayes.hyperparameters.validate_kalman_hyperparameters`.

    Returns:
        (new_params, new_state), the parameters in their own dtype.
    """
    gradient_variance, new_state = posterior_update(
        gradient,
        state,
        ratio_step_scale=ratio_step_scale,
        max_ratio_change=max_ratio_change,
        kappa=kappa,
        step_variance=step_variance,
    )
    dtype = new_state.gradient_mean.dtype
    new_params = parameter_step(
        params.astype(dtype), new_state.gradient_mean, gradient_variance, lr, weight_decay, eps
    )
    return new_params.astype(params.dtype), new_state


def posterior_variances(state: KalmanVSGDState):
    """(q, r, sigma^2) implied by a state: drift and noise variance estimates and the posterior
    variance of g at the state's S and the gain of its current lambda [kalman-variances]."""
    gain, complement = steady_state_gain(state.log_drift_to_noise)
    return variances(state.innovation_variance, gain, complement)


def exact_filter(observations, drift_variance, noise_variance, initial_mean=0.0,
                 initial_variance=0.0):
    """The textbook (time-varying) Kalman filter of the local-level model, given (q, r).

    g_0 ~ N(``initial_mean``, ``initial_variance``) (0 and 0: the sequential model's g_0 = 0);
    for t = 1..T [kalman-predict], [kalman-update]:
    P^- = P + q, k_t = P^- / (P^- + r), v_t = g_hat_t - mu_{t-1}, S_t = P^- + r,
    mu_t = mu_{t-1} + k_t v_t, P_t = (1 - k_t) P^-; and the exact log-likelihood
    ln p(g_hat_{1:T}) = sum_t ln N(v_t; 0, S_t) [kalman-likelihood].

    Args:
        observations: g_hat, shape (T, ...).
        drift_variance, noise_variance: q, r (broadcast against one observation).

    Returns:
        (means, variances, log_likelihood): mu_t and P_t of shape (T, ...), and the
        log-likelihood summed over t (shape of one observation).
    """
    observations = jnp.asarray(observations)
    shape = observations.shape[1:]
    mean0 = jnp.broadcast_to(jnp.asarray(initial_mean, observations.dtype), shape)
    variance0 = jnp.broadcast_to(jnp.asarray(initial_variance, observations.dtype), shape)

    def advance(carry, observation):
        mean, variance, log_likelihood = carry
        predicted = variance + drift_variance
        innovation_variance_t = predicted + noise_variance
        gain = predicted / innovation_variance_t
        innovation_t = observation - mean
        log_likelihood = log_likelihood - 0.5 * (
            jnp.log(2.0 * jnp.pi * innovation_variance_t)
            + innovation_t**2 / innovation_variance_t
        )
        mean = mean + gain * innovation_t
        variance = (1.0 - gain) * predicted
        return (mean, variance, log_likelihood), (mean, variance)

    start = (mean0, variance0, jnp.zeros(shape, observations.dtype))
    (_, _, log_likelihood), (means, variances_t) = jax.lax.scan(advance, start, observations)
    return means, variances_t, log_likelihood
