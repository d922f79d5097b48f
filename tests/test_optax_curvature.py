"""Tests of vsgd_bayes.optax.curvature: bitwise equality with curvature_rule.step on a pytree
(float32, float64, eager, jit, both step variances, both curvature steps), parity with the
torch CurvatureKalmanVSGD, schedules, weight decay, None gradients, complex leaves, params
required, validation, and checks of the checks.

The gradients follow the parameters (a quadratic plus noise), so that the displacement of the
gradient's point, the model's input, matters; both sides are fed the same gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.optax import (
    ScaleByCurvatureKalmanVSGDState,
    curvature_kalman_vsgd,
    scale_by_curvature_kalman_vsgd,
)
from vsgd_bayes.rules import curvature as curvature_rule

SETTINGS = dict(initial_drift_to_noise=0.5, initial_curvature_drift_to_noise=3e-2,
                ratio_step_scale=1.5, max_ratio_change=0.7, kappa=0.9, eps=0.0)
RULE_SETTINGS = {k: v for k, v in SETTINGS.items() if not k.startswith("initial_")}
SHAPES = {"w": (4, 3), "b": (3,), "s": ()}
FIELDS = curvature_rule.CurvatureKalmanVSGDState._fields

#: torch against optax, float64, relative to each array's largest value: both evaluate the
#: rule's expressions in the same order, so only rounding differs (~1e-16 per operation, and
#: the two algebraically equal forms of the weight decay), amplified by the filter through the
#: displacement. Measured over 30 steps: 1.1e-12 (trust region, predictive), 6e-14 (none,
#: posterior); the torch port's own bound against the rule (tests/test_torch_curvature.py) is
#: 1e-11, the same here.
TORCH_RELATIVE_TOLERANCE = 1e-11


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(initial=0.0), np.finfo(np.float64).tiny)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


class GradientStream:
    """g_hat = scale (c * theta + noise) per leaf, seeded: a gradient that follows the point."""

    def __init__(self, shapes, seed):
        self.rng = np.random.default_rng(seed)
        self.curvatures = {name: self.rng.uniform(0.5, 3.0, size=shape)
                           for name, shape in shapes.items()}
        self.scale = 10.0 ** self.rng.uniform(-2, 1)

    def __call__(self, params, dtype):
        return {
            name: jnp.asarray(self.scale * (self.curvatures[name] * np.asarray(p, np.float64)
                                            + self.rng.normal(size=np.shape(p))), dtype)
            for name, p in params.items()
        }


def _start(seed, dtype, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=shape), dtype) for name, shape in shapes.items()}


_RULE_STEPS = {}


def _rule_step(jit):
    # One compiled rule step for the whole file (the options are static, lr traced).
    if jit not in _RULE_STEPS:
        _RULE_STEPS[jit] = (
            jax.jit(curvature_rule.step, static_argnames=("step_variance", "curvature_step"))
            if jit else curvature_rule.step
        )
    return _RULE_STEPS[jit]


def run_against_rule(lr, dtype, step_variance, curvature_step, jit, steps=30, seed=0,
                     stale_point=False):
    """curvature_kalman_vsgd(...) and curvature_rule.step iterated on each leaf, on the same
    gradients. ``stale_point``: the optax side is given the previous step's parameters as
    ``params`` (a wrong displacement), for the check of the check.

    Returns:
        (optax params, rule params, optax state, rule states, coordinates where the trust
        region bound the rate: rate < lr, summed over the steps).
    """
    params = _start(seed, dtype)
    optimizer = curvature_kalman_vsgd(lr, **SETTINGS, step_variance=step_variance,
                                      curvature_step=curvature_step)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update) if jit else optimizer.update
    rule_step = _rule_step(jit)
    expected = dict(params)
    expected_states = {
        name: curvature_rule.init_state(p, lr, SETTINGS["initial_drift_to_noise"],
                                        SETTINGS["initial_curvature_drift_to_noise"])
        for name, p in params.items()
    }
    stream = GradientStream(SHAPES, seed + 1)
    actual, previous, bound = params, params, 0
    for _ in range(steps):
        grads = stream(actual, dtype)
        updates, state = update(grads, state, previous if stale_point else actual)
        previous, actual = actual, optax.apply_updates(actual, updates)
        for name in SHAPES:
            expected[name], expected_states[name] = rule_step(
                expected[name], grads[name], expected_states[name], lr=lr, weight_decay=0.0,
                step_variance=step_variance, curvature_step=curvature_step, **RULE_SETTINGS,
            )
            leaf = expected_states[name]
            rate = curvature_rule.rate_of(leaf.gradient_mean, leaf.curvature_mean, lr,
                                          "trust_region")
            bound += int(jnp.sum(rate < jnp.asarray(lr, rate.dtype)))
    return actual, expected, state[0], expected_states, bound


# --- exact equality with the rule -----------------------------------------------------------


#: Jitted optax against the jitted rule. XLA fuses each program as a whole, and how it rounds
#: a fused expression (multiply-adds, quotients) depends on what else is in the fusion: the
#: jitted rule is not bitwise its own eager self (measured 3e-14 of the largest value after 30
#: steps here), and the two programs differ where the rate depends on the posterior
#: (``"trust_region"``): measured 1.3e-15 in float64 (a few ulps at one step, carried by the
#: filter through the displacement), 0 with ``"none"`` and in float32. 1e-14 of each array's
#: largest value leaves a margin and is below float32's ulp, so float32 stays bitwise. Eager
#: (each operation rounded once, in order) both sides are bitwise equal.
JIT_RELATIVE_TOLERANCE = 1e-14


@pytest.mark.parametrize("curvature_step", hp.CURVATURE_STEPS)
@pytest.mark.parametrize("step_variance", ["predictive", "posterior"])
@pytest.mark.parametrize("jit, dtype", [(False, jnp.float64), (True, jnp.float64),
                                        (False, jnp.float32), (True, jnp.float32)])
def test_equal_to_rule_step(jit, dtype, step_variance, curvature_step):
    """30 steps on a pytree: parameters and every state entry bitwise the rule's (eager), or
    within JIT_RELATIVE_TOLERANCE (jitted)."""
    actual, expected, state, expected_states, bound = run_against_rule(
        0.1, dtype, step_variance, curvature_step, jit
    )

    def assert_equal(actual, expected, what):
        if jit:
            assert relative_error(actual, expected) <= JIT_RELATIVE_TOLERANCE, what
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=what)

    assert isinstance(state, ScaleByCurvatureKalmanVSGDState)
    assert int(state.count) == 30
    # the trust region's branch min(lr, |m_g| / m_h) < lr is taken on this stream, so the
    # "trust_region" runs do test it
    assert bound > 0
    for name in SHAPES:
        assert actual[name].dtype == dtype
        assert_equal(actual[name], expected[name], name)
        for field in FIELDS:
            leaf = getattr(state, field)[name]
            assert leaf.dtype == getattr(expected_states[name], field).dtype
            assert_equal(leaf, getattr(expected_states[name], field), f"{name} {field}")


def test_check_of_the_check_a_wrong_point_breaks_the_parity():
    """Given the previous step's parameters as ``params`` (a wrong displacement), the same
    comparison fails far beyond rounding: the parity test sees the point's role."""
    actual, expected, state, expected_states, _ = run_against_rule(
        0.1, jnp.float64, "predictive", "trust_region", jit=True, steps=10, stale_point=True
    )
    assert relative_error(actual["w"], expected["w"]) > 1e-6
    assert relative_error(state.previous_point["w"], expected_states["w"].previous_point) > 1e-6
    assert relative_error(state.gradient_mean["w"], expected_states["w"].gradient_mean) > 1e-6


def test_check_of_the_check_the_curvature_step_changes_the_trajectory():
    """The two curvature steps give different parameters on the stream of the parity test,
    so comparing each with the rule run with the same option tests the option's wiring."""
    none, _, _, _, _ = run_against_rule(0.1, jnp.float64, "predictive", "none", True, steps=15)
    trust, _, _, _, _ = run_against_rule(0.1, jnp.float64, "predictive", "trust_region", True,
                                         steps=15)
    assert relative_error(none["w"], trust["w"]) > 1e-3


def test_weight_decay_equals_rule_up_to_rounding():
    """theta - (u + lr lambda theta) vs theta (1 - lr lambda) - u: a few ulps per step, carried
    by the filter (the displacement enters the prediction): 1e-12 of the largest value."""
    lr, weight_decay = 0.05, 0.1
    params = _start(2, jnp.float64)
    optimizer = curvature_kalman_vsgd(lr, weight_decay=weight_decay, **SETTINGS,
                                      curvature_step="trust_region")
    state = optimizer.init(params)
    expected = dict(params)
    states = {name: curvature_rule.init_state(p, lr, 0.5, 3e-2) for name, p in params.items()}
    stream = GradientStream(SHAPES, 3)
    actual = params
    for _ in range(30):
        grads = stream(actual, jnp.float64)
        updates, state = optimizer.update(grads, state, actual)
        actual = optax.apply_updates(actual, updates)
        for name in SHAPES:
            expected[name], states[name] = curvature_rule.step(
                expected[name], grads[name], states[name], lr=lr, weight_decay=weight_decay,
                curvature_step="trust_region", **RULE_SETTINGS,
            )
    undecayed = dict(params)
    undecayed_states = {name: curvature_rule.init_state(p, lr, 0.5, 3e-2)
                        for name, p in params.items()}
    for name in SHAPES:
        assert relative_error(actual[name], expected[name]) <= 1e-12, name
    # and the decay does act: without it the rule lands elsewhere on the same gradients
    stream = GradientStream(SHAPES, 3)
    for _ in range(30):
        grads = stream(undecayed, jnp.float64)
        for name in SHAPES:
            undecayed[name], undecayed_states[name] = curvature_rule.step(
                undecayed[name], grads[name], undecayed_states[name], lr=lr,
                curvature_step="trust_region", **RULE_SETTINGS,
            )
    assert relative_error(undecayed["w"], expected["w"]) > 1e-4


# --- schedules ------------------------------------------------------------------------------

# piecewise constant: its values are products (exact IEEE operations), so the schedule gives
# the same value jitted and eager
SCHEDULE = optax.piecewise_constant_schedule(0.1, {3: 0.5, 6: 0.3})


def _scheduled_lr(t):
    # optax evaluates the schedule at an int32 count; the rule is given that value as a float
    return float(SCHEDULE(jnp.asarray(t, jnp.int32)))


@pytest.mark.parametrize("weight_decay", [0.0, 0.2])
def test_learning_rate_schedule_is_the_rate_at_the_update_count(weight_decay):
    """A schedule eta_t (at count t - 1) is the step's rate, the trust region's radius and the
    decay's factor; eta_0 sets lambda_h,0. Bitwise the rule without decay."""
    params = _start(4, jnp.float64)
    optimizer = curvature_kalman_vsgd(SCHEDULE, weight_decay=weight_decay, **SETTINGS,
                                      curvature_step="trust_region")
    state = optimizer.init(params)
    update = optimizer.update  # eager, to be bitwise (jitted schedules: the torch parity test)
    expected = dict(params)
    states = {name: curvature_rule.init_state(p, _scheduled_lr(0), 0.5, 3e-2)
              for name, p in params.items()}
    stream = GradientStream(SHAPES, 5)
    actual = params
    for t in range(12):
        grads = stream(actual, jnp.float64)
        updates, state = update(grads, state, actual)
        actual = optax.apply_updates(actual, updates)
        for name in SHAPES:
            expected[name], states[name] = curvature_rule.step(
                expected[name], grads[name], states[name], lr=_scheduled_lr(t),
                weight_decay=weight_decay, curvature_step="trust_region", **RULE_SETTINGS,
            )
    for name in SHAPES:
        if weight_decay == 0.0:
            np.testing.assert_array_equal(actual[name], expected[name])
        else:
            assert relative_error(actual[name], expected[name]) <= 1e-12, name
    # check of the check: the constant first rate gives other parameters
    constant, _, _, _, _ = run_against_rule(0.1, jnp.float64, "predictive", "trust_region",
                                            jit=True, steps=12, seed=4)
    assert relative_error(constant["w"], actual["w"]) > 1e-3


def test_initial_learning_rate_sets_the_curvature_unit():
    """lambda_h,0 = initial_curvature_drift_to_noise / eta_0^2 with eta_0 = the rate, a
    schedule's value at count 0, or ``initial_learning_rate`` (a warm-up's base rate)."""
    params = {"w": jnp.zeros(3)}
    warm_up = lambda count: 0.1 * jnp.minimum(count + 1, 10) / 10  # first rate 0.01

    def start(**kwargs):
        state = scale_by_curvature_kalman_vsgd(
            initial_curvature_drift_to_noise=1e-2, **kwargs
        ).init(params)
        return float(state.log_curvature_drift_to_noise["w"][0])

    base = hp.curvature.initial_log_curvature_drift_to_noise(1e-2, 0.1)
    assert start(learning_rate=0.1) == base
    assert start(learning_rate=warm_up) == pytest.approx(
        hp.curvature.initial_log_curvature_drift_to_noise(1e-2, 0.01), abs=1e-12
    )
    assert start(learning_rate=warm_up, initial_learning_rate=0.1) == base
    assert start(learning_rate=0.0) == hp.curvature.initial_log_curvature_drift_to_noise(
        1e-2, 0.0
    )
    # check of the check: the warm-up's first rate is another unit (ln 100 apart)
    assert abs(start(learning_rate=warm_up) - base) > 4.0


def test_inject_hyperparams_under_jit_equals_fixed_hyperparameters():
    params = _start(6, jnp.float64)
    fixed = curvature_kalman_vsgd(0.05, **SETTINGS, curvature_step="trust_region")
    injected = optax.inject_hyperparams(curvature_kalman_vsgd)(
        learning_rate=0.05, **SETTINGS, curvature_step="trust_region"
    )
    results = []
    for optimizer in (fixed, injected):
        state, current = optimizer.init(params), params
        update = jax.jit(optimizer.update)
        stream = GradientStream(SHAPES, 7)
        for _ in range(6):
            updates, state = update(stream(current, jnp.float64), state, current)
            current = optax.apply_updates(current, updates)
        results.append(current)
    for name in SHAPES:
        np.testing.assert_array_equal(results[0][name], results[1][name])


# --- parity with the torch optimizer --------------------------------------------------------


@pytest.mark.parametrize("step_variance, curvature_step", [("predictive", "trust_region"),
                                                           ("posterior", "none")])
def test_parity_with_torch_curvature_kalman_vsgd(step_variance, curvature_step):
    """Same float64 gradients through optax and torch, with a LambdaLR warm-up (torch records
    its base rate as ``initial_lr``; optax is given it as ``initial_learning_rate``), weight
    decay and a leaf without gradients at some steps: params and every state entry after
    every step within TORCH_RELATIVE_TOLERANCE."""
    import torch

    from vsgd_bayes.torch import CurvatureKalmanVSGD

    base, weight_decay = 0.1, 0.05
    factors = (0.1, 0.4, 0.7, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25)
    schedule = lambda count: base * jnp.asarray(factors)[jnp.minimum(count, len(factors) - 1)]
    params = _start(8, jnp.float64)
    optimizer = curvature_kalman_vsgd(
        schedule, **SETTINGS, weight_decay=weight_decay, step_variance=step_variance,
        curvature_step=curvature_step, initial_learning_rate=base,
    )
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    torch_params = {name: torch.nn.Parameter(torch.tensor(np.asarray(p), dtype=torch.float64))
                    for name, p in params.items()}
    torch_optimizer = CurvatureKalmanVSGD(
        list(torch_params.values()), lr=base, **SETTINGS, weight_decay=weight_decay,
        step_variance=step_variance, curvature_step=curvature_step, foreach=False,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        torch_optimizer, lambda t: factors[min(t, len(factors) - 1)]
    )
    stream = GradientStream(SHAPES, 9)
    worst = 0.0
    for t in range(30):
        grads = stream(params, jnp.float64)
        if t in (0, 1, 2, 17):  # "b" starts late, then skips a step
            grads["b"] = None
        updates, state = update(grads, state, params)
        params = jax.tree.map(lambda p, u: p if u is None else p + u, params, updates,
                              is_leaf=lambda x: x is None)
        for name, tensor in torch_params.items():
            tensor.grad = None if grads[name] is None else torch.tensor(
                np.asarray(grads[name]), dtype=torch.float64)
        torch_optimizer.step()
        scheduler.step()
        for name, tensor in torch_params.items():
            worst = max(worst, relative_error(params[name], tensor.detach().numpy()))
            torch_state = torch_optimizer.state[tensor]
            if not torch_state:  # torch builds its state at the first gradient
                assert int(state[0].step[name]) == 0
                continue
            assert tuple(torch_state) == FIELDS
            assert int(state[0].step[name]) == int(torch_state["step"])
            for field in FIELDS[1:]:
                worst = max(worst, relative_error(getattr(state[0], field)[name],
                                                  torch_state[field].numpy()))
    assert worst <= TORCH_RELATIVE_TOLERANCE, worst
    assert {name: int(v) for name, v in state[0].step.items()} == {"w": 30, "b": 26, "s": 30}
    assert int(state[0].count) == 30


def test_check_of_the_check_torch_parity_sees_the_base_rate():
    """torch without the base rate (no scheduler: lambda_h,0 from lr = 0.01) against optax with
    eta_0 = 0.1 differs far beyond the tolerance in the curvature's ratio."""
    import torch

    from vsgd_bayes.torch import CurvatureKalmanVSGD

    params = _start(10, jnp.float64, {"w": (5,)})
    optimizer = curvature_kalman_vsgd(0.01, **SETTINGS, initial_learning_rate=0.1)
    state = optimizer.init(params)
    tensor = torch.nn.Parameter(torch.tensor(np.asarray(params["w"]), dtype=torch.float64))
    torch_optimizer = CurvatureKalmanVSGD([tensor], lr=0.01, **SETTINGS)
    stream = GradientStream({"w": (5,)}, 11)
    grads = stream(params, jnp.float64)
    _, state = optimizer.update(grads, state, params)
    tensor.grad = torch.tensor(np.asarray(grads["w"]))
    torch_optimizer.step()
    error = relative_error(state[0].log_curvature_drift_to_noise["w"],
                           torch_optimizer.state[tensor]["log_curvature_drift_to_noise"].numpy())
    assert error > 1e3 * TORCH_RELATIVE_TOLERANCE


# --- leaves: None gradients, complex ---------------------------------------------------------


def test_none_gradient_skips_its_leaf_and_counters_are_per_leaf():
    """A None gradient leaves its leaf's state untouched (update None); a leaf first updated
    late starts at step 1 then, with the rate at the global update count."""
    params = _start(12, jnp.float64, {"early": (3,), "late": (3,)})
    transformation = scale_by_curvature_kalman_vsgd(SCHEDULE, **SETTINGS,
                                                    curvature_step="trust_region")
    state = transformation.init(params)
    late_state = curvature_rule.init_state(params["late"], _scheduled_lr(0), 0.5, 3e-2)
    stream = GradientStream({"early": (3,), "late": (3,)}, 13)
    for t in range(6):
        grads = stream(params, jnp.float64)
        late = grads["late"] if t >= 4 else None
        before = state
        updates, state = transformation.update({"early": grads["early"], "late": late}, state,
                                               params)
        if late is None:
            assert updates["late"] is None
            for field in FIELDS:
                np.testing.assert_array_equal(getattr(state, field)["late"],
                                              getattr(before, field)["late"])
        else:
            # the rule's step from the same point, at the schedule's rate at count t (0.05 at
            # t >= 3, not the rate 0.1 of the leaf's own first step)
            new_late, late_state = curvature_rule.step(
                params["late"], late, late_state, lr=_scheduled_lr(t),
                curvature_step="trust_region", **RULE_SETTINGS,
            )
            np.testing.assert_array_equal(params["late"] - updates["late"], new_late)
            for field in FIELDS:
                np.testing.assert_array_equal(getattr(state, field)["late"],
                                              getattr(late_state, field))
        params = {"early": params["early"] - updates["early"],
                  "late": params["late"] if late is None else params["late"] - updates["late"]}
    assert {k: int(v) for k, v in state.step.items()} == {"early": 6, "late": 2}
    assert int(state.count) == 6


def test_complex_leaf_equals_real_imaginary_pair():
    """A complex leaf is the method on (Re, Im) pairs: updates and state bitwise the pair's;
    the state is real with a trailing axis of 2."""
    optimizer = curvature_kalman_vsgd(0.05, **SETTINGS, curvature_step="trust_region")
    start = _start(14, jnp.float64, {"re": (3,), "im": (3,)})
    complex_params = {"z": jax.lax.complex(start["re"], start["im"])}
    pair_params = {"z": jnp.stack([start["re"], start["im"]], -1)}
    complex_state, pair_state = optimizer.init(complex_params), optimizer.init(pair_params)
    stream = GradientStream({"z": (3, 2)}, 15)
    for _ in range(8):
        pair_grads = stream(pair_params, jnp.float64)
        complex_grads = {"z": jax.lax.complex(pair_grads["z"][..., 0], pair_grads["z"][..., 1])}
        complex_updates, complex_state = optimizer.update(complex_grads, complex_state,
                                                          complex_params)
        pair_updates, pair_state = optimizer.update(pair_grads, pair_state, pair_params)
        assert complex_updates["z"].dtype == jnp.complex128
        np.testing.assert_array_equal(jnp.real(complex_updates["z"]), pair_updates["z"][..., 0])
        np.testing.assert_array_equal(jnp.imag(complex_updates["z"]), pair_updates["z"][..., 1])
        complex_params = optax.apply_updates(complex_params, complex_updates)
        pair_params = optax.apply_updates(pair_params, pair_updates)
    for field in FIELDS[1:]:
        leaf = getattr(complex_state[0], field)["z"]
        assert leaf.dtype == jnp.float64 and leaf.shape[-2:] == (3, 2), field
        np.testing.assert_array_equal(leaf, getattr(pair_state[0], field)["z"])
    assert complex_state[0].ratio_sensitivities["z"].shape == (2, 5, 3, 2)


# --- params, jit, convergence ---------------------------------------------------------------


def test_update_without_params_raises_naming_params():
    params = {"w": jnp.ones(3)}
    for transformation in (scale_by_curvature_kalman_vsgd(), curvature_kalman_vsgd()):
        state = transformation.init(params)
        with pytest.raises(ValueError, match=r"needs params: call update\(updates, state, params"):
            transformation.update({"w": jnp.ones(3)}, state)
        # check of the check: with params the same call runs
        transformation.update({"w": jnp.ones(3)}, state, params)


def test_no_recompilation_and_state_is_a_pytree():
    traces = []
    optimizer = curvature_kalman_vsgd(SCHEDULE, weight_decay=0.01,
                                      curvature_step="trust_region")

    @jax.jit
    def train_step(params, state, grads):
        traces.append(1)  # runs only while tracing
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = _start(16, jnp.float32)
    state = optimizer.init(params)
    stream = GradientStream(SHAPES, 17)
    for _ in range(3):
        params, state = train_step(params, state, stream(params, jnp.float32))
    assert len(traces) == 1
    leaves, treedef = jax.tree.flatten(state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    restored = jax.tree.unflatten(treedef, [np.asarray(leaf) for leaf in leaves])
    grads = stream(params, jnp.float32)
    for a, b in zip(jax.tree.leaves(train_step(params, restored, grads)),
                    jax.tree.leaves(train_step(params, state, grads))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("curvature_step", hp.CURVATURE_STEPS)
def test_converges_on_a_parabola(curvature_step):
    """Noiseless parabola, curvatures 1, 10, 100, start 3 away, 400 steps at lr 0.1: within
    0.05 of the minimum (a sign-like step at a constant rate would still move by ~0.1)."""
    curvature = jnp.array([1.0, 10.0, 100.0])
    minimum = jnp.array([1.0, -2.0, 3.0])
    loss = lambda p: 0.5 * jnp.sum(curvature * (p["x"] - minimum) ** 2)
    optimizer = curvature_kalman_vsgd(0.1, curvature_step=curvature_step)

    @jax.jit
    def run(params):
        def advance(carry, _):
            params, state = carry
            updates, state = optimizer.update(jax.grad(loss)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(advance, (params, optimizer.init(params)), None, 400)
        return params

    x = run({"x": jnp.zeros(3)})["x"]
    assert float(jnp.max(jnp.abs(x - minimum))) < 0.05, x


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=-0.1), r"Invalid lr: -0.1 \(must be >= 0\)"),
    (dict(initial_drift_to_noise=0.0), r"Invalid initial_drift_to_noise: 0.0"),
    (dict(initial_curvature_drift_to_noise=1e-13),
     r"Invalid initial_curvature_drift_to_noise: 1e-13 \(must be in \[1e-12, 1e12\]\)"),
    (dict(ratio_step_scale=-1.0), r"Invalid ratio_step_scale: -1.0"),
    (dict(max_ratio_change=0.0), r"Invalid max_ratio_change: 0.0"),
    (dict(kappa=0.5), r"Invalid kappa: 0.5"),
    (dict(eps=-1e-8), r"Invalid eps: -1e-08"),
    (dict(weight_decay=float("nan")), r"Invalid weight_decay: nan \(must be finite\)"),
    (dict(step_variance="prior"), r"Invalid step_variance: 'prior'"),
    (dict(curvature_step="newton"), r"Invalid curvature_step: 'newton' \(must be one of"),
    (dict(initial_learning_rate=-0.1), r"Invalid initial_learning_rate: -0.1 \(must be >= 0\)"),
])
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        curvature_kalman_vsgd(**kwargs)
    if "weight_decay" not in kwargs:  # the scale transformation checks its own arguments
        with pytest.raises(ValueError, match=message):
            scale_by_curvature_kalman_vsgd(**kwargs)


def test_valid_hyperparameters_build():
    # check of the check: the boundaries of the table above are accepted
    curvature_kalman_vsgd(learning_rate=0.0, initial_curvature_drift_to_noise=1e12,
                          ratio_step_scale=0.0, kappa=1.0, eps=0.0, curvature_step="none",
                          step_variance="posterior", initial_learning_rate=0.0)
