"""Curvature Kalman VSGD's NumPyro model (:mod:`vsgd_bayes.models.curvature`): its density is
the step-following model's, its draws have the dense reference's covariance (the reference that
``vsgd-bayes validate`` checks the filter against), and bad input names the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density
from scipy.stats import norm

from vsgd_bayes.models import curvature as model
from vsgd_bayes.validation.curvature import dense_joint


def test_log_density_is_the_chain_of_the_models_conditionals():
    rng = np.random.default_rng(0)
    steps, n = 5, 3
    delta = rng.normal(size=(steps, n)) * 0.3
    g, h, g_hat = (rng.normal(size=(steps, n)) for _ in range(3))
    q_g, q_h, r = np.array([0.1, 0.5, 2.0]), 3.0, np.array([1.0, 0.2, 4.0])
    with jax.enable_x64(True):
        density, _ = log_density(
            model.sequential_model, (jnp.asarray(delta),),
            dict(drift_variance=q_g, curvature_drift_variance=q_h, noise_variance=r,
                 observed=jnp.asarray(g_hat)),
            {"g": jnp.asarray(g), "h": jnp.asarray(h)},
        )
    g_prev, h_prev = np.zeros((steps + 1, n)), np.zeros((steps + 1, n))
    g_prev[1:], h_prev[1:] = g, h
    expected = (norm.logpdf(g, g_prev[:-1] + h_prev[:-1] * delta, np.sqrt(q_g)).sum()
                + norm.logpdf(h, h_prev[:-1], np.sqrt(q_h)).sum()
                + norm.logpdf(g_hat, g, np.sqrt(r)).sum())
    np.testing.assert_allclose(float(density), expected, rtol=1e-12)


def _standardised_gaps(draws, mean, covariance):
    """|empirical - exact| / its sampling standard error, for the mean and the covariance."""
    count = draws.shape[0]
    variances = np.diag(covariance)
    mean_gap = np.abs(draws.mean(axis=0) - mean) / np.sqrt(variances / count)
    empirical = np.cov(draws, rowvar=False)
    error = np.sqrt((np.outer(variances, variances) + covariance**2) / count)
    return max(float(mean_gap.max()), float((np.abs(empirical - covariance) / error).max()))


def test_draws_have_the_covariance_of_the_dense_reference_and_its_time_convention():
    delta = np.array([0.5, -1.0, 2.0, 0.3])
    q_g, q_h, r, count = 0.1, 1.0, 0.5, 40_000
    with jax.enable_x64(True):
        g, h, g_hat = model.simulate_gradient_stream(
            jax.random.PRNGKey(0), jnp.tile(delta[:, None], (1, count)), q_g, q_h, r
        )
    draws = np.concatenate([np.stack([g, h], axis=1).reshape(8, count), np.asarray(g_hat)]).T
    mean, covariance = dense_joint(delta, q_g, q_h, r)
    # 132 standardised gaps of a 12-dimensional Gaussian: 5 standard errors is beyond chance.
    assert _standardised_gaps(draws, mean, covariance) < 5.0
    # Check of the check: the displacements one step late (Delta_t applied after h_t moved,
    # the convention the filter does not use) are told apart.
    late = np.concatenate([[0.0], delta[:-1]])
    assert _standardised_gaps(draws, *dense_joint(late, q_g, q_h, r)) > 10.0


def test_bad_input_names_the_argument():
    ok = dict(drift_variance=1.0, curvature_drift_variance=1.0, noise_variance=1.0)
    with pytest.raises(ValueError, match=r"Invalid displacements: shape \(3,\)"):
        model.sequential_model(jnp.zeros(3), **ok)
    with pytest.raises(ValueError, match=r"Invalid noise_variance: -1\.0 \(must be > 0\)"):
        model.sequential_model(jnp.zeros((3, 2)), **{**ok, "noise_variance": -1.0})
    with pytest.raises(ValueError, match=r"Invalid drift_variance: shape \(3,\)"):
        model.sequential_model(jnp.zeros((3, 2)), **{**ok, "drift_variance": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"Invalid observed: shape \(2, 2\)"):
        model.sequential_model(jnp.zeros((3, 2)), **ok, observed=jnp.zeros((2, 2)))
