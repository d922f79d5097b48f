"""Tests of vsgd_bayes.rules.kalman: first step, bounds, jit, dtypes, scale invariance on a
digits MLP (with the epsilon and VSGD twins that break it), PyTorch's toy problem, and
identification of the gain from two starts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules import kalman as kalman_rule
from vsgd_bayes.rules import vsgd as rule


def test_first_step_from_the_scale_free_start():
    gradient = jnp.array([0.3, -2.0, 1e-4, 50.0])
    state = kalman_rule.init_state(gradient, initial_drift_to_noise=0.01)
    _, state = kalman_rule.step(jnp.zeros(4), gradient, state)
    gain = 2.0 / (1.0 + math.sqrt(1.0 + 4.0 / 0.01))
    np.testing.assert_allclose(state.gradient_mean, gain * gradient, rtol=1e-14)
    np.testing.assert_allclose(state.innovation_variance, gradient**2, rtol=1e-14)  # S_1 = v_1^2
    np.testing.assert_allclose(state.gain_sensitivity, gradient, rtol=1e-14)
    # s_0 = 0: the first score is 0 and ln lambda does not move.
    np.testing.assert_allclose(state.log_drift_to_noise, math.log(0.01), rtol=1e-14)


def test_step_is_bounded_by_learning_rate_and_finite():
    key = jax.random.PRNGKey(0)
    params = jnp.zeros(1000)
    state = kalman_rule.init_state(params)
    lr = 0.1
    for t in range(30):
        scale = 10.0 ** (t % 7 - 3)
        gradient = jax.random.normal(jax.random.fold_in(key, t), (1000,)) * scale
        gradient = gradient.at[:10].set(0.0)  # coordinates whose gradient is always 0
        new_params, state = kalman_rule.step(params, gradient, state, lr=lr)
        assert float(jnp.max(jnp.abs(new_params - params))) <= lr
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in state[1:])
        params = new_params
    assert float(jnp.max(jnp.abs(params[:10]))) == 0.0  # 0/0 turned into 0 by eps


def test_log_ratio_stays_in_bounds_on_a_noiseless_stream():
    # A constant gradient: no noise at all, lambda -> infinity, held at its bound.
    state = kalman_rule.init_state(jnp.zeros(2, jnp.float32))
    for t in range(200):
        gradient = jnp.array([1.0, -3.0], jnp.float32) * (1.0 + 0.01 * t)
        _, state = kalman_rule.step(jnp.zeros(2, jnp.float32), gradient, state)
    assert bool(jnp.all(jnp.isfinite(state.log_drift_to_noise)))
    assert float(jnp.max(state.log_drift_to_noise)) <= hp.LOG_RATIO_BOUND * (1 + 1e-6)


def test_jitted_step_does_not_retrace():
    traces = []

    def counted(params, gradient, state):
        traces.append(1)
        return kalman_rule.step(params, gradient, state)

    step = jax.jit(counted)
    params, state = jnp.ones(3), kalman_rule.init_state(jnp.ones(3))
    params, state = step(params, jnp.array([0.1, 0.2, 0.3]), state)
    params, state = step(params, jnp.array([-0.1, 0.5, 0.0]), state)
    assert len(traces) == 1 and int(state.step) == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_low_precision_params_keep_dtype_state_is_float32(dtype):
    params = jnp.ones(4, dtype)
    state = kalman_rule.init_state(params)
    assert all(x.dtype == jnp.float32 for x in state[1:])
    new_params, state = kalman_rule.step(params, jnp.array([0.1, -0.2, 0.3, 0.0], dtype), state)
    assert new_params.dtype == dtype and state.gradient_mean.dtype == jnp.float32


# --------------------------------------------------------------------------------------------
# Scale invariance (target: <= 1e-6 relative after 1000 steps, float64, eps = 0)
# --------------------------------------------------------------------------------------------

#: Loss multipliers tried; not powers of two, so every product is rounded.
LOSS_SCALES = (1e-3, 1e3)
SCALE_STEPS = 1000
#: float64 rounding of c * g differs from g by ~1e-16 relative per step; the trajectories of a
#: 1000-step MLP training amplify it, but stay far below this budget (measured 1.9e-13 and
#: 3.8e-13 for 1e-3 and 1e3; eps = 1e-8 gives 0.53 and 0.0086, VSGD 0.77 and 4.8).
SCALE_TOLERANCE = 1e-6


def _digits_problem():
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = jnp.asarray(digits.data / 16.0)
    labels = jnp.asarray(digits.target)
    key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    params = {
        "w1": jax.random.normal(k1, (64, 32)) / 8.0, "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 10)) / math.sqrt(32.0), "b2": jnp.zeros(10),
    }
    flat, unravel = ravel_pytree(params)

    def loss(flat, batch):
        p = unravel(flat)
        x, y = inputs[batch], labels[batch]
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(len(y)), y])

    batches = jax.random.randint(jax.random.PRNGKey(1), (SCALE_STEPS, 64), 0, len(labels))
    return flat, loss, batches


def _trajectory(optimizer: str, loss_scale: float, eps: float):
    flat, loss, batches = _digits_problem()
    scaled_gradient = jax.grad(lambda p, b: loss_scale * loss(p, b))
    if optimizer == "kalman":
        state = kalman_rule.init_state(flat)
        step = lambda p, g, s: kalman_rule.step(p, g, s, lr=0.01, eps=eps)
    else:
        state = rule.init_state(flat)
        step = lambda p, g, s: rule.step(p, g, s, lr=0.01, eps=eps)

    def advance(carry, batch):
        params, state = carry
        params, state = step(params, scaled_gradient(params, batch), state)
        return (params, state), None

    (params, _), _ = jax.lax.scan(advance, (flat, state), batches)
    return params, float(loss(params, jnp.arange(1797)))


def _relative_gap(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_trajectory_is_invariant_to_the_loss_scale():
    reference, final_loss = _trajectory("kalman", 1.0, eps=0.0)
    assert final_loss < 0.5  # it trains (initial loss ~2.3): a real trajectory, not a frozen one
    for scale in LOSS_SCALES:
        params, _ = _trajectory("kalman", scale, eps=0.0)
        assert _relative_gap(params, reference) <= SCALE_TOLERANCE, scale


@pytest.mark.parametrize("optimizer, eps", [("kalman", 1e-8), ("vsgd", 0.0)])
def test_scale_invariance_check_catches_what_breaks_it(optimizer, eps):
    # Check of the check: eps = 1e-8 is not small against gradients scaled by 1e-3, and VSGD's
    # start has absolute prior variances; either must show a visible gap.
    reference, _ = _trajectory(optimizer, 1.0, eps=eps)
    params, _ = _trajectory(optimizer, LOSS_SCALES[0], eps=eps)
    assert _relative_gap(params, reference) > SCALE_TOLERANCE


# --------------------------------------------------------------------------------------------
# PyTorch's deterministic toy problem (as in its optimizer tests): 20 steps must reduce
# sum((W x + b)^2) from a random start; VSGD with the reference start fails this mostly.
# --------------------------------------------------------------------------------------------


def _toy_ratio(seed: int, optimizer: str, lr: float = 0.1, steps: int = 20) -> float:
    rng = np.random.default_rng(seed)
    weight, bias, inputs = rng.normal(size=(10, 5)), rng.normal(size=10), rng.normal(size=5)
    params = jnp.asarray(np.concatenate([weight.ravel(), bias]))
    loss = lambda p: jnp.sum((p[:50].reshape(10, 5) @ inputs + p[50:]) ** 2)
    initial = float(loss(params))
    if optimizer == "kalman":
        state = kalman_rule.init_state(params)
        for _ in range(steps):
            params, state = kalman_rule.step(params, jax.grad(loss)(params), state, lr=lr)
    else:
        state = rule.init_state(params)
        for _ in range(steps):
            params, state = rule.step(params, jax.grad(loss)(params), state, lr=lr)
    return float(loss(params)) / initial


def test_toy_problem_never_diverges_over_20_seeds():
    ratios = [_toy_ratio(seed, "kalman") for seed in range(20)]
    assert all(math.isfinite(r) and r < 1.0 for r in ratios), ratios


def test_toy_problem_check_catches_vsgd_reference():
    # Check of the check: the same criterion fails VSGD's reference start on most seeds.
    failures = sum(_toy_ratio(seed, "vsgd") >= 1.0 for seed in range(20))
    assert failures >= 10


# --------------------------------------------------------------------------------------------
# Identification (a small version of benchmarks/kalman_identifiability.py)
# --------------------------------------------------------------------------------------------


def test_gain_is_identified_from_starts_four_decades_apart():
    rng = np.random.default_rng(0)
    coordinates, steps, ratio = 40, 4000, 1e-2
    noise = (10.0 ** rng.uniform(-4, 2, coordinates)) ** 2
    truth = np.cumsum(rng.normal(size=(steps, coordinates)) * np.sqrt(ratio * noise), axis=0)
    observed = jnp.asarray(truth + rng.normal(size=(steps, coordinates)) * np.sqrt(noise))
    oracle_gain = 2.0 / (1.0 + math.sqrt(1.0 + 4.0 / ratio))
    gains = []
    for start in (1.0, 1e-4):
        state = kalman_rule.init_state(observed[0], start)
        state, _ = jax.lax.scan(
            lambda s, g: (kalman_rule.posterior_update(g, s)[1], None), state, observed
        )
        gains.append(np.asarray(kalman_rule.steady_state_gain(state.log_drift_to_noise)[0]))
    # 4000 steps at q/r = 1e-2: the ML gain's spread is ~6% per coordinate; medians within 10%.
    assert np.median(np.abs(np.log(gains[0] / oracle_gain))) < math.log(1.10)
    assert np.median(np.abs(np.log(gains[1] / oracle_gain))) < math.log(1.10)
    assert np.median(np.abs(np.log(gains[0] / gains[1]))) < math.log(1.02)
