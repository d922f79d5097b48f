"""Tests of vsgd_bayes.rules.factored and its hyperparameters: shapes, the state's size, the
limits in which it is VSGD, the gauge, the one-precision-per-tensor model, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.hyperparameters import factored as factored_hp
from vsgd_bayes.rules import factored as rule
from vsgd_bayes.rules import vsgd as vsgd_rule


@pytest.mark.parametrize("shape, factorization, matrix, factored", [
    ((64, 3, 3, 3), "matrix", (64, 27), True),
    ((10, 7), "matrix", (10, 7), True),
    ((10,), "matrix", (10, 1), False),
    ((), "matrix", (1, 1), False),
    ((0,), "matrix", (0, 1), False),
    ((3, 0), "matrix", (3, 0), False),
    ((0, 3), "matrix", (0, 3), True),
    ((4, 5), "tensor", (1, 20), False),
    ((4,), "tensor", (1, 4), False),
])
def test_matrix_view_and_state_shapes(shape, factorization, matrix, factored):
    assert factored_hp.matrix_shape(shape, factorization) == matrix
    assert factored_hp.is_factored(shape, factorization) is factored
    state = rule.init_state(jnp.zeros(shape), factorization=factorization)
    assert state.gradient_mean.shape == shape
    assert state.drift_row_rate.shape == state.noise_row_rate.shape == (matrix[0],)
    columns = matrix[1] if factored else 0
    assert state.drift_column_rate.shape == state.noise_column_rate.shape == (columns,)


def test_state_is_about_one_value_per_coordinate():
    # ResNet-18's largest conv kernel, 512 x 512 x 3 x 3, viewed as 512 x 4608
    state = rule.init_state(jnp.zeros((512, 512, 3, 3)))
    values = sum(int(np.prod(x.shape)) for x in state[1:])
    assert values == 512 * 4608 + 2 * (512 + 4608)
    assert values / (512 * 4608) < 1.005  # 1 + 2/4608 + 2/512 = 1.0043 (VSGD: 3, Adam: 2)


def test_an_unknown_factorization_is_rejected_with_its_name():
    with pytest.raises(ValueError, match=r"Invalid factorization: 'rows' \(must be one of"):
        factored_hp.matrix_shape((2, 3), "rows")
    with pytest.raises(ValueError, match=r"Invalid factorization: 'rows'"):
        hp.validate_factored_hyperparameters(factorization="rows")
    with pytest.raises(TypeError, match="unexpected Factored VSGD hyperparameters"):
        hp.validate_factored_hyperparameters(kappa=0.9)


@pytest.mark.parametrize("init", hp.INITS)
def test_a_vector_is_vsgd_per_coordinate(init):
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.normal(size=9))
    factored_state, vsgd_state = rule.init_state(params, init=init), vsgd_rule.init_state(
        params, init=init)
    factored_params = vsgd_params = params
    for _ in range(8):
        gradient = jnp.asarray(rng.normal(size=9) * 10.0 ** rng.uniform(-3, 2, 9))
        factored_params, factored_state = rule.step(factored_params, gradient, factored_state,
                                                    lr=0.01, init=init)
        vsgd_params, vsgd_state = vsgd_rule.step(vsgd_params, gradient, vsgd_state, lr=0.01,
                                                 init=init)
    # the same operations on the same numbers: bitwise
    assert jnp.array_equal(factored_params, vsgd_params)
    assert jnp.array_equal(factored_state.drift_row_rate, vsgd_state.drift_rate)
    assert jnp.array_equal(factored_state.noise_row_rate, vsgd_state.noise_rate)


def test_the_first_step_of_a_matrix_is_vsgds():
    rng = np.random.default_rng(1)
    params, gradient = (jnp.asarray(rng.normal(size=(5, 7))) for _ in range(2))
    got, _ = rule.step(params, gradient, rule.init_state(params))
    expected, _ = vsgd_rule.step(params, gradient, vsgd_rule.init_state(params))
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)


def test_the_gauge_keeps_the_mean_column_factor_at_one_at_every_step():
    rng = np.random.default_rng(2)
    params = jnp.zeros((6, 5))
    state = rule.init_state(params)
    prior_shape = hp.prior_shape(hp.DEFAULTS["prior_strength"])
    column_shape = prior_shape + 6 / 2
    for _ in range(10):
        gradient = jnp.asarray(rng.normal(size=(6, 5)) * np.arange(1, 6))
        params, state = rule.step(params, gradient, state, lr=0.01)
        for rates in (state.drift_column_rate, state.noise_column_rate):
            np.testing.assert_allclose(jnp.mean(column_shape / rates), 1.0, rtol=1e-13)


def test_factors_follow_the_noise_scale_of_each_column():
    # Mini-batch noise whose scale grows with the column: the noise variances 1/(E[p]E[q])
    # must order the columns as the true scales do (a per-tensor model could not).
    rng = np.random.default_rng(3)
    scales = np.array([0.1, 0.3, 1.0, 3.0])
    params, state = jnp.zeros((40, 4)), rule.init_state(jnp.zeros((40, 4)))
    for _ in range(200):
        gradient = jnp.asarray(rng.normal(size=(40, 4)) * scales)
        params, state = rule.step(params, gradient, state, lr=0.0)
    _, noise_variance, _ = rule.gradient_posterior(state)
    per_column = np.sqrt(np.mean(np.asarray(noise_variance), axis=0))
    assert np.all(np.diff(per_column) > 0)
    np.testing.assert_allclose(per_column / per_column[0], scales / scales[0], rtol=0.35)


def test_tensor_factorization_is_one_precision_per_tensor():
    # eq:factored-tensor-targets by hand: alpha = a_0 + N/2, beta' = b_0 + 1/2 sum D.
    rng = np.random.default_rng(4)
    params = jnp.asarray(rng.normal(size=(3, 4)))
    options = dict(init="paper", prior_strength=1e-3, variance_ratio=5.0, factorization="tensor")
    state = rule.init_state(params, 1e-3, 5.0, "paper", "tensor")
    _, state = rule.step(params, jnp.asarray(rng.normal(size=(3, 4))), state, **options)
    gradient = jnp.asarray(rng.normal(size=(3, 4)))
    _, new_state = rule.step(params, gradient, state, kappa1=0.81, kappa2=0.9, **options)
    shape = 1e-3 + 12 / 2
    drift_precision, noise_precision = shape / state.drift_row_rate, shape / state.noise_row_rate
    variance = 1.0 / (drift_precision + noise_precision)
    mean = variance * (drift_precision * state.gradient_mean + noise_precision * gradient)
    drift_target = 1e-3 + 0.5 * jnp.sum(variance + (mean - state.gradient_mean) ** 2)
    rho = 2.0 ** -0.81
    np.testing.assert_allclose(new_state.gradient_mean, mean, rtol=1e-14)
    np.testing.assert_allclose(new_state.drift_row_rate,
                               (1 - rho) * state.drift_row_rate + rho * drift_target, rtol=1e-14)


def test_step_is_jittable_and_equals_eager():
    rng = np.random.default_rng(5)
    params, gradient = (jnp.asarray(rng.normal(size=(4, 2, 3))) for _ in range(2))
    state = rule.init_state(params)
    stepped = jax.jit(rule.step, static_argnames=("init", "factorization"))
    for _ in range(3):
        eager = rule.step(params, gradient, state)
        jitted = stepped(params, gradient, state)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
            np.testing.assert_allclose(a, b, rtol=1e-13)
        params, state = eager
