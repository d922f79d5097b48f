r"""Checks of Kalman VSGD's inference (``vsgd-bayes validate`` prints them after VSGD's).

Three claims of ``derivations/11_kalman_vsgd.md`` are checked numerically, in float64:

1. ``exact_posterior``: :func:`vsgd_bayes.rules.kalman.exact_filter` (any start g_0 ~ N(mu_0,
   P_0)) and the rule's constant-gain filter (lambda held fixed, start P_0 = k r) give the exact
   posterior mean and variance of g_t given g_hat_{1:t}, and the exact log-likelihood, of a
   dense Gaussian computation on the joint of (g_{1:T}, g_hat_{1:T}) of the sequential model.
2. ``sensitivities``: the hand-written sensitivity s_t = d mu_t / dk [kalman-sensitivity], the
   score sum_t v_t s_{t-1} / S [kalman-ratio-score] and dk/d ln(lambda) [kalman-fisher] equal
   JAX forward-mode derivatives (``jax.jvp``) of the filter's mean, of its log-likelihood and
   of the gain.
3. ``online_ml``: on streams simulated from the model, the online estimates (q, r) of the rule
   approach the offline maximum-likelihood estimate, ``scipy.optimize.minimize`` on the exact
   likelihood (eq:kalman-likelihood) over (ln q, ln r).

Each check has a hook (:class:`KalmanUpdates`) through which a test passes a deliberately
broken function, to show that the check then fails.

Example:
    >>> results = run_checks(seed=0, cases=10)  # doctest: +SKIP
    >>> all(result.passed for result in results)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from vsgd_bayes.rules import kalman as kalman_rule
from vsgd_bayes.validation.harness import CheckResult, checked_run_arguments

__all__ = ["KalmanUpdates", "run_checks", "CHECKS", "TOLERANCES"]

#: Tolerance of each check, with its reason.
TOLERANCES: dict[str, float] = {
    # Relative to the data scale: two float64 evaluations of the same Gaussian conditionals
    # (a T x T solve against a recursion) agree to ~1e-13 at T = 25; a wrong gain or a
    # missing update is off by O(1).
    "exact_posterior": 1e-8,
    # Relative differences of hand-written and forward-mode derivatives: rounding only.
    "sensitivities": 1e-9,
    # Largest |ln(online / offline ML)| of q and r over the streams. Measured with the
    # defaults at 20000 steps, seeds 0 and 1: 0.034 and 0.089 (q; r <= 0.022). The online
    # estimate is a Robbins-Monro approximation of the ML, not the ML; a wrong-sign score
    # drives lambda to its bound (error > 5).
    "online_ml": 0.2,
}

#: The names of the Kalman VSGD checks, in the order they run.
CHECKS = ("exact_posterior", "sensitivities", "online_ml")

_STEPS_EXACT = 25
_STEPS_ONLINE = 20_000
_STREAMS_ONLINE = 4


class KalmanUpdates(NamedTuple):
    """The functions under test (defaults: the rule's); a test hook for broken twins."""

    exact_filter: Callable = kalman_rule.exact_filter
    filter_update: Callable = kalman_rule.filter_update
    steady_state_gain: Callable = kalman_rule.steady_state_gain
    ratio_score: Callable = kalman_rule.ratio_score
    posterior_update: Callable = kalman_rule.posterior_update


@jax.jit
def _dense_filtering_posterior(observations, q, r, mean0, variance0):
    """Means and variances of g_t | g_hat_{1:t}, and ln p(g_hat_{1:T}), from the joint Gaussian.

    Cov(g_i, g_j) = P_0 + q min(i, j) and g_hat = g + n with Cov(n) = r I.
    """
    steps = observations.shape[0]
    times = jnp.arange(1, steps + 1, dtype=observations.dtype)
    state_covariance = variance0 + q * jnp.minimum(times[:, None], times[None, :])
    observation_covariance = state_covariance + r * jnp.eye(steps)
    centred = observations - mean0

    def filtering(t):
        # g_t | g_hat_{1:t}: the first t observations only. Observations after t are masked
        # out of the T x T system (identity rows, zero cross-covariance), one solve per t.
        seen = times <= t
        mask = seen[:, None] & seen[None, :]
        covariance = jnp.where(mask, observation_covariance, jnp.eye(steps))
        cross = jnp.where(seen, state_covariance[t - 1], 0.0)
        weights = jnp.linalg.solve(covariance, cross)
        return mean0 + weights @ centred, state_covariance[t - 1, t - 1] - weights @ cross

    means, variances = jax.vmap(filtering)(jnp.arange(1, steps + 1))
    sign, log_determinant = jnp.linalg.slogdet(observation_covariance)
    quadratic = centred @ jnp.linalg.solve(observation_covariance, centred)
    log_likelihood = -0.5 * (steps * math.log(2 * math.pi) + log_determinant + quadratic)
    return means, variances, log_likelihood


def _constant_gain_means(updates: KalmanUpdates, observations, log_ratio):
    """The rule's filter at a fixed lambda: (mu_t, s_t) over the stream from mu_0 = s_0 = 0."""
    gain, complement = updates.steady_state_gain(log_ratio)

    def advance(carry, observation):
        mean, sensitivity = carry
        innovation = kalman_rule.innovation(observation, mean)
        mean, sensitivity = updates.filter_update(mean, sensitivity, innovation, gain, complement)
        return (mean, sensitivity), (mean, sensitivity)

    zero = jnp.zeros((), observations.dtype)
    _, (means, sensitivities) = jax.lax.scan(advance, (zero, zero), observations)
    return means, sensitivities


def _check_exact_posterior(rng: np.random.Generator, cases: int, updates: KalmanUpdates):
    worst = 0.0
    for _ in range(cases):
        noise = 10.0 ** rng.uniform(-4, 2)
        ratio = 10.0 ** rng.uniform(-4, 1)
        drift = ratio * noise
        mean0 = rng.normal() * math.sqrt(noise)
        variance0 = rng.choice([0.0, 10.0 ** rng.uniform(-3, 2) * noise])
        truth = mean0 + np.cumsum(rng.normal(size=_STEPS_EXACT) * math.sqrt(drift))
        observations = jnp.asarray(truth + rng.normal(size=_STEPS_EXACT) * math.sqrt(noise))
        scale = float(jnp.max(jnp.abs(observations))) + abs(mean0)
        # (a) the time-varying filter from an arbitrary start.
        means, variances, log_likelihood = updates.exact_filter(
            observations, drift, noise, mean0, variance0
        )
        dense_means, dense_variances, dense_log_likelihood = _dense_filtering_posterior(
            observations, drift, noise, mean0, variance0
        )
        worst = max(
            worst,
            float(jnp.max(jnp.abs(means - dense_means))) / scale,
            float(jnp.max(jnp.abs(variances - dense_variances))) / noise,
            abs(float(log_likelihood - dense_log_likelihood))
            / (1.0 + abs(float(dense_log_likelihood))),
        )
        # (b) the rule's constant-gain filter = the exact posterior for g_0 ~ N(0, k r).
        log_ratio = jnp.log(jnp.asarray(ratio))
        gain, complement = updates.steady_state_gain(log_ratio)
        rule_means, _ = _constant_gain_means(updates, observations, log_ratio)
        innovation_variance = noise / complement  # S = r / (1 - k)
        _, _, posterior = kalman_rule.variances(innovation_variance, gain, complement)
        dense_means, dense_variances, _ = _dense_filtering_posterior(
            observations, drift, noise, 0.0, gain * noise
        )
        worst = max(
            worst,
            float(jnp.max(jnp.abs(rule_means - dense_means))) / scale,
            float(jnp.max(jnp.abs(posterior - dense_variances))) / noise,
        )
    return CheckResult(
        "exact_posterior", cases, float(worst), TOLERANCES["exact_posterior"],
        "max error of means (/data scale), variances (/r), log-lik (relative) vs dense Gaussian",
    )


def _check_sensitivities(rng: np.random.Generator, cases: int, updates: KalmanUpdates):
    worst = 0.0
    for _ in range(cases):
        noise = 10.0 ** rng.uniform(-4, 2)
        log_ratio = jnp.asarray(math.log(10.0 ** rng.uniform(-4, 1)))
        steps = 40
        observations = jnp.asarray(
            np.cumsum(rng.normal(size=steps)) * math.sqrt(noise) * 0.3
            + rng.normal(size=steps) * math.sqrt(noise)
        )
        innovation_variance = jnp.asarray(noise * 10.0 ** rng.uniform(-1, 1))
        gain, complement = updates.steady_state_gain(log_ratio)

        def means_of_gain(k):
            def advance(mean, observation):
                mean = mean + k * (observation - mean)  # (eq:kalman-mean), k as a variable
                return mean, mean

            _, means = jax.lax.scan(advance, jnp.zeros(()), observations)
            return means

        def log_likelihood_of_gain(k):
            means = means_of_gain(k)
            previous = jnp.concatenate([jnp.zeros(1), means[:-1]])
            v = observations - previous
            return jnp.sum(-0.5 * (jnp.log(2 * jnp.pi * innovation_variance)
                                   + v**2 / innovation_variance))

        _, forward_means = jax.jvp(means_of_gain, (gain,), (jnp.ones(()),))
        _, forward_score = jax.jvp(log_likelihood_of_gain, (gain,), (jnp.ones(()),))
        _, forward_gain_derivative = jax.jvp(
            lambda phi: updates.steady_state_gain(phi)[0], (log_ratio,), (jnp.ones(()),)
        )
        means, sensitivities = _constant_gain_means(updates, observations, log_ratio)
        previous_means = jnp.concatenate([jnp.zeros(1), means[:-1]])
        previous_sensitivities = jnp.concatenate([jnp.zeros(1), sensitivities[:-1]])
        innovations = observations - previous_means
        score = jnp.sum(
            updates.ratio_score(innovations, previous_sensitivities, innovation_variance)
        )
        gain_derivative = gain * complement / (2.0 - gain)  # (eq:kalman-fisher)
        scale = float(jnp.max(jnp.abs(forward_means))) + 1e-300
        worst = max(
            worst,
            float(jnp.max(jnp.abs(sensitivities - forward_means))) / scale,
            abs(float(score - forward_score)) / (abs(float(forward_score)) + 1e-300),
            abs(float(gain_derivative - forward_gain_derivative))
            / float(forward_gain_derivative),
        )
    return CheckResult(
        "sensitivities", cases, float(worst), TOLERANCES["sensitivities"],
        "max relative gap of d mu/dk, sum of scores, dk/d ln lambda vs jax.jvp",
    )


def offline_maximum_likelihood(observations, start):
    """argmax over (ln q, ln r) of the exact log-likelihood (eq:kalman-likelihood), g_0 = 0.

    ``start`` is (ln q, ln r); the optimiser is L-BFGS with the gradient from ``jax.grad``.
    Returns the optimum (ln q, ln r) as a numpy array.
    """

    @jax.jit
    def negative(log_variances):
        _, _, log_likelihood = kalman_rule.exact_filter(
            observations, jnp.exp(log_variances[0]), jnp.exp(log_variances[1])
        )
        return -log_likelihood / observations.shape[0]

    value_and_grad = jax.jit(jax.value_and_grad(negative))

    def objective(x):
        value, gradient = value_and_grad(jnp.asarray(x))
        return float(value), np.asarray(gradient)

    result = scipy.optimize.minimize(objective, np.asarray(start), jac=True, method="L-BFGS-B")
    return result.x


def _check_online_ml(rng: np.random.Generator, updates: KalmanUpdates, steps: int):
    worst, rows = 0.0, []
    ratios = (1e-1, 1e-2, 1e-3, 1e-1)[:_STREAMS_ONLINE]
    for ratio in ratios:
        noise = 10.0 ** rng.uniform(-4, 2)
        drift = ratio * noise
        truth = np.cumsum(rng.normal(size=steps) * math.sqrt(drift))
        observations = jnp.asarray(truth + rng.normal(size=steps) * math.sqrt(noise))
        state = kalman_rule.init_state(observations[:1])

        def advance(state, observation):
            _, state = updates.posterior_update(observation[None], state)
            return state, None

        state, _ = jax.lax.scan(advance, state, observations)
        online_drift, online_noise, _ = kalman_rule.posterior_variances(state)
        # Start the offline optimiser from the data, not from the online estimate:
        # Var(g_hat_t - g_hat_{t-1}) = q + 2 r, split as q = r.
        third = float(jnp.var(jnp.diff(observations))) / 3.0
        offline = offline_maximum_likelihood(observations, np.log([third, third]))
        errors = (
            abs(math.log(float(online_drift[0])) - offline[0]),
            abs(math.log(float(online_noise[0])) - offline[1]),
        )
        rows.append(errors)
        worst = max(worst, *errors) if all(map(math.isfinite, errors)) else math.nan
    return CheckResult(
        "online_ml", len(ratios), float(worst), TOLERANCES["online_ml"],
        f"max |ln(online/offline ML)| of q, r after {steps} steps (q/r = "
        + ", ".join(f"{x:g}" for x in ratios) + ")",
        extra={"errors_ln_q_ln_r": [list(map(float, e)) for e in rows]},
    )


def run_checks(
    seed: int = 0,
    cases: int = 10,
    *,
    updates: KalmanUpdates | None = None,
    only: list[str] | None = None,
    online_steps: int = _STEPS_ONLINE,
) -> list[CheckResult]:
    """Run the Kalman checks (all, or those named in ``only``), float64 for their duration.

    Args:
        seed: seeds every random draw (the outcome is deterministic).
        cases: random problems per check for the first two (the third runs
            4 streams of ``online_steps`` steps whatever ``cases`` is).
        online_steps: length of the streams of ``online_ml`` (its tolerance was measured at
            the default, 20000).
        updates: functions under test (default: the rule's); a test hook.
        only: names among :data:`CHECKS`.
    """
    names = checked_run_arguments(seed, cases, only, CHECKS)
    updates = KalmanUpdates() if updates is None else updates
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
        }
        return [runners[name]() for name in CHECKS if name in names]
