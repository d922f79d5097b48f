"""Tests of vsgd_bayes.optax.factored: bitwise equality with rules.factored.step, weight decay,
None gradients, complex leaves, both factorizations, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vsgd_bayes.optax import ScaleByFactoredVSGDState, factored_vsgd, scale_by_factored_vsgd
from vsgd_bayes.rules import factored as factored_rule

SETTINGS = dict(variance_ratio=9.0, prior_strength=1e-6, kappa1=0.7, kappa2=0.95, eps=0.0,
                init="paper")
SHAPES = {"w": (4, 3), "kernel": (2, 3, 2), "b": (3,), "s": ()}


def _stream(steps, shapes, dtype=jnp.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {name: jnp.asarray(rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 2), dtype)
         for name, shape in shapes.items()}
        for _ in range(steps)
    ]


@pytest.mark.parametrize("jit, dtype, factorization", [
    (False, jnp.float64, "matrix"), (True, jnp.float64, "matrix"),
    (True, jnp.float32, "matrix"), (True, jnp.float64, "tensor"),
])
def test_bitwise_equal_to_rule_step(jit, dtype, factorization):
    lr = 0.05
    params = {name: jnp.ones(shape, dtype) for name, shape in SHAPES.items()}
    optimizer = factored_vsgd(lr, factorization=factorization, **SETTINGS)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update) if jit else optimizer.update
    rule_step = (jax.jit(factored_rule.step, static_argnames=("init", "factorization"))
                 if jit else factored_rule.step)
    rule_settings = {k: v for k, v in SETTINGS.items()}
    expected = dict(params)
    expected_states = {
        name: factored_rule.init_state(p, SETTINGS["prior_strength"],
                                       SETTINGS["variance_ratio"], "paper", factorization)
        for name, p in params.items()
    }
    actual = params
    for grads in _stream(8, SHAPES, dtype):
        updates, state = update(grads, state, actual)
        actual = optax.apply_updates(actual, updates)
        for name in SHAPES:
            expected[name], expected_states[name] = rule_step(
                expected[name], grads[name], expected_states[name], lr=lr, weight_decay=0.0,
                factorization=factorization, **rule_settings)
    factored_state = state[0]
    assert isinstance(factored_state, ScaleByFactoredVSGDState)
    # Eagerly the same operations on the same numbers: bitwise. Under jit the leaf is compiled
    # inside two different programs, and XLA may fuse its row and column sums differently
    # (measured: 1 ulp of the array's scale on a few entries, more relative to an entry that
    # cancels to near zero), so there the bound is 8 ulps of each array's largest value.
    ulps = 0.0 if not jit else 8 * float(jnp.finfo(dtype).eps)

    def assert_close(got, want):
        scale = float(jnp.max(jnp.abs(want), initial=0.0))
        np.testing.assert_allclose(got, want, rtol=0, atol=ulps * scale)

    for name in SHAPES:
        assert actual[name].dtype == dtype
        assert_close(actual[name], expected[name])
        for field in factored_rule.FactoredVSGDState._fields:
            assert_close(getattr(factored_state, field)[name],
                         getattr(expected_states[name], field))


def test_weight_decay_equals_rule_up_to_rounding():
    params = {"w": jnp.ones((4, 3))}
    optimizer = factored_vsgd(0.05, weight_decay=0.1, **SETTINGS)
    state = optimizer.init(params)
    expected = params["w"]
    expected_state = factored_rule.init_state(expected, 1e-6, 9.0, "paper")
    actual = params
    for grads in _stream(6, {"w": (4, 3)}, seed=1):
        updates, state = optimizer.update(grads, state, actual)
        actual = optax.apply_updates(actual, updates)
        expected, expected_state = factored_rule.step(
            expected, grads["w"], expected_state, lr=0.05, weight_decay=0.1, **SETTINGS)
    # theta - eta (u + lambda theta) vs theta (1 - eta lambda) - eta u: a few ulps.
    np.testing.assert_allclose(actual["w"], expected, rtol=0, atol=1e-14)


def test_none_gradient_skips_its_leaf():
    params = {"early": jnp.ones((2, 3)), "late": jnp.ones((2, 3))}
    transformation = scale_by_factored_vsgd()
    state = transformation.init(params)
    updates, state = transformation.update({"early": jnp.ones((2, 3)), "late": None}, state)
    assert updates["late"] is None
    assert int(state.step["early"]) == 1 and int(state.step["late"]) == 0
    np.testing.assert_array_equal(state.drift_row_rate["late"],
                                  transformation.init(params).drift_row_rate["late"])


def test_complex_leaf_is_its_real_view_factored():
    rng = np.random.default_rng(2)
    value = rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))
    transformation = scale_by_factored_vsgd()
    complex_state = transformation.init({"z": jnp.asarray(value)})
    real = jnp.stack([value.real, value.imag], axis=-1)
    real_state = transformation.init({"z": real})
    for _ in range(3):
        grad = rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))
        complex_updates, complex_state = transformation.update({"z": jnp.asarray(grad)},
                                                               complex_state)
        real_updates, real_state = transformation.update(
            {"z": jnp.stack([grad.real, grad.imag], axis=-1)}, real_state)
    assert complex_updates["z"].dtype == jnp.complex128
    np.testing.assert_array_equal(jnp.stack([complex_updates["z"].real,
                                             complex_updates["z"].imag], -1), real_updates["z"])
    assert complex_state.drift_column_rate["z"].shape == (4,)  # the real view is (3, 2, 2)


def test_converges_on_a_quadratic():
    target = jnp.arange(6.0).reshape(2, 3)
    loss = lambda params: jnp.sum((params["w"] - target) ** 2)  # noqa: E731
    optimizer = factored_vsgd(0.05)
    params = {"w": jnp.zeros((2, 3))}
    state = optimizer.init(params)
    for _ in range(600):
        updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], target, atol=0.1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(factorization="rows"), r"Invalid factorization: 'rows'"),
    (dict(kappa1=0.5), r"Invalid kappa1: 0\.5"),
    (dict(prior_strength=0.0), r"Invalid prior_strength: 0\.0"),
])
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        factored_vsgd(0.1, **kwargs)
