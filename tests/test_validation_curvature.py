"""Tests of vsgd_bayes.validation.curvature: the checks pass, and each fails on a broken twin."""

import numpy as np
import pytest

from vsgd_bayes.rules import curvature as curvature_rule
from vsgd_bayes.validation import METHODS
from vsgd_bayes.validation import curvature as validation

#: Streams shorter than the default 20,000 steps keep the broken twins fast; each twin is far
#: off at any length (the correct rule passes at the default, in test_checks_pass).
_SHORT = 5000


def test_checks_pass():
    results = validation.run_checks(seed=3, cases=6)
    assert [r.name for r in results] == list(validation.CHECKS)
    for result in results:
        assert result.passed, result


def test_the_method_is_registered_for_vsgd_bayes_validate():
    method = METHODS["curvature-kalman-vsgd"]
    assert method.run_checks is validation.run_checks and method.json_key == "curvature_checks"


def test_the_dense_reference_is_the_models_joint_by_its_chain_rule():
    # The dense joint's log-density at a point equals the sum of the model's conditionals.
    from scipy.stats import multivariate_normal, norm

    rng = np.random.default_rng(0)
    delta = rng.normal(size=6) * 0.1
    q_g, q_h, r = 0.3, 20.0, 1.7
    g, h, g_hat = rng.normal(size=6), rng.normal(size=6), rng.normal(size=6)
    point = np.concatenate([np.stack([g, h], axis=1).ravel(), g_hat])
    # From a start known exactly, (g_0, h_0) = (0.2, -1.0).
    mean, covariance = validation.dense_joint(delta, q_g, q_h, r, (0.2, -1.0))
    chain = 0.0
    g_prev, h_prev = 0.2, -1.0
    for t in range(6):
        chain += norm.logpdf(g[t], g_prev + h_prev * delta[t], np.sqrt(q_g))
        chain += norm.logpdf(h[t], h_prev, np.sqrt(q_h))
        chain += norm.logpdf(g_hat[t], g[t], np.sqrt(r))
        g_prev, h_prev = g[t], h[t]
    dense = multivariate_normal(mean, covariance).logpdf(point)
    np.testing.assert_allclose(dense, chain, rtol=1e-10)


def _filter_ignoring_the_start_correlation(observations, displacements, q_g, q_h, r,
                                           initial_mean=(0.0, 0.0),
                                           initial_covariance=(0.0, 0.0, 0.0)):
    c_gg, _, c_hh = initial_covariance
    return curvature_rule.exact_filter(observations, displacements, q_g, q_h, r, initial_mean,
                                       (c_gg, 0.0 * c_hh, c_hh))


def _update_forgetting_the_cross_covariance(gradient, point, state, **kwargs):
    variance, new_state = curvature_rule.posterior_update(gradient, point, state, **kwargs)
    return variance, new_state._replace(cross_covariance=0.0 * new_state.cross_covariance)


def _tangents_one_percent_off(predicted_tangents, predicted, v, s):
    right = curvature_rule.update_sensitivities(predicted_tangents, predicted, v, s)
    return right._replace(gradient_mean=1.01 * right.gradient_mean)


def _full_likelihood_score(predicted_tangents, v, s, noise_variance):
    # The full score of ln N(v; 0, r S~): the mean part plus the variance part the rule drops.
    score, information = curvature_rule.ratio_score(predicted_tangents, v, s, noise_variance)
    variance_part = (v**2 / (noise_variance * s) - 1.0) * predicted_tangents.gradient_variance
    return score + variance_part / (2.0 * s), information


def _update_carrying_stale_tangents(gradient, point, state, **kwargs):
    variance, new_state = curvature_rule.posterior_update(gradient, point, state, **kwargs)
    return variance, new_state._replace(ratio_sensitivities=state.ratio_sensitivities)


@pytest.mark.parametrize("check, updates", [
    ("exact_posterior", validation.CurvatureUpdates(
        exact_filter=_filter_ignoring_the_start_correlation)),
    ("exact_posterior", validation.CurvatureUpdates(
        posterior_update=_update_forgetting_the_cross_covariance)),
    ("sensitivities", validation.CurvatureUpdates(
        update_sensitivities=_tangents_one_percent_off)),
    ("sensitivities", validation.CurvatureUpdates(ratio_score=_full_likelihood_score)),
    ("sensitivities", validation.CurvatureUpdates(
        posterior_update=_update_carrying_stale_tangents)),
])
def test_broken_function_fails_its_check(check, updates):
    (result,) = validation.run_checks(seed=1, cases=5, updates=updates, only=[check])
    assert not result.passed, result
    (correct,) = validation.run_checks(seed=1, cases=5, only=[check])
    assert correct.passed, correct


def _climbing_the_prediction_error(gradient, point, state, **kwargs):
    return curvature_rule.posterior_update(gradient, point, state,
                                           **{**kwargs, "ratio_step_scale": -2.0})


def _never_learning_the_ratios(gradient, point, state, **kwargs):
    return curvature_rule.posterior_update(gradient, point, state,
                                           **{**kwargs, "ratio_step_scale": 0.0})


@pytest.mark.parametrize("check", ["online_ml", "identifiability", "oracle_rmse"])
@pytest.mark.parametrize("broken", [_climbing_the_prediction_error, _never_learning_the_ratios])
def test_a_broken_estimator_fails_the_online_checks(check, broken):
    (result,) = validation.run_checks(
        seed=0, updates=validation.CurvatureUpdates(posterior_update=broken), only=[check],
        online_steps=_SHORT,
    )
    assert not result.passed, result


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Invalid cases: 0"):
        validation.run_checks(cases=0)
    with pytest.raises(ValueError, match=r"Invalid only: \['nope'\]"):
        validation.run_checks(only=["nope"])
