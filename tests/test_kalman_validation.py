"""Tests of vsgd_bayes.validation.kalman: the checks pass, and each fails on a broken twin."""

import jax.numpy as jnp
import pytest

from vsgd_bayes.rules import kalman as kalman_rule
from vsgd_bayes.validation import kalman as kalman_validation


def test_checks_pass():
    results = kalman_validation.run_checks(seed=3, cases=4)
    assert [r.name for r in results] == list(kalman_validation.CHECKS)
    for result in results:
        assert result.passed, result


def _filter_without_update(observations, drift, noise, mean0=0.0, variance0=0.0):
    # Forgot the variance update P = (1 - k) P^-: P grows like a random walk's prior.
    means, variances, log_likelihood = kalman_rule.exact_filter(
        observations, drift, noise, mean0, variance0
    )
    return means, variances + drift, log_likelihood


def _gain_from_ratio(log_ratio):
    # The one-step gain q / (q + r) = lambda / (1 + lambda) instead of the steady state's.
    ratio = jnp.exp(log_ratio)
    return ratio / (1.0 + ratio), 1.0 / (1.0 + ratio)


def _sensitivity_with_gain(mean, sensitivity, innovation, gain, complement):
    # d mu/dk propagated with k instead of 1 - k.
    mean, _ = kalman_rule.filter_update(mean, sensitivity, innovation, gain, complement)
    return mean, gain * sensitivity + innovation


def _score_with_wrong_sign(innovation, sensitivity, innovation_variance):
    return -kalman_rule.ratio_score(innovation, sensitivity, innovation_variance)


@pytest.mark.parametrize("check, updates", [
    ("exact_posterior", kalman_validation.KalmanUpdates(exact_filter=_filter_without_update)),
    ("exact_posterior", kalman_validation.KalmanUpdates(steady_state_gain=_gain_from_ratio)),
    ("sensitivities", kalman_validation.KalmanUpdates(filter_update=_sensitivity_with_gain)),
    ("sensitivities", kalman_validation.KalmanUpdates(ratio_score=_score_with_wrong_sign)),
    ("sensitivities", kalman_validation.KalmanUpdates(steady_state_gain=_gain_from_ratio)),
])
def test_broken_function_fails_its_check(check, updates):
    (result,) = kalman_validation.run_checks(seed=1, cases=3, updates=updates, only=[check])
    assert not result.passed, result


def _posterior_update_with_wrong_sign(gradient, state, **kwargs):
    # The estimator climbs the prediction error instead of descending it.
    flipped = state._replace(gain_sensitivity=-state.gain_sensitivity)
    variance, new_state = kalman_rule.posterior_update(gradient, flipped, **kwargs)
    gain, complement = kalman_rule.steady_state_gain(state.log_drift_to_noise)
    _, sensitivity = kalman_rule.filter_update(
        state.gradient_mean, state.gain_sensitivity, gradient - state.gradient_mean, gain,
        complement,
    )
    return variance, new_state._replace(gain_sensitivity=sensitivity)


def test_online_ml_fails_for_a_wrong_sign_estimator():
    # Short streams keep this fast; a wrong-sign score is far off at any length.
    (result,) = kalman_validation.run_checks(
        seed=0, updates=kalman_validation.KalmanUpdates(
            posterior_update=_posterior_update_with_wrong_sign
        ), only=["online_ml"], online_steps=3000,
    )
    assert not result.passed, result


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Invalid cases: 0"):
        kalman_validation.run_checks(cases=0)
    with pytest.raises(ValueError, match="Invalid only"):
        kalman_validation.run_checks(only=["nope"])
