"""Tests of vsgd_bayes.optax.kalman: bitwise equality with kalman_rule.step, the direction,
weight decay, None gradients, complex leaves, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vsgd_bayes.optax.kalman import ScaleByKalmanVSGDState, kalman_vsgd, scale_by_kalman_vsgd
from vsgd_bayes.rules import kalman as kalman_rule

SETTINGS = dict(initial_drift_to_noise=0.05, ratio_step_scale=1.5, max_ratio_change=0.7,
                kappa=0.9, eps=0.0)
RULE_SETTINGS = {k: v for k, v in SETTINGS.items() if k != "initial_drift_to_noise"}


def _stream(steps, shapes, dtype=jnp.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {name: jnp.asarray(rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 2), dtype)
         for name, shape in shapes.items()}
        for _ in range(steps)
    ]


SHAPES = {"w": (4, 3), "b": (3,)}


@pytest.mark.parametrize("step_variance", ["posterior", "predictive"])
@pytest.mark.parametrize("jit, dtype", [(False, jnp.float64), (True, jnp.float64),
                                        (True, jnp.float32)])
def test_bitwise_equal_to_rule_step(jit, dtype, step_variance):
    lr = 0.05
    params = {name: jnp.ones(shape, dtype) for name, shape in SHAPES.items()}
    optimizer = kalman_vsgd(lr, **SETTINGS, step_variance=step_variance)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update) if jit else optimizer.update
    rule_step = (
        jax.jit(kalman_rule.step, static_argnames=("step_variance",)) if jit
        else kalman_rule.step
    )
    expected = dict(params)
    expected_states = {
        name: kalman_rule.init_state(p, SETTINGS["initial_drift_to_noise"])
        for name, p in params.items()
    }
    actual = params
    for grads in _stream(10, SHAPES, dtype):
        updates, state = update(grads, state, actual)
        actual = optax.apply_updates(actual, updates)
        for name in SHAPES:
            expected[name], expected_states[name] = rule_step(
                expected[name], grads[name], expected_states[name], lr=lr, weight_decay=0.0,
                step_variance=step_variance, **RULE_SETTINGS,
            )
    kalman_state = state[0]
    assert isinstance(kalman_state, ScaleByKalmanVSGDState)
    for name in SHAPES:
        assert actual[name].dtype == dtype
        np.testing.assert_array_equal(actual[name], expected[name])
        for field in kalman_rule.KalmanVSGDState._fields:
            np.testing.assert_array_equal(getattr(kalman_state, field)[name],
                                          getattr(expected_states[name], field))


def test_weight_decay_equals_rule_up_to_rounding():
    params = {"w": jnp.ones((4, 3))}
    optimizer = kalman_vsgd(0.05, weight_decay=0.1, **SETTINGS)
    state = optimizer.init(params)
    expected, expected_state = params["w"], kalman_rule.init_state(params["w"], 0.05)
    actual = params
    for grads in _stream(6, {"w": (4, 3)}, seed=1):
        updates, state = optimizer.update(grads, state, actual)
        actual = optax.apply_updates(actual, updates)
        expected, expected_state = kalman_rule.step(
            expected, grads["w"], expected_state, lr=0.05, weight_decay=0.1, **RULE_SETTINGS
        )
    # theta - eta (u + lambda theta) vs theta (1 - eta lambda) - eta u: a few ulps.
    np.testing.assert_allclose(actual["w"], expected, rtol=0, atol=1e-14)


def test_none_gradient_skips_its_leaf_and_counters_are_per_leaf():
    params = {"early": jnp.ones(3), "late": jnp.ones(3)}
    transformation = scale_by_kalman_vsgd(**SETTINGS)
    state = transformation.init(params)
    late_state = kalman_rule.init_state(params["late"], 0.05)
    for t, grads in enumerate(_stream(5, {"early": (3,), "late": (3,)}, seed=2)):
        late = grads["late"] if t >= 3 else None
        before = state
        updates, state = transformation.update({"early": grads["early"], "late": late}, state)
        if late is None:
            assert updates["late"] is None
            for field in kalman_rule.KalmanVSGDState._fields:
                np.testing.assert_array_equal(getattr(state, field)["late"],
                                              getattr(before, field)["late"])
        else:
            variance, late_state = kalman_rule.posterior_update(late, late_state, **{
                k: v for k, v in RULE_SETTINGS.items() if k != "eps"})
            np.testing.assert_array_equal(
                updates["late"],
                kalman_rule.normalized_direction(late_state.gradient_mean, variance, 0.0),
            )
    assert {k: int(v) for k, v in state.step.items()} == {"early": 5, "late": 2}


def test_complex_leaf_equals_real_imaginary_pair():
    stream = _stream(5, {"re": (3,), "im": (3,)}, seed=3)
    transformation = scale_by_kalman_vsgd(**SETTINGS)
    complex_state = transformation.init({"z": jnp.zeros(3, jnp.complex128)})
    pair_state = transformation.init({"z": jnp.zeros((3, 2))})
    for grads in stream:
        complex_updates, complex_state = transformation.update(
            {"z": jax.lax.complex(grads["re"], grads["im"])}, complex_state)
        pair_updates, pair_state = transformation.update(
            {"z": jnp.stack([grads["re"], grads["im"]], -1)}, pair_state)
        np.testing.assert_array_equal(jnp.real(complex_updates["z"]), pair_updates["z"][..., 0])
        np.testing.assert_array_equal(jnp.imag(complex_updates["z"]), pair_updates["z"][..., 1])
    assert complex_state.innovation_variance["z"].shape == (3, 2)


def test_converges_on_a_parabola():
    loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
    optimizer = kalman_vsgd(0.1)
    params = {"w": jnp.zeros(2)}

    @jax.jit
    def run(params):
        def advance(carry, _):
            params, state = carry
            updates, state = optimizer.update(jax.grad(loss)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(advance, (params, optimizer.init(params)), None, 300)
        return params

    np.testing.assert_allclose(run(params)["w"], 3.0, atol=0.1)


def test_inject_hyperparams_under_jit_equals_fixed_hyperparameters():
    params = {"w": jnp.ones((4, 3))}
    fixed = kalman_vsgd(0.05, **SETTINGS)
    injected = optax.inject_hyperparams(kalman_vsgd)(learning_rate=0.05, **SETTINGS)
    results = []
    for optimizer in (fixed, injected):
        state, current = optimizer.init(params), params
        update = jax.jit(optimizer.update)
        for grads in _stream(4, {"w": (4, 3)}, seed=4):
            updates, state = update(grads, state, current)
            current = optax.apply_updates(current, updates)
        results.append(current["w"])
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(initial_drift_to_noise=0.0), "Invalid initial_drift_to_noise: 0.0"),
    (dict(ratio_step_scale=-1.0), "Invalid ratio_step_scale: -1.0"),
    (dict(max_ratio_change=0.0), "Invalid max_ratio_change: 0.0"),
    (dict(kappa=0.5), "Invalid kappa: 0.5"),
    (dict(eps=-1e-8), "Invalid eps"),
    (dict(learning_rate=-0.1), "Invalid lr: -0.1"),
    (dict(weight_decay=float("nan")), "Invalid weight_decay"),
])
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kalman_vsgd(**kwargs)
