"""Tests of vsgd_bayes.rules.constant: EMA mean, variance formula, CAVI stationarity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules import constant as constant_rule
from vsgd_bayes.rules.constant import one_step_elbo as constant_one_step_elbo


@pytest.mark.parametrize("ratio", [9.0, 30.0])
def test_mean_is_an_exponential_moving_average(ratio):
    rng = np.random.default_rng(0)
    gradients = rng.normal(size=(25, 6)) * 10.0 ** rng.uniform(-3, 2, (25, 6))
    params = jnp.zeros(6)
    state = constant_rule.init_state(params)
    beta = ratio / (1.0 + ratio)  # K_g = 9 gives Adam's beta_1 = 0.9
    ema = np.zeros(6)
    for gradient in gradients:
        params, state = constant_rule.step(params, jnp.asarray(gradient), state,
                                           variance_ratio=ratio)
        ema = beta * ema + (1.0 - beta) * gradient
        np.testing.assert_allclose(state.gradient_mean, ema, rtol=1e-12, atol=1e-14)


def test_variance_formula():
    rate, shape, ratio = jnp.array([1e-6, 0.3, 5.0]), 0.7, 4.0
    _, variance = constant_rule.local_update(0.0, rate, 1.0, shape, ratio)
    # sigma^2 = (1 - k) b / a with k = 1/(1 + K_g): the precision is E[w](1 + 1/K_g).
    np.testing.assert_allclose(variance, ratio / (1.0 + ratio) * rate / shape, rtol=1e-15)


@pytest.mark.parametrize("init", hp.INITS)
def test_cavi_updates_are_stationary_points_of_the_constant_elbo(init):
    rng = np.random.default_rng(3)
    for _ in range(20):
        gamma = 10.0 ** rng.uniform(-8, 1)
        ratio = 10.0 ** rng.uniform(-1, 3)
        mean_prev, gradient = rng.normal(size=2) * 10.0 ** rng.uniform(-3, 2, 2)
        rate, shape = 10.0 ** rng.uniform(-6, 2), 10.0 ** rng.uniform(-2, 1)
        prior_shape = hp.prior_shape(gamma, init)
        mean, variance = constant_rule.local_update(mean_prev, rate, gradient, shape, ratio)

        def elbo(x, shape=shape, rate=rate):
            return constant_one_step_elbo(x[0], jnp.exp(x[1]), shape, rate, mean_prev, gradient,
                                          gamma, ratio, prior_shape)

        grad = jax.grad(elbo)(jnp.array([mean, jnp.log(variance)]))
        precision = shape / rate * (1.0 + 1.0 / ratio)
        # Newton step in mu (relative to the data) and in ln sigma^2 (curvature 1/2): ~1 ulp.
        assert abs(float(grad[0]) / precision) <= 1e-12 * (abs(mean_prev) + abs(gradient))
        assert abs(float(grad[1])) <= 1e-12

        target = constant_rule.global_target(mean, variance, mean_prev, gradient, gamma, ratio)
        posterior_shape = constant_rule.posterior_shape(gamma, init)

        def global_elbo(x):
            return constant_one_step_elbo(mean, variance, jnp.exp(x[0]), jnp.exp(x[1]),
                                          mean_prev, gradient, gamma, ratio, prior_shape)

        grad = jax.grad(global_elbo)(jnp.log(jnp.array([posterior_shape, target])))
        # In (ln a, ln b) the ELBO terms are O(a) and O(1): rounding ~1e-15 relative.
        assert float(jnp.max(jnp.abs(grad))) <= 1e-10 * max(1.0, posterior_shape)
        # A wrong shape (a_0 + 1/2, VSGD's) is not stationary: the check has teeth.
        wrong = jax.grad(global_elbo)(jnp.log(jnp.array([prior_shape + 0.5, target])))
        assert float(jnp.max(jnp.abs(wrong))) > 1e-3
