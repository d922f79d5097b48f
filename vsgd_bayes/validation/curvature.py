r"""Checks of Curvature Kalman VSGD's inference (``vsgd-bayes validate`` runs them after Kalman
VSGD's).

Five claims of ``derivations/15_curvature_kalman_vsgd.md`` are checked numerically, in float64,
on the model of :mod:`vsgd_bayes.models.curvature`:

1. ``exact_posterior``: :func:`vsgd_bayes.rules.curvature.exact_filter` (any start (g_0, h_0) ~
   N(m_0, C_0)) and the rule's own recursion (:func:`~vsgd_bayes.rules.curvature.posterior_update`
   with the ratio steps switched off, from g_0 = h_0 = 0 known) give the exact posterior mean
   and covariance of (g_t, h_t) given g_hat_(1:t) and the exact log-likelihood
   [curvature-likelihood], against a dense Gaussian computation: the joint of
   (g_(1:T), h_(1:T), g_hat_(1:T)) written as a linear map of the start and the drifts,
   conditioned by one solve per t. No recursion of the filter is used in the reference.
2. ``sensitivities``: the hand-written tangents d(m, P)/d ln lambda_j [curvature-sensitivity],
   propagated by :func:`~vsgd_bayes.rules.curvature.update_sensitivities` and carried in the
   rule's state, equal ``jax.jvp`` of the filter's moments; the summed ratio scores
   [curvature-ratio-score] equal ``jax.grad`` of the innovations' quadratic -1/2 sum v^2 /
   (r S~) at S~ held fixed (the mean part of the score the rule uses, by design).
3. ``online_ml``: on streams simulated from the NumPyro model, the online estimates (q_g, q_h,
   r) of the rule approach the offline maximum-likelihood estimate (L-BFGS on the exact
   likelihood over (ln q_g, ln q_h, ln r), started from moments of the data).
4. ``identifiability``: on the same kind of streams, the online estimates from starts four
   decades apart ((lambda_g,0, lambda_h,0 lr^2) = (1, 1e-2) and (1e-4, 1e-6)) agree within 5%,
   and the median over coordinates of each estimate is within 1.2x of the simulated value.
   Known failure, not checked here (derivation 15, "Identifiability"): from (1e2, 1e2) r
   comes out 0.001-0.01x the truth on most coordinates after 20,000 steps, a slow transient
   (L-BFGS from that start returns to the truth), not a second optimum.
5. ``oracle_rmse``: on the same kind of stream, the RMSE of the online filter's mean m_g
   against the simulated g, from both starts, is within 5% of the oracle filter's (the exact
   filter at the simulated variances): issue 19's target for the whole online inference.

Each check has a hook (:class:`CurvatureUpdates`) through which a test passes a deliberately
broken function, to show that the check then fails.

Example:
    >>> results = run_checks(seed=0, cases=4)  # doctest: +SKIP
    >>> all(result.passed for result in results)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from vsgd_bayes.models import curvature as curvature_model
from vsgd_bayes.rules import curvature as curvature_rule
from vsgd_bayes.validation.harness import CheckResult, checked_run_arguments

__all__ = [
    "CurvatureUpdates",
    "run_checks",
    "CHECKS",
    "TOLERANCES",
    "ONLINE_ML_BOUNDS",
    "dense_joint",
    "dense_filtering_posterior",
    "offline_maximum_likelihood",
    "simulated_displacements",
]

#: Tolerance of each check, with its reason.
TOLERANCES: dict[str, float] = {
    # Relative to the data scale (means), r (covariances) and |log-lik| + 1: two float64
    # evaluations of the same Gaussian conditionals (a 3T x 3T solve against a recursion)
    # agree to ~1e-12 at T = 20; a wrong gain or a dropped cross-covariance is off by O(1e-2)
    # or more.
    "exact_posterior": 1e-8,
    # Relative differences of hand-written and forward-mode derivatives: rounding only.
    "sensitivities": 1e-9,
    # Largest over the coordinates and the three variances of |ln(online / offline ML)| / bound,
    # bounds :data:`ONLINE_ML_BOUNDS`; the check passes at <= 1. The online estimate is a
    # stochastic approximation of the ML, not the ML; a wrong-sign ratio step drives the ratios
    # away from it (error > 2).
    "online_ml": 1.0,
    # Largest of (a) |ln(a / b)| between the two starts over coordinates and variances, against
    # ln 1.05, and (b) |ln(median estimate / truth)| against ln 1.2, reported as the largest
    # of (a) / ln 1.05 and (b) / ln 1.2: the check passes when both are within their bounds.
    "identifiability": 1.0,
    # RMSE(online m_g) / RMSE(oracle m_g) - 1 over the whole stream, the worse of the two
    # starts: issue 19's target, 5%. Measured with the defaults on seeds 0-4: 0.0027-0.0086.
    "oracle_rmse": 0.05,
}

#: Bounds on abs(ln(online / offline ML)) per coordinate after 20,000 steps, for (q_g, q_h, r).
#: Measured with the defaults on seeds 0-4 (8 coordinates each): at most 0.34, 0.13 and 0.040
#: (q_g is the least determined: its drift is a 1% share of the noise); the bounds are about
#: 1.5x those. The medians over coordinates are closer: offline / truth 0.94-1.08, online /
#: truth 0.91-1.04 (the identifiability check bounds the latter at 1.2x).
ONLINE_ML_BOUNDS = (0.5, 0.2, 0.06)

#: The names of the Curvature Kalman VSGD checks, in the order they run.
CHECKS = ("exact_posterior", "sensitivities", "online_ml", "identifiability", "oracle_rmse")

_STEPS_EXACT = 20
_STEPS_SENSITIVITY = 40
_STEPS_ONLINE = 20_000
_COORDINATES_ONLINE = 8
#: The simulated streams' ratios, in the optimizer's units: lambda_g = q_g / r and
#: lambda_h lr^2 = q_h lr^2 / r (the middle of the grid of derivation 14).
_DRIFT_TO_NOISE = 1e-2
_CURVATURE_DRIFT_TO_NOISE = 1e-2
_LR = 0.01
_STARTS = ((1.0, 1e-2), (1e-4, 1e-6))


class CurvatureUpdates(NamedTuple):
    """The functions under test (defaults: the rule's); a test hook for broken twins."""

    exact_filter: Callable = curvature_rule.exact_filter
    update_sensitivities: Callable = curvature_rule.update_sensitivities
    ratio_score: Callable = curvature_rule.ratio_score
    posterior_update: Callable = curvature_rule.posterior_update


def dense_joint(displacements, drift_variance, curvature_drift_variance, noise_variance,
                initial_mean=(0.0, 0.0), initial_covariance=(0.0, 0.0, 0.0)):
    """Mean and covariance of (x_1, ..., x_T, g_hat_1, ..., g_hat_T), x_t = (g_t, h_t), of one
    coordinate of the model, without any recursion of the filter (numpy, float64).

    x_t = Phi(t, 0) x_0 + sum_(s <= t) Phi(t, s) w_s with Phi(t, s) = F_t ... F_(s+1),
    F_t = [[1, Delta_t], [0, 1]], w_s ~ N(0, diag(q_g, q_h)) and x_0 ~ N(m_0, C_0)
    (``initial_covariance`` = (c_gg, c_gh, c_hh)); g_hat_t = g_t + v_t, v_t ~ N(0, r).

    Returns:
        (mean (3T,), covariance (3T, 3T)): the first 2T entries are x_(1:T) interleaved as
        (g_1, h_1, g_2, h_2, ...), the last T are g_hat_(1:T).
    """
    delta = np.asarray(displacements, float)
    steps = delta.shape[0]
    # Column blocks: x_0 (2), then w_1 .. w_T (2 each); row blocks: x_1 .. x_T.
    linear_map = np.zeros((2 * steps, 2 + 2 * steps))
    for t in range(steps):
        # Phi(t, s) for s = t, t - 1, ..., 0, built backwards: Phi(t, s - 1) = Phi(t, s) F_s.
        propagate = np.eye(2)
        for s in range(t, -1, -1):
            linear_map[2 * t:2 * t + 2, 2 + 2 * s:4 + 2 * s] = propagate
            propagate = propagate @ np.array([[1.0, delta[s]], [0.0, 1.0]])
        linear_map[2 * t:2 * t + 2, :2] = propagate
    c_gg, c_gh, c_hh = initial_covariance
    sources = np.zeros((2 + 2 * steps, 2 + 2 * steps))
    sources[:2, :2] = [[c_gg, c_gh], [c_gh, c_hh]]
    sources[2:, 2:] = np.diag(np.tile([drift_variance, curvature_drift_variance], steps))
    state_mean = linear_map[:, :2] @ np.asarray(initial_mean, float)
    state_covariance = linear_map @ sources @ linear_map.T
    select_g = np.zeros((steps, 2 * steps))
    select_g[np.arange(steps), 2 * np.arange(steps)] = 1.0
    joint = np.block([
        [state_covariance, state_covariance @ select_g.T],
        [select_g @ state_covariance,
         select_g @ state_covariance @ select_g.T + noise_variance * np.eye(steps)],
    ])
    return np.concatenate([state_mean, select_g @ state_mean]), joint


def dense_filtering_posterior(observations, displacements, drift_variance,
                              curvature_drift_variance, noise_variance,
                              initial_mean=(0.0, 0.0), initial_covariance=(0.0, 0.0, 0.0)):
    """Moments of (g_t, h_t) | g_hat_(1:t) and ln p(g_hat_(1:T)) for one coordinate: Gaussian
    conditionals of :func:`dense_joint` on the first t observations, one solve per t.

    Returns:
        (means (T, 2), covariances (T, 2, 2), log_likelihood).
    """
    g_hat = np.asarray(observations, float)
    steps = g_hat.shape[0]
    mean, covariance = dense_joint(displacements, drift_variance, curvature_drift_variance,
                                   noise_variance, initial_mean, initial_covariance)
    state_mean, observation_mean = mean[:2 * steps], mean[2 * steps:]
    observation_covariance = covariance[2 * steps:, 2 * steps:]
    cross = covariance[:2 * steps, 2 * steps:]  # Cov(x, g_hat)
    means, covariances = np.zeros((steps, 2)), np.zeros((steps, 2, 2))
    for t in range(steps):
        rows = slice(2 * t, 2 * t + 2)
        seen = slice(0, t + 1)
        weights = np.linalg.solve(observation_covariance[seen, seen], cross[rows, seen].T).T
        means[t] = state_mean[rows] + weights @ (g_hat[seen] - observation_mean[seen])
        covariances[t] = covariance[rows, rows] - weights @ cross[rows, seen].T
    centred = g_hat - observation_mean
    _, log_determinant = np.linalg.slogdet(observation_covariance)
    log_likelihood = -0.5 * (steps * math.log(2 * math.pi) + log_determinant
                             + centred @ np.linalg.solve(observation_covariance, centred))
    return means, covariances, float(log_likelihood)


@functools.lru_cache(maxsize=16)
def _rule_trajectory(posterior_update: Callable):
    """jit of: the rule's posterior_update over a stream with the ratio steps off (scale 0), at
    fixed log ratios (shape (2, n)), from g_0 = h_0 = 0 known at the origin; its states."""

    @jax.jit
    def run(observations, points, log_ratios):
        state = curvature_rule.init_state(jnp.zeros_like(points[0]), lr=1.0)
        state = state._replace(log_drift_to_noise=log_ratios[0],
                               log_curvature_drift_to_noise=log_ratios[1])

        def advance(state, inputs):
            gradient, point = inputs
            _, state = posterior_update(gradient, point, state, ratio_step_scale=0.0)
            return state, state

        _, states = jax.lax.scan(advance, state, (observations, points))
        return states

    return run


def _draw_problems(rng: np.random.Generator, steps: int, coordinates: int):
    """One random problem per coordinate: variances (q_g, q_h, r) each of shape (n,), the
    displacements and a stream simulated from the NumPyro model. r spans 6 decades, the
    parameter scale lr 2, lambda_g and lambda_h lr^2 4 each."""
    noise = 10.0 ** rng.uniform(-4, 2, coordinates)
    lr = 10.0 ** rng.uniform(-3, -1, coordinates)
    drift = 10.0 ** rng.uniform(-4, 0, coordinates) * noise
    curvature_drift = 10.0 ** rng.uniform(-4, 0, coordinates) * noise / lr**2
    displacements = lr * rng.normal(size=(steps, coordinates))
    key = jax.random.PRNGKey(int(rng.integers(2**31)))
    _, _, observations = curvature_model.simulate_gradient_stream(
        key, jnp.asarray(displacements), drift, curvature_drift, noise
    )
    return (drift, curvature_drift, noise), lr, displacements, np.asarray(observations)


def _check_exact_posterior(rng: np.random.Generator, cases: int, updates: CurvatureUpdates):
    (drift, curvature_drift, noise), lr, displacements, observations = _draw_problems(
        rng, _STEPS_EXACT, cases
    )
    # An arbitrary start for (a): means of the data's scale, correlated covariances.
    initial_mean = (rng.normal(size=cases) * np.sqrt(noise),
                    rng.normal(size=cases) * np.sqrt(noise) / lr)
    c_gg = 10.0 ** rng.uniform(-3, 1, cases) * noise
    c_hh = 10.0 ** rng.uniform(-3, 1, cases) * noise / lr**2
    initial_covariance = (c_gg, rng.uniform(-0.9, 0.9, cases) * np.sqrt(c_gg * c_hh), c_hh)
    # (a) the time-varying filter from an arbitrary start.
    trajectory, log_likelihood = jax.jit(updates.exact_filter)(
        jnp.asarray(observations), jnp.asarray(displacements), drift, curvature_drift, noise,
        initial_mean, initial_covariance,
    )
    # (b) the rule's recursion, ratios fixed at the truth, from g_0 = h_0 = 0 known.
    states = _rule_trajectory(updates.posterior_update)(
        jnp.asarray(observations), jnp.asarray(np.cumsum(displacements, axis=0)),
        jnp.log(jnp.stack([drift / noise, curvature_drift / noise])),
    )
    rule_trajectory = curvature_rule.Moments(
        states.gradient_mean, states.curvature_mean, states.gradient_variance,
        states.cross_covariance, states.curvature_variance,
    )
    worst = 0.0
    for i in range(cases):
        scale = float(np.max(np.abs(observations[:, i])))
        variances = (drift[i], curvature_drift[i], noise[i])
        start = ((initial_mean[0][i], initial_mean[1][i]),
                 tuple(c[i] for c in initial_covariance))
        means, covariances, dense_log_likelihood = dense_filtering_posterior(
            observations[:, i], displacements[:, i], *variances, *start
        )
        worst = max(
            worst,
            _moment_error(trajectory, i, 1.0, means, covariances, scale, noise[i], lr[i]),
            abs(float(log_likelihood[i]) - dense_log_likelihood)
            / (1.0 + abs(dense_log_likelihood)),
        )
        means, covariances, _ = dense_filtering_posterior(
            observations[:, i], displacements[:, i], *variances
        )
        worst = max(worst, _moment_error(rule_trajectory, i, noise[i], means, covariances,
                                         scale, noise[i], lr[i]))
    return CheckResult(
        "exact_posterior", cases, float(worst), TOLERANCES["exact_posterior"],
        "max error of means (/data scale), covariances (/r), log-lik (relative) of the exact "
        "filter and of the rule's recursion vs a dense Gaussian",
    )


def _moment_error(trajectory, coordinate, covariance_unit, means, covariances, scale, noise,
                  lr):
    """Worst scaled gap between a trajectory of Moments (at ``coordinate``) and dense
    moments; h and its covariances are compared in the units of g (times lr, the parameter
    scale)."""
    column = [np.asarray(field)[:, coordinate] for field in trajectory]
    gaps = [
        np.abs(column[0] - means[:, 0]) / scale,
        np.abs(column[1] - means[:, 1]) * lr / scale,
        np.abs(column[2] * covariance_unit - covariances[:, 0, 0]) / noise,
        np.abs(column[3] * covariance_unit - covariances[:, 0, 1]) * lr / noise,
        np.abs(column[4] * covariance_unit - covariances[:, 1, 1]) * lr**2 / noise,
    ]
    return float(max(np.max(gap) for gap in gaps))


@functools.lru_cache(maxsize=16)
def _tangent_filter(update_sensitivities: Callable, ratio_score: Callable):
    """jit of: the filter at fixed ratios exp(phi) (shape (2, n)) with the hand-written
    tangents and the summed scores, returning (moments, tangents, scores)."""

    @jax.jit
    def run(phi, displacements, observations, noise):
        n = observations.shape[1]
        drift, curvature_drift = jnp.exp(phi[0]), jnp.exp(phi[1])
        start = (curvature_rule.Moments(*[jnp.zeros(n)] * 5),
                 curvature_rule.Moments(*[jnp.zeros((2, n))] * 5), jnp.zeros((2, n)))

        def advance(carry, inputs):
            moments, tangents, scores = carry
            displacement, observation = inputs
            predicted = curvature_rule.predict(moments, displacement, drift, curvature_drift)
            predicted_tangents = curvature_rule.predict_sensitivities(
                tangents, displacement, drift, curvature_drift
            )
            v, s = curvature_rule.innovation(observation, predicted)
            score, _ = ratio_score(predicted_tangents, v, s, noise)
            tangents = update_sensitivities(predicted_tangents, predicted, v, s)
            return (curvature_rule.filter_update(predicted, v, s), tangents, scores + score), None

        carry, _ = jax.lax.scan(advance, start, (displacements, observations))
        return carry

    return run


def _filter_of_ratios(phi, displacements, observations, noise):
    """(the filter's moments after the stream, -1/2 sum_t v_t^2 / (r S~_t) with S~ held fixed)
    as functions of phi: what jax.jvp and jax.grad differentiate."""
    n = observations.shape[1]
    drift, curvature_drift = jnp.exp(phi[0]), jnp.exp(phi[1])

    def advance(carry, inputs):
        moments, quadratic = carry
        displacement, observation = inputs
        predicted = curvature_rule.predict(moments, displacement, drift, curvature_drift)
        v, s = curvature_rule.innovation(observation, predicted)
        quadratic = quadratic - 0.5 * jnp.sum(v**2 / (noise * jax.lax.stop_gradient(s)))
        return (curvature_rule.filter_update(predicted, v, s), quadratic), None

    start = (curvature_rule.Moments(*[jnp.zeros(n)] * 5), jnp.zeros(()))
    (moments, quadratic), _ = jax.lax.scan(advance, start, (displacements, observations))
    return moments, quadratic


@jax.jit
def _forward_references(phi, displacements, observations, noise):
    """jax.jvp of the moments along phi_g and phi_h of every coordinate at once (coordinates
    are independent), and jax.grad of the mean-part quadratic."""
    tangents = [
        jax.jvp(lambda p: _filter_of_ratios(p, displacements, observations, noise)[0],
                (phi,), (jnp.zeros_like(phi).at[j].set(1.0),))[1]
        for j in range(2)
    ]
    gradient = jax.grad(lambda p: _filter_of_ratios(p, displacements, observations, noise)[1])(
        phi
    )
    return tangents, gradient


def _check_sensitivities(rng: np.random.Generator, cases: int, updates: CurvatureUpdates):
    (drift, curvature_drift, noise), lr, displacements, observations = _draw_problems(
        rng, _STEPS_SENSITIVITY, cases
    )
    phi = jnp.log(jnp.stack([drift / noise, curvature_drift / noise]))
    displacements_j, observations_j = jnp.asarray(displacements), jnp.asarray(observations)
    noise_j = jnp.asarray(noise)
    _, tangents, scores = _tangent_filter(updates.update_sensitivities, updates.ratio_score)(
        phi, displacements_j, observations_j, noise_j
    )
    # The tangents the rule carries in its state, with the ratio steps off.
    states = _rule_trajectory(updates.posterior_update)(
        observations_j, jnp.cumsum(displacements_j, axis=0), phi
    )
    carried = states.ratio_sensitivities[-1]
    forward, gradient = _forward_references(phi, displacements_j, observations_j, noise_j)
    # Each moment's natural unit per coordinate (m_g: sqrt r, m_h: sqrt r / lr, P_gg: 1,
    # P_gh: 1 / lr, P_hh: 1 / lr^2, P in units of r), so that every coordinate counts.
    root = np.sqrt(noise)
    units = (root, root / lr, np.ones_like(lr), 1.0 / lr, 1.0 / lr**2)
    worst = 0.0
    for j in range(2):
        for i, (hand, auto) in enumerate(zip(tangents, forward[j])):
            scale = jnp.abs(auto) + units[i]
            worst = max(worst, float(jnp.max(jnp.abs(hand[j] - auto) / scale)),
                        float(jnp.max(jnp.abs(carried[j, i] - auto) / scale)))
    worst = max(worst, float(jnp.max(jnp.abs(scores - gradient) / (jnp.abs(gradient) + 1e-300))))
    return CheckResult(
        "sensitivities", cases, float(worst), TOLERANCES["sensitivities"],
        "max relative gap of d(m, P)/d ln lambda (propagated and carried in the state) vs "
        "jax.jvp, and of the summed scores vs jax.grad of the mean-part quadratic",
    )


def simulated_displacements(rng: np.random.Generator, steps: int, coordinates: int,
                            lr: float = _LR) -> np.ndarray:
    """Displacements of a normalised step at rate ``lr``: sign x lr x U(0.5, 1), the first 0
    (the first gradient is taken at the start)."""
    displacements = lr * rng.choice([-1.0, 1.0], size=(steps, coordinates)) * rng.uniform(
        0.5, 1.0, (steps, coordinates)
    )
    displacements[0] = 0.0
    return displacements


def _simulated_stream(rng: np.random.Generator, steps: int, coordinates: int):
    """(variances (q_g, q_h, r), displacements, true gradients g, observations g_hat) from
    the NumPyro model."""
    noise = 10.0 ** rng.uniform(-4, 2)
    variances = (_DRIFT_TO_NOISE * noise, _CURVATURE_DRIFT_TO_NOISE * noise / _LR**2, noise)
    displacements = simulated_displacements(rng, steps, coordinates)
    key = jax.random.PRNGKey(int(rng.integers(2**31)))
    true_gradients, _, observations = curvature_model.simulate_gradient_stream(
        key, jnp.asarray(displacements), *variances
    )
    return variances, displacements, np.asarray(true_gradients), observations


@functools.lru_cache(maxsize=16)
def _online_scan(posterior_update: Callable):
    """jit of: the rule's posterior_update over a stream from ``state``; (last state, m_g at
    every step). Compiled once per function under test and stream shape."""

    @jax.jit
    def run(state, observations, points):
        def advance(state, inputs):
            _, state = posterior_update(inputs[0], inputs[1], state)
            return state, state.gradient_mean

        return jax.lax.scan(advance, state, (observations, points))

    return run


def _online_run(updates: CurvatureUpdates, displacements, observations, start):
    """The rule over the stream from the start (lambda_g,0, lambda_h,0 lr^2): its last state
    and its means m_g at every step."""
    state = curvature_rule.init_state(
        jnp.zeros(observations.shape[1], observations.dtype), lr=_LR,
        initial_drift_to_noise=start[0], initial_curvature_drift_to_noise=start[1],
    )
    return _online_scan(updates.posterior_update)(
        state, jnp.asarray(observations), jnp.asarray(np.cumsum(displacements, axis=0))
    )


def _online_estimates(updates: CurvatureUpdates, displacements, observations, start):
    """(q_g, q_h, r) of the rule after the stream, from the start (lambda_g,0, lambda_h,0 lr^2)."""
    state, _ = _online_run(updates, displacements, observations, start)
    q_g, q_h, r, _, _ = curvature_rule.posterior_variances(state)
    return np.stack([np.asarray(q_g), np.asarray(q_h), np.asarray(r)])


def offline_maximum_likelihood(observations, displacements, start):
    """argmax over (ln q_g, ln q_h, ln r), per coordinate, of the exact log-likelihood
    [curvature-likelihood] from g_0 = h_0 = 0.

    ``start`` has shape (3, n); the optimiser is L-BFGS with the gradient from ``jax.grad``
    (the coordinates are independent, so one problem with 3n unknowns). Returns (3, n).
    """
    observations = jnp.asarray(observations)
    displacements = jnp.asarray(displacements)
    n = observations.shape[1]

    @jax.jit
    def negative(flat):
        log_variances = flat.reshape(3, n)
        _, log_likelihood = curvature_rule.exact_filter(
            observations, displacements, *jnp.exp(log_variances)
        )
        return -jnp.sum(log_likelihood) / observations.shape[0]

    value_and_grad = jax.jit(jax.value_and_grad(negative))

    def objective(x):
        value, gradient = value_and_grad(jnp.asarray(x))
        return float(value), np.asarray(gradient)

    result = scipy.optimize.minimize(objective, np.asarray(start).ravel(), jac=True,
                                     method="L-BFGS-B")
    return result.x.reshape(3, n)


def _moment_start(displacements, observations):
    """A start for the offline optimiser from the data, not from the online estimate or the
    truth: Var(g_hat_t - g_hat_(t-1)) ~ q_g + 2 r, split as q_g = r; q_h from the same variance
    over the mean squared displacement."""
    third = np.var(np.diff(np.asarray(observations), axis=0), axis=0) / 3.0
    mean_square = np.mean(np.asarray(displacements) ** 2, axis=0)
    return np.log(np.stack([third, third / mean_square, third]))


def _check_online_ml(rng: np.random.Generator, updates: CurvatureUpdates, steps: int):
    truth, displacements, _, observations = _simulated_stream(rng, steps,
                                                              _COORDINATES_ONLINE)
    online = _online_estimates(updates, displacements, observations, _STARTS[0])
    offline = offline_maximum_likelihood(observations, displacements,
                                         _moment_start(displacements, observations))
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = np.abs(np.log(online) - offline)
        scaled = errors / np.asarray(ONLINE_ML_BOUNDS)[:, None]
    worst = float(np.max(scaled)) if np.all(np.isfinite(scaled)) else math.nan
    return CheckResult(
        "online_ml", _COORDINATES_ONLINE, worst, TOLERANCES["online_ml"],
        f"max |ln(online/offline ML)| / {ONLINE_ML_BOUNDS} of q_g, q_h, r after {steps} steps, "
        f"{_COORDINATES_ONLINE} coordinates (lambda_g = {_DRIFT_TO_NOISE:g}, "
        f"lambda_h lr^2 = {_CURVATURE_DRIFT_TO_NOISE:g})",
        extra={
            "max_error_ln_q_g_ln_q_h_ln_r": [float(x) for x in np.max(errors, axis=1)],
            "offline_over_truth_median": [
                float(x) for x in np.median(np.exp(offline) / np.asarray(truth)[:, None], axis=1)
            ],
        },
    )


def _check_identifiability(rng: np.random.Generator, updates: CurvatureUpdates, steps: int):
    truth, displacements, _, observations = _simulated_stream(rng, steps,
                                                              _COORDINATES_ONLINE)
    first, second = (_online_estimates(updates, displacements, observations, start)
                     for start in _STARTS)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = float(np.max(np.abs(np.log(first / second))))
        medians = np.median(first, axis=1) / np.asarray(truth)
        from_truth = float(np.max(np.abs(np.log(medians))))
    worst = max(between / math.log(1.05), from_truth / math.log(1.2))
    return CheckResult(
        "identifiability", _COORDINATES_ONLINE, worst if math.isfinite(worst) else math.nan,
        TOLERANCES["identifiability"],
        f"max of |ln(a/b)| between starts {_STARTS} / ln 1.05 and |ln(median/truth)| of q_g, "
        f"q_h, r / ln 1.2, after {steps} steps",
        extra={
            "max_ln_between_starts": between,
            "median_over_truth_q_g_q_h_r": [float(x) for x in medians],
        },
    )


def _check_oracle_rmse(rng: np.random.Generator, updates: CurvatureUpdates, steps: int):
    variances, displacements, true_gradients, observations = _simulated_stream(
        rng, steps, _COORDINATES_ONLINE
    )
    oracle, _ = curvature_rule.exact_filter(jnp.asarray(observations),
                                            jnp.asarray(displacements), *variances)
    oracle_rmse = float(np.sqrt(np.mean((np.asarray(oracle.gradient_mean) - true_gradients)
                                        ** 2)))
    ratios = []
    for start in _STARTS:
        _, means = _online_run(updates, displacements, observations, start)
        rmse = float(np.sqrt(np.mean((np.asarray(means) - true_gradients) ** 2)))
        ratios.append(rmse / oracle_rmse)
    worst = max(ratios) - 1.0
    return CheckResult(
        "oracle_rmse", _COORDINATES_ONLINE, worst if math.isfinite(worst) else math.nan,
        TOLERANCES["oracle_rmse"],
        f"RMSE(online m_g) / RMSE(oracle m_g) - 1 over {steps} steps, worse of the starts "
        f"{_STARTS}",
        extra={"rmse_ratio_per_start": ratios, "oracle_rmse": oracle_rmse},
    )


def run_checks(
    seed: int = 0,
    cases: int = 10,
    *,
    updates: CurvatureUpdates | None = None,
    only: list[str] | None = None,
    online_steps: int = _STEPS_ONLINE,
) -> list[CheckResult]:
    """Run the Curvature Kalman VSGD checks (all, or those named in ``only``), float64.

    Args:
        seed: seeds every random draw (the outcome is deterministic).
        cases: random problems per check for the first two (the last three run one stream of
            ``online_steps`` steps and 8 coordinates each, whatever ``cases`` is).
        online_steps: length of the streams of ``online_ml``, ``identifiability`` and
            ``oracle_rmse`` (their tolerances were set at the default, 20000).
        updates: functions under test (default: the rule's); a test hook.
        only: names among :data:`CHECKS`.
    """
    names = checked_run_arguments(seed, cases, only, CHECKS)
    updates = CurvatureUpdates() if updates is None else updates
    with jax.enable_x64(True):
        runners = {
            "exact_posterior": lambda: _check_exact_posterior(
                np.random.default_rng([seed, 1]), cases, updates
            ),
            "sensitivities": lambda: _check_sensitivities(
                np.random.default_rng([seed, 2]), cases, updates
            ),
            "online_ml": lambda: _check_online_ml(
                np.random.default_rng([seed, 3]), updates, online_steps
            ),
            "identifiability": lambda: _check_identifiability(
                np.random.default_rng([seed, 4]), updates, online_steps
            ),
            "oracle_rmse": lambda: _check_oracle_rmse(
                np.random.default_rng([seed, 5]), updates, online_steps
            ),
        }
        return [runners[name]() for name in CHECKS if name in names]
