"""Tests of vsgd_bayes.rules.vsgd: golden replay, first step, step bound, jit, single pass,
dtypes."""

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules import vsgd as rule


def replay_golden(scenario, dtype):
    """The rule's (params, mu) after each step of the recorded streams, init="reference"."""
    settings = dict(scenario.hyperparameters, init="reference")
    step = jax.jit(lambda p, g, s: rule.step(p, g, s, **settings))
    trajectories = []
    for parameter in scenario.parameters:
        params = jnp.asarray(parameter.init, dtype)
        state = rule.init_state(
            params, settings["prior_strength"], settings["variance_ratio"], "reference"
        )
        params_after, means_after = [], []
        for t in range(scenario.steps):
            params, state = step(params, jnp.asarray(parameter.grads[t], dtype), state)
            params_after.append(np.asarray(params, np.float64))
            means_after.append(np.asarray(state.gradient_mean, np.float64))
        trajectories.append((np.stack(params_after), np.stack(means_after)))
    return trajectories


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", golden.SCENARIOS)
def test_golden_replay(name, dtype):
    scenario = golden.load(name)
    worst_params, worst_mean = golden.worst_errors(scenario, replay_golden(scenario, dtype))
    # tests/golden.py: the authors' float32 constants, rounded the same way here.
    params_tolerance, mean_tolerance = golden.TOLERANCES[dtype]
    assert worst_params <= params_tolerance, (name, dtype, worst_params)
    assert worst_mean <= mean_tolerance, (name, dtype, worst_mean)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_golden_replay_fails_with_exact_constants(monkeypatch, dtype):
    # Check of the check: the old exact float64 constants measured 4.5e-4 lr (defaults).
    golden.use_exact_constants(monkeypatch)
    scenario = golden.load("defaults")
    worst_params, worst_mean = golden.worst_errors(scenario, replay_golden(scenario, dtype))
    params_tolerance, mean_tolerance = golden.TOLERANCES[dtype]
    assert worst_params > params_tolerance, worst_params
    assert worst_mean > mean_tolerance, worst_mean


@pytest.mark.parametrize("init", hp.INITS)
def test_first_mean_is_gradient_over_one_plus_variance_ratio(init):
    gradient = jnp.array([0.3, -2.0, 1e-4, 50.0])
    ratio = 30.0
    state = rule.init_state(gradient, 1e-8, ratio, init)
    _, state = rule.step(jnp.zeros(4), gradient, state, variance_ratio=ratio, init=init)
    # The gain is b_0g / (b_0g + b_0ghat): 1/(1+K_g) for exact rates (paper); the reference
    # rates are rounded to float32, which moves the gain by < 1e-7 (relative).
    drift_prior_rate, noise_prior_rate = hp.prior_rates(1e-8, ratio, init)
    gain = drift_prior_rate / (drift_prior_rate + noise_prior_rate)
    np.testing.assert_allclose(state.gradient_mean, gradient * gain, rtol=1e-12)
    np.testing.assert_allclose(state.gradient_mean, gradient / (1.0 + ratio), rtol=1e-7)


def test_step_is_bounded_by_learning_rate():
    key = jax.random.PRNGKey(0)
    params = jnp.zeros(1000)
    state = rule.init_state(params)
    lr = 0.1
    for t in range(20):
        gradient = jax.random.normal(jax.random.fold_in(key, t), (1000,)) * 10.0 ** (t % 7 - 3)
        new_params, state = rule.step(params, gradient, state, lr=lr)
        # |mu| / sqrt(mu^2 + sigma^2) < 1 (sigma^2 > 0), so every coordinate moves < lr.
        assert float(jnp.max(jnp.abs(new_params - params))) < lr
        params = new_params


def test_jitted_step_does_not_retrace():
    traces = []

    def counted(params, gradient, state):
        traces.append(1)  # runs only while tracing
        return rule.step(params, gradient, state)

    step = jax.jit(counted)
    params = jnp.ones(3)
    state = rule.init_state(params)
    params, state = step(params, jnp.array([0.1, 0.2, 0.3]), state)
    params, state = step(params, jnp.array([-0.1, 0.5, 0.0]), state)
    assert len(traces) == 1
    assert int(state.step) == 2


@pytest.mark.parametrize("init", hp.INITS)
def test_single_pass_form_equals_rule(init):
    rng = np.random.default_rng(1)
    n = 500
    gamma, ratio, kappa1, kappa2 = 1e-4, 10.0, 0.81, 0.9
    params = jnp.asarray(rng.normal(size=n))
    state = rule.init_state(params, gamma, ratio, init)
    drift_prior_rate, noise_prior_rate = hp.prior_rates(gamma, ratio, init)
    mean, drift, noise = np.zeros(n), np.full(n, drift_prior_rate), np.full(n, noise_prior_rate)
    for t in range(1, 8):
        gradient = rng.normal(size=n) * 10.0 ** rng.uniform(-3, 2, n)
        variance, state = rule.posterior_update(
            jnp.asarray(gradient), state, variance_ratio=ratio, prior_strength=gamma,
            kappa1=kappa1, kappa2=kappa2, init=init,
        )
        # Independent single-pass algebra: gain k, innovation e, shape before the step.
        shape = hp.prior_shape(gamma, init) if t == 1 else hp.posterior_shape(gamma, init)
        k = drift / (drift + noise)
        e = gradient - mean
        expected_variance = k * noise / shape
        drift_target = drift_prior_rate + 0.5 * (expected_variance + k**2 * e**2)
        noise_target = noise_prior_rate + 0.5 * (expected_variance + (1 - k) ** 2 * e**2)
        rho1, rho2 = t ** (-kappa1), t ** (-kappa2)
        data_scale = np.abs(mean) + np.abs(gradient)
        mean = mean + k * e
        drift = (1 - rho1) * drift + rho1 * drift_target
        noise = (1 - rho2) * noise + rho2 * noise_target
        # Same real numbers computed in another order: a few ulps per step, 7 steps. The mean
        # is a convex combination of mu_{t-1} and g_hat, so its rounding is relative to them.
        np.testing.assert_allclose(variance, expected_variance, rtol=1e-12)
        assert np.all(np.abs(np.asarray(state.gradient_mean) - mean) <= 1e-13 * data_scale)
        np.testing.assert_allclose(state.drift_rate, drift, rtol=1e-12)
        np.testing.assert_allclose(state.noise_rate, noise, rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_low_precision_params_keep_dtype_state_is_float32(dtype):
    params = jnp.ones(4, dtype)
    state = rule.init_state(params)
    assert state.gradient_mean.dtype == jnp.float32
    assert state.drift_rate.dtype == jnp.float32
    new_params, state = rule.step(params, jnp.array([0.1, -0.2, 0.3, 0.0], dtype), state)
    assert new_params.dtype == dtype
    assert state.noise_rate.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(state.drift_rate)))
    # gamma = 1e-8 survives in float32 (it would flush to zero in float16).
    assert float(rule.init_state(params).drift_rate[0]) == pytest.approx(1e-8, rel=1e-6)
