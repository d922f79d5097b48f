"""Tests of vsgd_bayes.rules.elbo: Gamma KL, the closed-form ELBO, the CAVI optimum."""

import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import Gamma
from numpyro.distributions.kl import kl_divergence

from vsgd_bayes.rules import elbo
from vsgd_bayes.rules import vsgd as rule
from vsgd_bayes.rules.elbo import OneStepVariational


def test_gamma_kl_matches_numpyro():
    shape, rate = jnp.array([0.3, 2.0, 50.0]), jnp.array([1e-3, 1.0, 7.0])
    prior_shape, prior_rate = jnp.array([1e-8, 0.5, 3.0]), jnp.array([1e-8, 2.0, 0.1])
    expected = kl_divergence(Gamma(shape, rate), Gamma(prior_shape, prior_rate))
    np.testing.assert_allclose(elbo.gamma_kl(shape, rate, prior_shape, prior_rate), expected,
                               rtol=1e-10)
    assert float(elbo.gamma_kl(2.0, 3.0, 2.0, 3.0)) == 0.0


def test_elbo_of_a_tight_posterior_approaches_the_log_evidence():
    # With Gamma posteriors concentrated at w (shape -> inf, a/b = w) the ELBO becomes the
    # bound of a Gaussian model with known precisions minus the Gamma KLs; for q(g) at the
    # exact Gaussian posterior the likelihood part equals ln N(g_hat | mu_prev, 1/w_g + 1/w_ghat).
    w_g, w_ghat, mean_prev, gradient = 4.0, 9.0, 0.3, -0.5
    shape = 1e9
    variance = 1.0 / (w_g + w_ghat)
    mean = variance * (w_g * mean_prev + w_ghat * gradient)
    q = OneStepVariational(mean, variance, shape, shape / w_g, shape, shape / w_ghat)
    terms = elbo.one_step_elbo_terms(q, mean_prev, gradient, 1.0, 1.0, 1.0)
    evidence = -0.5 * np.log(2 * np.pi * (1 / w_g + 1 / w_ghat)) - 0.5 * (
        gradient - mean_prev) ** 2 / (1 / w_g + 1 / w_ghat)
    # E[ln w] = psi(a) - ln b = ln(a/b) - 1/(2a) + ...: 1e-9 away at a = 1e9.
    likelihood = terms.drift_likelihood + terms.noise_likelihood + terms.gradient_entropy
    assert float(likelihood) == pytest.approx(evidence, abs=1e-8)


def test_cavi_optimum_is_a_fixed_point_of_the_rule():
    mean_prev, gradient = jnp.array([0.0, 2.0, -1.0]), jnp.array([1.0, -3.0, -0.9])
    gamma, ratio, a0 = jnp.array([0.1, 1.0, 3.0]), jnp.array([1.0, 30.0, 0.5]), 0.2
    q = elbo.cavi_optimum(mean_prev, gradient, gamma, ratio, a0)
    mean, variance = rule.local_update(mean_prev, q.drift_rate, q.noise_rate, gradient,
                                       q.drift_shape)
    drift, noise = rule.global_targets(mean, variance, mean_prev, gradient, gamma, ratio)
    # Converged to 1e-14 relative on the rates; one more round moves nothing beyond that.
    np.testing.assert_allclose(mean, q.gradient_mean, rtol=1e-12)
    np.testing.assert_allclose(drift, q.drift_rate, rtol=1e-12)
    np.testing.assert_allclose(noise, q.noise_rate, rtol=1e-12)
    np.testing.assert_allclose(q.drift_shape, a0 + 0.5)


def test_cavi_optimum_symmetric_case():
    # K_g = 1, gamma = a_0 -> 0: by symmetry gain 1/2; then sigma^2 = b = 1/4 (see docstring).
    q = elbo.cavi_optimum(0.0, 1.0, 1e-12, 1.0, 1e-12)
    assert float(q.gradient_mean) == pytest.approx(0.5, rel=1e-9)
    assert float(q.gradient_variance) == pytest.approx(0.25, rel=1e-9)
    assert float(q.drift_rate) == pytest.approx(0.25, rel=1e-9)
