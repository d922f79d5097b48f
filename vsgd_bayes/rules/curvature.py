r"""Curvature Kalman VSGD as pure JAX functions: the step-following model of the true gradient,
filtered exactly, its variances learned online. The single source of truth of its front ends.

The model (``vsgd_bayes.models.curvature``, chosen on held-out data in
``derivations/14_gradient_models.md``, derived in ``derivations/15_curvature_kalman_vsgd.md``,
labels in brackets) is, per coordinate, with the displacement Delta_t = theta_(t) - theta_(t-1)
of the point at which the mini-batch gradient is taken as a known input:

.. math::

    g_t = g_{t-1} + h_{t-1}\Delta_t + w_g,\quad h_t = h_{t-1} + w_h,\quad
    \hat g_t = g_t + v,\qquad w_g \sim N(0, \lambda_g r),\ w_h \sim N(0, \lambda_h r),
    \ v \sim N(0, r)

with g_0 = h_0 = 0 known. Every covariance is kept in units of the noise variance r
(P = Cov / r), so that the filter's covariance recursion does not depend on r:

.. math::

    m^- &= (m_g + m_h\Delta,\ m_h),\quad
    P^-_{gg} = P_{gg} + 2\Delta P_{gh} + \Delta^2 P_{hh} + \lambda_g,\
    P^-_{gh} = P_{gh} + \Delta P_{hh},\ P^-_{hh} = P_{hh} + \lambda_h
        && \text{[curvature-predict]} \\
    v_t &= \hat g_t - m^-_g,\quad \tilde S_t = P^-_{gg} + 1
        && \text{[curvature-innovation]} \\
    K &= (P^-_{gg}, P^-_{gh}) / \tilde S,\quad m = m^- + K v,\quad
    P_{gg} = K_g,\ P_{gh} = K_h,\ P_{hh} = P^-_{hh} - K_h P^-_{gh}
        && \text{[curvature-update]} \\
    r_t &= r_{t-1} + t^{-\kappa}(v_t^2/\tilde S_t - r_{t-1})
        && \text{[curvature-noise-variance]}

(r_t is the running form of the maximum-likelihood r given the ratios, the mean of
v^2 / S~). The ratios phi = (ln lambda_g, ln lambda_h) follow the recursive prediction-error
method with a diagonal Gauss-Newton metric: the tangents d(m, P)/d phi_j are propagated with
the filter [curvature-sensitivity], the score (the mean part of the innovation's
log-density ln N(v_t; 0, r_t S~_t): r is concentrated out) and its information are

.. math::

    u_{j,t} &= \frac{v_t\,\dot m^-_{g,j}}{r_t \tilde S_t},\qquad
    J_{j,t} = \frac{(\dot m^-_{g,j})^2}{r_t\tilde S_t}
        && \text{[curvature-ratio-score]} \\
    R_{j,t} &= R_{j,t-1} + t^{-\kappa}(J_{j,t} - R_{j,t-1}),\quad
    \phi_j \leftarrow \phi_j + \operatorname{clip}_{\pm\Delta_\phi}\!\Big(\frac{c}{t}
        \frac{u_{j,t}}{R_{j,t}}\Big)
        && \text{[curvature-ratio-step]}

and the step is VSGD's normalised direction with the predictive variance of the next
mini-batch gradient, V = r (P_gg + lambda_g + 1) [curvature-step-variance] (the variance
Kalman VSGD's long-run fix chose; ``step_variance="posterior"``: r P_gg), at the rate lr or,
with ``curvature_step="trust_region"``, min(lr, abs(m_g) / m_h) where m_h > 0
[curvature-trust-region].

Nothing carries an absolute gradient scale: multiplying every g_hat by c > 0 multiplies m_g,
m_h, their tangents by c and r by c^2, and leaves P, phi, R and (with eps = 0) the step
unchanged.

Example:
    >>> import jax.numpy as jnp
    >>> from vsgd_bayes.rules import curvature
    >>> params = jnp.array([1.0, -2.0])
    >>> state = curvature.init_state(params, lr=0.1)
    >>> params, state = curvature.step(params, jnp.array([0.3, -0.1]), state, lr=0.1)
    >>> state.step
    Array(1, dtype=int32)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules.kalman import normalized_direction
from vsgd_bayes.rules.vsgd import state_dtype

__all__ = [
    "CurvatureKalmanVSGDState",
    "RATIOS",
    "MOMENTS",
    "Moments",
    "init_state",
    "ratios_of",
    "predict",
    "innovation",
    "filter_update",
    "noise_variance_update",
    "predict_sensitivities",
    "update_sensitivities",
    "ratio_score",
    "information_update",
    "ratio_step",
    "step_variance_of",
    "rate_of",
    "parameter_step",
    "posterior_update",
    "step",
    "exact_filter",
]

_DEFAULTS = hp.CURVATURE_DEFAULTS

#: The order of the rows of ``ratio_sensitivities``: d/d ln lambda_g, d/d ln lambda_h.
RATIOS = ("drift", "curvature_drift")
#: The order of the moments in each row of ``ratio_sensitivities``.
MOMENTS = ("gradient_mean", "curvature_mean", "gradient_variance", "cross_covariance",
           "curvature_variance")


class Moments(NamedTuple):
    """The filter's moments of (g, h), covariances in units of r (or their tangents)."""

    gradient_mean: jax.Array
    curvature_mean: jax.Array
    gradient_variance: jax.Array
    cross_covariance: jax.Array
    curvature_variance: jax.Array


class CurvatureKalmanVSGDState(NamedTuple):
    """Per-parameter state (the torch optimizer's state keys are these names).

    Attributes:
        step: steps taken so far (int32 scalar), t - 1 before step t.
        gradient_mean, curvature_mean: posterior means m_g, m_h of g_t and h_t.
        gradient_variance, cross_covariance, curvature_variance: P_gg, P_gh, P_hh, the
            posterior covariance of (g_t, h_t) in units of r.
        noise_variance: r, the running maximum-likelihood estimate of the noise variance.
        log_drift_to_noise: phi_g = ln lambda_g, lambda_g = q_g / r.
        log_curvature_drift_to_noise: phi_h = ln lambda_h, lambda_h = q_h / r (units of
            1 / parameter^2).
        ratio_sensitivities: shape ``(2, 5) + param.shape``: d(moment)/d phi_j, rows
            :data:`RATIOS`, columns :data:`MOMENTS`.
        ratio_information: shape ``(2,) + param.shape``: R_j, the running Gauss-Newton information
            of phi_j.
        previous_point: the parameters at which the previous mini-batch gradient was taken
            (the start, before the first step), so that Delta_t is what really moved.
    """

    step: jax.Array
    gradient_mean: jax.Array
    curvature_mean: jax.Array
    gradient_variance: jax.Array
    cross_covariance: jax.Array
    curvature_variance: jax.Array
    noise_variance: jax.Array
    log_drift_to_noise: jax.Array
    log_curvature_drift_to_noise: jax.Array
    ratio_sensitivities: jax.Array
    ratio_information: jax.Array
    previous_point: jax.Array


def init_state(
    params: jax.Array,
    lr: float = _DEFAULTS["lr"],
    initial_drift_to_noise: float = _DEFAULTS["initial_drift_to_noise"],
    initial_curvature_drift_to_noise: float = _DEFAULTS["initial_curvature_drift_to_noise"],
) -> CurvatureKalmanVSGDState:
    """State before the first step: g_0 = h_0 = 0 known (P = 0, tangents 0), r_0 = R_0 = 0
    (replaced at step 1, whose averaging weight is 1), phi_g = ln lambda_g,0, phi_h =
    ln(``initial_curvature_drift_to_noise`` / lr^2) (lr = 0 counts as 1: see
    :func:`vsgd_bayes.hyperparameters.curvature.initial_log_curvature_drift_to_noise`), the
    previous point = ``params``."""
    dtype = state_dtype(params.dtype)
    zeros = jnp.zeros(params.shape, dtype)
    log_curvature = hp.curvature.initial_log_curvature_drift_to_noise(
        initial_curvature_drift_to_noise, lr
    )
    return CurvatureKalmanVSGDState(
        step=jnp.zeros([], jnp.int32),
        gradient_mean=zeros,
        curvature_mean=zeros,
        gradient_variance=zeros,
        cross_covariance=zeros,
        curvature_variance=zeros,
        noise_variance=zeros,
        log_drift_to_noise=jnp.full(params.shape, math.log(initial_drift_to_noise), dtype),
        log_curvature_drift_to_noise=jnp.full(params.shape, log_curvature, dtype),
        ratio_sensitivities=jnp.zeros((2, 5) + params.shape, dtype),
        ratio_information=jnp.zeros((2,) + params.shape, dtype),
        previous_point=params.astype(dtype),
    )


def ratios_of(state: CurvatureKalmanVSGDState):
    """(lambda_g, lambda_h) = exp(phi)."""
    return jnp.exp(state.log_drift_to_noise), jnp.exp(state.log_curvature_drift_to_noise)


def moments_of(state: CurvatureKalmanVSGDState) -> Moments:
    """The filter's moments held in a state."""
    return Moments(state.gradient_mean, state.curvature_mean, state.gradient_variance,
                   state.cross_covariance, state.curvature_variance)


def predict(moments: Moments, displacement, drift_to_noise, curvature_drift_to_noise) -> Moments:
    """(m^-, P^-) of (g_t, h_t) given g_hat_(1:t-1) [curvature-predict]: the transition
    [[1, Delta], [0, 1]] and the drift diag(lambda_g, lambda_h) (units of r)."""
    g, h, p_gg, p_gh, p_hh = moments
    return Moments(
        gradient_mean=g + h * displacement,
        curvature_mean=h,
        gradient_variance=p_gg + 2.0 * displacement * p_gh + displacement**2 * p_hh
        + drift_to_noise,
        cross_covariance=p_gh + displacement * p_hh,
        curvature_variance=p_hh + curvature_drift_to_noise,
    )


def innovation(gradient, predicted: Moments):
    """(v_t, S~_t) = (g_hat_t - m^-_g, P^-_gg + 1) [curvature-innovation]; S~ r is the
    variance of v_t."""
    return gradient - predicted.gradient_mean, predicted.gradient_variance + 1.0


def filter_update(predicted: Moments, innovation_t, relative_innovation_variance) -> Moments:
    """(m_t, P_t) [curvature-update]: gains K = P^-[:, g] / S~; P_gg = K_g and P_gh = K_h
    exactly (P^-_gg (1 - K_g) = P^-_gg / S~); P_hh = P^-_hh - K_h P^-_gh, floored at 0 against
    the rounding of the subtraction in float32."""
    gain_gradient = predicted.gradient_variance / relative_innovation_variance
    gain_curvature = predicted.cross_covariance / relative_innovation_variance
    curvature_variance = predicted.curvature_variance - gain_curvature * predicted.cross_covariance
    return Moments(
        gradient_mean=predicted.gradient_mean + gain_gradient * innovation_t,
        curvature_mean=predicted.curvature_mean + gain_curvature * innovation_t,
        gradient_variance=gain_gradient,
        cross_covariance=gain_curvature,
        curvature_variance=jnp.maximum(curvature_variance, 0.0),
    )


def noise_variance_update(noise_variance_prev, innovation_t, relative_innovation_variance,
                          weight):
    """r_t = r_(t-1) + w_t (v_t^2 / S~_t - r_(t-1)), w_t = t^-kappa
    [curvature-noise-variance]."""
    return noise_variance_prev + weight * (
        innovation_t**2 / relative_innovation_variance - noise_variance_prev
    )


def predict_sensitivities(tangents: Moments, displacement, drift_to_noise,
                          curvature_drift_to_noise) -> Moments:
    """Tangents of [curvature-predict] along phi_g (rows 0) and phi_h (rows 1)
    [curvature-sensitivity]: the predict map is linear in the moments, and d lambda_j / d phi_j
    = lambda_j adds to P^-_gg (j = g) or P^-_hh (j = h). Each field has a leading axis of 2."""
    # The predict map is linear, so its tangent is the same map applied to the tangents, with
    # the sources d lambda_j / d phi_j in place of the drift ratios.
    source_gg = jnp.stack([drift_to_noise, jnp.zeros_like(drift_to_noise)])
    source_hh = jnp.stack([jnp.zeros_like(curvature_drift_to_noise), curvature_drift_to_noise])
    return predict(tangents, displacement, source_gg, source_hh)


def update_sensitivities(predicted_tangents: Moments, predicted: Moments, innovation_t,
                         relative_innovation_variance) -> Moments:
    """Tangents of [curvature-update] [curvature-sensitivity], with dv = -dm^-_g and
    dS~ = dP^-_gg:

    dK_g = dP^-_gg / S~^2 (because S~ - P^-_gg = 1), dK_h = (dP^-_gh - K_h dP^-_gg) / S~,
    dm_g = (1 - K_g) dm^-_g + dK_g v, dm_h = dm^-_h - K_h dm^-_g + dK_h v,
    dP_gg = dK_g, dP_gh = dK_h, dP_hh = dP^-_hh - dK_h P^-_gh - K_h dP^-_gh
    (0 where the floor of P_hh is active)."""
    s = relative_innovation_variance
    gain_gradient = predicted.gradient_variance / s
    gain_curvature = predicted.cross_covariance / s
    d_gain_gradient = predicted_tangents.gradient_variance / (s * s)
    d_gain_curvature = (
        predicted_tangents.cross_covariance - gain_curvature * predicted_tangents.gradient_variance
    ) / s
    d_curvature_variance = (
        predicted_tangents.curvature_variance
        - d_gain_curvature * predicted.cross_covariance
        - gain_curvature * predicted_tangents.cross_covariance
    )
    floored = predicted.curvature_variance - gain_curvature * predicted.cross_covariance < 0.0
    return Moments(
        gradient_mean=(1.0 - gain_gradient) * predicted_tangents.gradient_mean
        + d_gain_gradient * innovation_t,
        curvature_mean=predicted_tangents.curvature_mean
        - gain_curvature * predicted_tangents.gradient_mean
        + d_gain_curvature * innovation_t,
        gradient_variance=d_gain_gradient,
        cross_covariance=d_gain_curvature,
        curvature_variance=jnp.where(floored, 0.0, d_curvature_variance),
    )


def ratio_score(predicted_tangents: Moments, innovation_t, relative_innovation_variance,
                noise_variance):
    """(score, information) along phi_j [curvature-ratio-score], rows j = g, h:
    score_j = v dm^-_g,j / (r S~) (the innovation's correlation with the prediction's tangent)
    and J_j = (dm^-_g,j)^2 / (r S~), with r at its estimate r_t; the quotients by r S~ floored
    at the dtype's tiny (a gradient that has always been 0 has v = r = 0).

    This is the mean part of d ln N(v_t; 0, r S~_t) / d phi_j only: the variance part
    (v^2 / (r S~) - 1) dP^-_gg,j / (2 S~) is dropped, because r is estimated at its own maximum
    likelihood and, where S~ is nearly constant, that part is collinear with r's score and
    carries no information on phi once r is concentrated out, while its information
    (dP^-_gg,j / S~)^2 / 2 swamped the metric (derivations/15_curvature_kalman_vsgd.md,
    "The estimating equation"). The mean part has expectation 0 at the true ratios (v_t is
    the innovation, dm^-_g,j is known before g_hat_t), so its root is consistent.
    """
    s = relative_innovation_variance
    tiny = jnp.finfo(s.dtype).tiny
    scaled = jnp.maximum(noise_variance * s, tiny)
    mean_tangent = predicted_tangents.gradient_mean
    return innovation_t * mean_tangent / scaled, mean_tangent**2 / scaled


def information_update(information_prev, information_t, weight):
    """R_t = R_(t-1) + w_t (J_t - R_(t-1)) [curvature-ratio-step]."""
    return information_prev + weight * (information_t - information_prev)


def ratio_step(log_ratios, score, information, step_size, max_ratio_change):
    """phi_j + clip(rho score_j / max(R_j, tiny)) [curvature-ratio-step], rho = c / t, kept
    within +-:data:`~vsgd_bayes.hyperparameters.curvature.CURVATURE_LOG_RATIO_BOUND`. R_j
    includes this step's J_j, so R_j = 0 only where score_j = 0 too."""
    tiny = jnp.finfo(information.dtype).tiny
    change = step_size * score / jnp.maximum(information, tiny)
    change = jnp.clip(change, -max_ratio_change, max_ratio_change)
    bound = hp.curvature.CURVATURE_LOG_RATIO_BOUND
    return jnp.clip(log_ratios + change, -bound, bound)


def step_variance_of(noise_variance, gradient_variance, drift_to_noise,
                     step_variance=_DEFAULTS["step_variance"]):
    """The variance in the step's denominator [curvature-step-variance]: ``"predictive"``
    r (P_gg + lambda_g + 1), the predictive variance of the next g_hat at zero displacement;
    ``"posterior"`` r P_gg, the posterior variance of g_t."""
    if step_variance == "predictive":
        return noise_variance * (gradient_variance + drift_to_noise + 1.0)
    return noise_variance * gradient_variance


def rate_of(gradient_mean, curvature_mean, lr, curvature_step=_DEFAULTS["curvature_step"]):
    """The step's rate [curvature-trust-region]: lr (``"none"``), or min(lr, abs(m_g) / m_h) where
    m_h > 0 and lr where m_h <= 0 (``"trust_region"``: the plug-in Newton step's length,
    within a trust region of radius lr)."""
    lr = jnp.asarray(lr, gradient_mean.dtype)
    if curvature_step == "none":
        return lr
    tiny = jnp.finfo(gradient_mean.dtype).tiny
    newton = jnp.abs(gradient_mean) / jnp.maximum(curvature_mean, tiny)
    return jnp.where(curvature_mean > 0.0, jnp.minimum(lr, newton), lr)


def parameter_step(params, gradient_mean, gradient_variance, rate, lr, weight_decay, eps):
    """theta <- theta (1 - lr lambda_wd) - rate * direction [parameter-step], the direction of
    :func:`vsgd_bayes.rules.kalman.normalized_direction`."""
    lr = jnp.asarray(lr, params.dtype)
    weight_decay = jnp.asarray(weight_decay, params.dtype)
    decayed = params * (1.0 - lr * weight_decay)
    return decayed - rate * normalized_direction(gradient_mean, gradient_variance, eps)


def posterior_update(
    gradient,
    point,
    state: CurvatureKalmanVSGDState,
    *,
    ratio_step_scale=_DEFAULTS["ratio_step_scale"],
    max_ratio_change=_DEFAULTS["max_ratio_change"],
    kappa=_DEFAULTS["kappa"],
    step_variance=_DEFAULTS["step_variance"],
):
    """One step of the filter and of the estimators, for g_hat_t taken at ``point``.

    The prediction uses the ratios before the step (the prediction-error method evaluates the
    innovation under the estimate before the step); r_t enters the score; the step variance
    uses the ratios after it.

    Returns:
        (step_variance, new_state).
    """
    dtype = state.gradient_mean.dtype
    gradient = gradient.astype(dtype)
    point = point.astype(dtype)
    step_count = state.step + 1
    t = step_count.astype(dtype)
    weight = hp.averaging_weight(t, kappa)
    displacement = point - state.previous_point
    drift_to_noise, curvature_drift_to_noise = ratios_of(state)
    predicted = predict(moments_of(state), displacement, drift_to_noise,
                        curvature_drift_to_noise)
    innovation_t, relative_variance = innovation(gradient, predicted)
    noise_variance = noise_variance_update(state.noise_variance, innovation_t,
                                           relative_variance, weight)
    tangents = Moments(*[state.ratio_sensitivities[:, i] for i in range(5)])
    predicted_tangents = predict_sensitivities(tangents, displacement, drift_to_noise,
                                               curvature_drift_to_noise)
    score, information_t = ratio_score(predicted_tangents, innovation_t, relative_variance,
                                       noise_variance)
    information = information_update(state.ratio_information, information_t, weight)
    log_ratios = ratio_step(
        jnp.stack([state.log_drift_to_noise, state.log_curvature_drift_to_noise]),
        score, information, hp.ratio_step_size(t, ratio_step_scale), max_ratio_change,
    )
    moments = filter_update(predicted, innovation_t, relative_variance)
    new_tangents = update_sensitivities(predicted_tangents, predicted, innovation_t,
                                        relative_variance)
    new_state = CurvatureKalmanVSGDState(
        step=step_count,
        gradient_mean=moments.gradient_mean,
        curvature_mean=moments.curvature_mean,
        gradient_variance=moments.gradient_variance,
        cross_covariance=moments.cross_covariance,
        curvature_variance=moments.curvature_variance,
        noise_variance=noise_variance,
        log_drift_to_noise=log_ratios[0],
        log_curvature_drift_to_noise=log_ratios[1],
        ratio_sensitivities=jnp.stack(list(new_tangents), axis=1),
        ratio_information=information,
        previous_point=point,
    )
    variance = step_variance_of(noise_variance, moments.gradient_variance,
                                jnp.exp(log_ratios[0]), step_variance)
    return variance, new_state


def step(
    params,
    gradient,
    state: CurvatureKalmanVSGDState,
    *,
    lr=_DEFAULTS["lr"],
    ratio_step_scale=_DEFAULTS["ratio_step_scale"],
    max_ratio_change=_DEFAULTS["max_ratio_change"],
    kappa=_DEFAULTS["kappa"],
    weight_decay=_DEFAULTS["weight_decay"],
    eps=_DEFAULTS["eps"],
    step_variance=_DEFAULTS["step_variance"],
    curvature_step=_DEFAULTS["curvature_step"],
):
    """One Curvature Kalman VSGD step on one array, g_hat taken at ``params``.

    Hyperparameters are not validated here (jit-friendly); validate them once with
    :func:`vsgd_bayes.hyperparameters.validate_curvature_hyperparameters`. (The two initial
    ratios enter only :func:`init_state`.)

    Returns:
        (new_params, new_state), the parameters in their own dtype.
    """
    variance, new_state = posterior_update(
        gradient, params, state, ratio_step_scale=ratio_step_scale,
        max_ratio_change=max_ratio_change, kappa=kappa, step_variance=step_variance,
    )
    dtype = new_state.gradient_mean.dtype
    rate = rate_of(new_state.gradient_mean, new_state.curvature_mean, lr, curvature_step)
    new_params = parameter_step(params.astype(dtype), new_state.gradient_mean, variance, rate,
                                lr, weight_decay, eps)
    return new_params.astype(params.dtype), new_state


def posterior_variances(state: CurvatureKalmanVSGDState):
    """(q_g, q_h, r, Var g_t, Var h_t) implied by a state, in the gradient's units:
    q_j = lambda_j r, the posterior variances r P_gg and r P_hh."""
    drift_to_noise, curvature_drift_to_noise = ratios_of(state)
    r = state.noise_variance
    return (drift_to_noise * r, curvature_drift_to_noise * r, r,
            r * state.gradient_variance, r * state.curvature_variance)


def exact_filter(observations, displacements, drift_variance, curvature_drift_variance,
                 noise_variance, initial_mean=(0.0, 0.0), initial_covariance=(0.0, 0.0, 0.0)):
    """The exact Kalman filter of the step-following model given (q_g, q_h, r), from
    (g_0, h_0) ~ N(``initial_mean``, [[c_gg, c_gh], [c_gh, c_hh]]) (``initial_covariance`` =
    (c_gg, c_gh, c_hh), absolute units), with the recursions above at lambda = q / r, and the
    exact log-likelihood ln p(g_hat_(1:T)) = sum_t ln N(v_t; 0, r S~_t)
    [curvature-likelihood].

    Args:
        observations: g_hat, shape (T, ...).
        displacements: Delta_t, shape (T, ...): the move of the point before observation t
            (``displacements[0]`` moves from the start to the first point).
        drift_variance, curvature_drift_variance, noise_variance: q_g, q_h, r (broadcast).

    Returns:
        (moments, log_likelihood): :class:`Moments` of (g_t, h_t) | g_hat_(1:t) with leading
        axis T, covariances in absolute units, and the log-likelihood (shape of one
        observation).
    """
    observations = jnp.asarray(observations)
    displacements = jnp.asarray(displacements, observations.dtype)
    shape = observations.shape[1:]
    r = jnp.broadcast_to(jnp.asarray(noise_variance, observations.dtype), shape)

    def full(value):
        return jnp.broadcast_to(jnp.asarray(value, observations.dtype), shape)

    start = Moments(full(initial_mean[0]), full(initial_mean[1]),
                    full(initial_covariance[0]) / r, full(initial_covariance[1]) / r,
                    full(initial_covariance[2]) / r)
    drift_to_noise = drift_variance / r
    curvature_drift_to_noise = curvature_drift_variance / r

    def advance(carry, inputs):
        moments, log_likelihood = carry
        observation, displacement = inputs
        predicted = predict(moments, displacement, drift_to_noise, curvature_drift_to_noise)
        innovation_t, relative_variance = innovation(observation, predicted)
        variance = r * relative_variance
        log_likelihood = log_likelihood - 0.5 * (
            jnp.log(2.0 * jnp.pi * variance) + innovation_t**2 / variance
        )
        moments = filter_update(predicted, innovation_t, relative_variance)
        absolute = Moments(moments.gradient_mean, moments.curvature_mean,
                           r * moments.gradient_variance, r * moments.cross_covariance,
                           r * moments.curvature_variance)
        return (moments, log_likelihood), absolute

    (_, log_likelihood), trajectory = jax.lax.scan(
        advance, (start, jnp.zeros(shape, observations.dtype)), (observations, displacements)
    )
    return trajectory, log_likelihood
