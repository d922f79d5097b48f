"""Tests of the optax front end (vsgd_bayes.optax) against the rule, the golden data and torch.

JAX runs in float64 (tests/conftest.py); float32/bfloat16 are asked for explicitly.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import golden
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.optax import ScaleByVSGDState, scale_by_vsgd, vsgd
from vsgd_bayes.rules import vsgd as rule

HYPERPARAMETERS = dict(
    variance_ratio=10.0, prior_strength=1e-3, kappa1=0.7, kappa2=0.95, eps=1e-6
)
SHAPES = {"vector": (5,), "matrix": (3, 4), "scalar": ()}


def _tree(seed, dtype=jnp.float64, shapes=SHAPES):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    return {
        name: jax.random.normal(key, shape, dtype)
        for key, (name, shape) in zip(keys, shapes.items())
    }


def _gradient_stream(steps, seed=0, dtype=jnp.float64, shapes=SHAPES):
    # A noisy drifting signal: the regime VSGD models (true gradient + mini-batch noise).
    return [
        jax.tree.map(lambda g: 0.5 + g, _tree(seed * 1000 + t, dtype, shapes))
        for t in range(steps)
    ]


def _run_optax(optimizer, params, stream, jit):
    def train_step(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # Under jit the whole step is compiled, as the rule's step is: XLA may then fuse the
    # final theta - eta * u (e.g. into one fused multiply-add) identically on both sides.
    train_step = jax.jit(train_step) if jit else train_step
    state = optimizer.init(params)
    for grads in stream:
        params, state = train_step(params, state, grads)
    return params, state


_RULE_STEPS = {}


def _rule_step(jit, **hyperparameters):
    # One compiled step per set of hyperparameters, shared by the tests (compiling is most of
    # the runtime of this file).
    key = (jit, tuple(sorted(hyperparameters.items())))
    if key not in _RULE_STEPS:
        step = functools.partial(rule.step, **hyperparameters)
        _RULE_STEPS[key] = jax.jit(step) if jit else step
    return _RULE_STEPS[key]


def _run_rule(params, stream, jit, **hyperparameters):
    step = _rule_step(jit, **hyperparameters)
    states = jax.tree.map(
        lambda p: rule.init_state(
            p, hyperparameters["prior_strength"], hyperparameters["variance_ratio"],
            hyperparameters.get("init", hp.DEFAULTS["init"]),
        ),
        params,
    )
    is_state = lambda x: isinstance(x, rule.VSGDState)
    for grads in stream:
        pairs = jax.tree.map(step, params, grads, states, is_leaf=is_state)
        is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and is_state(x[1])
        params = jax.tree.map(lambda pair: pair[0], pairs, is_leaf=is_pair)
        states = jax.tree.map(lambda pair: pair[1], pairs, is_leaf=is_pair)
    return params, states


def _field(states, name):
    return jax.tree.map(
        lambda s: getattr(s, name), states, is_leaf=lambda x: isinstance(x, rule.VSGDState)
    )


def _assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


# --- exact equality with the rule -----------------------------------------------------------


@pytest.mark.parametrize("jit, dtype, init", [
    (False, jnp.float64, "reference"),
    (True, jnp.float64, "reference"),
    (True, jnp.float32, "reference"),
    (True, jnp.float64, "paper"),
])
def test_bitwise_equal_to_rule_step(jit, dtype, init):
    """Without weight decay the chain is bitwise the rule: theta + (-(eta * u)) == theta - eta u."""
    lr = 0.05
    params = _tree(1, dtype)
    stream = _gradient_stream(8, dtype=dtype)
    actual_params, actual_state = _run_optax(
        vsgd(lr, **HYPERPARAMETERS, init=init), params, stream, jit
    )
    expected_params, expected_states = _run_rule(
        params, stream, jit, lr=lr, weight_decay=0.0, init=init, **HYPERPARAMETERS
    )
    _assert_trees_equal(actual_params, expected_params)
    vsgd_state = actual_state[0]
    assert isinstance(vsgd_state, ScaleByVSGDState)
    for name in rule.VSGDState._fields:
        _assert_trees_equal(getattr(vsgd_state, name), _field(expected_states, name))


def test_scale_by_vsgd_is_the_rule_direction():
    """The transformation's output is normalized_direction of the rule's posterior update."""
    grads = _tree(2)
    transformation = scale_by_vsgd(**HYPERPARAMETERS)
    state = transformation.init(grads)
    updates, _ = transformation.update(grads, state)
    for name, gradient in grads.items():
        leaf_state = rule.init_state(
            gradient, HYPERPARAMETERS["prior_strength"], HYPERPARAMETERS["variance_ratio"]
        )
        kwargs = {k: v for k, v in HYPERPARAMETERS.items() if k != "eps"}
        variance, leaf_state = rule.posterior_update(gradient, leaf_state, **kwargs)
        expected = rule.normalized_direction(
            leaf_state.gradient_mean, variance, HYPERPARAMETERS["eps"]
        )
        np.testing.assert_array_equal(updates[name], expected)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_weight_decay_equals_rule_up_to_rounding(jit):
    """theta - eta (u + lambda theta) vs theta (1 - eta lambda) - eta u: equal up to rounding.

    Tolerance 1e-14 absolute on O(1) parameters after 12 steps: a few float64 ulps per step.
    """
    lr, weight_decay = 0.05, 0.1
    params = _tree(3)
    stream = _gradient_stream(12, seed=1)
    actual, _ = _run_optax(
        vsgd(lr, weight_decay=weight_decay, **HYPERPARAMETERS), params, stream, jit
    )
    expected, _ = _run_rule(
        params, stream, jit, lr=lr, weight_decay=weight_decay, **HYPERPARAMETERS
    )
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-14)
    # and the decay does act: without it the result is further away than lr * lambda * |theta|
    undecayed, _ = _run_optax(vsgd(lr, **HYPERPARAMETERS), params, stream, jit)
    assert not np.allclose(undecayed["matrix"], expected["matrix"], atol=1e-3)


def test_learning_rate_schedule_used_for_step_and_decay():
    """A schedule eta_t (evaluated at the update count t - 1) scales both the step and the decay."""
    # piecewise constant: its values are products (exact IEEE operations), so the schedule
    # gives the same value jitted and eager (exponential_decay's power may differ by an ulp)
    schedule = optax.piecewise_constant_schedule(0.1, {3: 0.5, 6: 0.3})
    weight_decay = 0.2
    params = _tree(4)
    stream = _gradient_stream(9, seed=2)
    actual, _ = _run_optax(
        vsgd(schedule, weight_decay=weight_decay, **HYPERPARAMETERS), params, stream, True
    )
    expected = params
    states = jax.tree.map(
        lambda p: rule.init_state(
            p, HYPERPARAMETERS["prior_strength"], HYPERPARAMETERS["variance_ratio"]
        ),
        params,
    )
    for t, grads in enumerate(stream):
        for name in params:
            expected[name], states[name] = rule.step(
                expected[name],
                grads[name],
                states[name],
                # optax evaluates the schedule at an int32 count (a float32 value), then casts it
                # to the updates' dtype: the same value as a Python float
                lr=float(schedule(jnp.asarray(t, jnp.int32))),
                weight_decay=weight_decay,
                **HYPERPARAMETERS,
            )
    for name in params:
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=1e-14)


# --- golden trajectories of the authors' implementation -------------------------------------


def _replay_golden(scenario, dtype):
    """vsgd(...)'s (params, mu) after each step of the recorded streams (default init)."""
    hyper = dict(scenario.hyperparameters)
    lr = hyper.pop("lr")
    optimizer = vsgd(lr, **hyper)
    params = [jnp.asarray(p.init, dtype) for p in scenario.parameters]
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    params_after, means_after = [[] for _ in params], [[] for _ in params]
    for t in range(scenario.steps):
        grads = [jnp.asarray(p.grads[t], dtype) for p in scenario.parameters]
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for i, param in enumerate(params):
            assert param.dtype == dtype
            params_after[i].append(np.asarray(param, np.float64))
            means_after[i].append(np.asarray(state[0].gradient_mean[i], np.float64))
    return [(np.stack(p), np.stack(m)) for p, m in zip(params_after, means_after)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", golden.SCENARIOS)
def test_golden_trajectories(name, dtype):
    """Replay the recorded gradient streams through vsgd(...): max |dtheta| <= tol * lr.

    The tolerances are those of tests/golden.py (the authors' float32 constants, rounded the
    same way here).
    """
    scenario = golden.load(name)
    worst_params, worst_mean = golden.worst_errors(scenario, _replay_golden(scenario, dtype))
    params_tolerance, mean_tolerance = golden.TOLERANCES[dtype]
    assert worst_params <= params_tolerance, (name, dtype, worst_params)
    assert worst_mean <= mean_tolerance, (name, dtype, worst_mean)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_golden_trajectories_fail_with_exact_constants(monkeypatch, dtype):
    """Check of the check: exact float64 constants measured 4.5e-4 lr on "defaults"."""
    golden.use_exact_constants(monkeypatch)
    scenario = golden.load("defaults")
    worst_params, worst_mean = golden.worst_errors(scenario, _replay_golden(scenario, dtype))
    params_tolerance, mean_tolerance = golden.TOLERANCES[dtype]
    assert worst_params > params_tolerance, worst_params
    assert worst_mean > mean_tolerance, worst_mean


# --- parity with the torch optimizer --------------------------------------------------------


def test_parity_with_torch_vsgd():
    """Same float64 streams (with some grads None) through optax and torch: <= 1e-12 relative.

    Params and every state entry are compared after every step.
    """
    import torch as torch_module  # imported here: only this test needs torch

    from vsgd_bayes.torch import VSGD

    lr, weight_decay = 0.05, 0.1
    params = _tree(5)
    stream = _gradient_stream(15, seed=3)
    # leaf "scalar" gets no gradient at steps 0-3 and 9 (late start, then a gap)
    for t in (0, 1, 2, 3, 9):
        stream[t] = {**stream[t], "scalar": None}
    optimizer = vsgd(lr, weight_decay=weight_decay, **HYPERPARAMETERS)
    state = optimizer.init(params)
    torch_params = {
        k: torch_module.tensor(np.asarray(v), dtype=torch_module.float64, requires_grad=True)
        for k, v in params.items()
    }
    torch_optimizer = VSGD(
        list(torch_params.values()), lr=lr, weight_decay=weight_decay, init="reference",
        **HYPERPARAMETERS,
    )
    update = jax.jit(optimizer.update)
    for grads in stream:
        updates, state = update(grads, state, params)
        params = jax.tree.map(
            lambda p, u: p if u is None else p + u, params, updates,
            is_leaf=lambda x: x is None,
        )
        for name, tensor in torch_params.items():
            tensor.grad = None if grads[name] is None else torch_module.tensor(
                np.asarray(grads[name]), dtype=torch_module.float64
            )
        torch_optimizer.step()
        for name, tensor in torch_params.items():
            np.testing.assert_allclose(params[name], tensor.detach().numpy(), rtol=1e-12,
                                       atol=1e-15)
            torch_state = torch_optimizer.state[tensor]
            if not torch_state:  # torch builds state lazily: no gradient yet
                assert int(state[0].step[name]) == 0
                continue
            assert int(state[0].step[name]) == int(torch_state["step"])
            for field in ("gradient_mean", "drift_rate", "noise_rate"):
                np.testing.assert_allclose(
                    getattr(state[0], field)[name], torch_state[field].numpy(),
                    rtol=1e-12, atol=0,
                )
    assert int(state[0].step["scalar"]) == 10 and int(state[0].step["vector"]) == 15


# --- jit, checkpointing, inject_hyperparams -------------------------------------------------


def test_no_recompilation_and_state_is_a_pytree():
    traces = []

    optimizer = vsgd(0.1, weight_decay=0.01)

    @jax.jit
    def train_step(params, state, grads):
        traces.append(1)  # runs only while tracing
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = _tree(6, jnp.float32)
    state = optimizer.init(params)
    for grads in _gradient_stream(3, dtype=jnp.float32):
        params, state = train_step(params, state, grads)
    assert len(traces) == 1
    # checkpoint: flatten to arrays, rebuild, continue identically
    leaves, treedef = jax.tree.flatten(state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    restored = jax.tree.unflatten(treedef, [np.asarray(leaf) for leaf in leaves])
    grads = _gradient_stream(4, dtype=jnp.float32)[3]
    _assert_trees_equal(train_step(params, restored, grads)[0],
                        train_step(params, state, grads)[0])


def test_inject_hyperparams():
    """inject_hyperparams(vsgd)(learning_rate=...) runs, and a changed eta takes effect."""
    params = _tree(7)
    stream = _gradient_stream(4, seed=4)
    plain = optax.inject_hyperparams(vsgd)(learning_rate=0.1, **HYPERPARAMETERS)
    expected, _ = _run_optax(vsgd(0.1, **HYPERPARAMETERS), params, stream, jit=False)
    actual, _ = _run_optax(plain, params, stream, jit=False)
    _assert_trees_equal(actual, expected)

    # Under jit every injected hyperparameter (gamma and K_g included) is traced.
    injected = optax.inject_hyperparams(vsgd)(learning_rate=0.1, **HYPERPARAMETERS)
    state = injected.init(params)
    update = jax.jit(injected.update)
    expected, states = _run_rule(params, stream[:2], False, lr=0.1, weight_decay=0.0,
                                 **HYPERPARAMETERS)
    for grads in stream[:2]:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    state.hyperparams["learning_rate"] = jnp.asarray(0.01)
    for grads in stream[2:]:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for name in expected:
            expected[name], states[name] = rule.step(
                expected[name], grads[name], states[name], lr=0.01, **HYPERPARAMETERS
            )
    for name in expected:
        np.testing.assert_allclose(params[name], expected[name], rtol=0, atol=1e-15)


# --- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_preserved(dtype):
    """Updates and parameters keep their dtype; the state is at least float32.

    bfloat16: the chain rounds u to bfloat16 before scaling, the rule rounds once at the end,
    so they differ by at most a few bfloat16 ulps (2^-8 relative) of |theta| + eta.
    """
    lr = 0.1
    params = _tree(8, dtype)
    stream = _gradient_stream(5, seed=5, dtype=dtype)
    optimizer = vsgd(lr, **HYPERPARAMETERS)
    actual, state = _run_optax(optimizer, params, stream, jit=True)
    updates, _ = optimizer.update(stream[0], optimizer.init(params), params)
    for leaf in jax.tree.leaves(updates) + jax.tree.leaves(actual):
        assert leaf.dtype == dtype
    for field in ("gradient_mean", "drift_rate", "noise_rate"):
        for leaf in jax.tree.leaves(getattr(state[0], field)):
            assert leaf.dtype == jnp.float32
    expected, _ = _run_rule(params, stream, True, lr=lr, weight_decay=0.0, **HYPERPARAMETERS)
    for name in params:
        a = np.asarray(actual[name], np.float64)
        e = np.asarray(expected[name], np.float64)
        if dtype == jnp.float32:
            np.testing.assert_array_equal(a, e)
        else:
            assert np.all(np.abs(a - e) <= 4 * 2.0**-8 * (np.abs(e) + lr))


# --- convergence ----------------------------------------------------------------------------


def _minimise(loss, start, optimizer, steps):
    def body(carry, _):
        x, state = carry
        grads = jax.grad(loss)(x)
        updates, state = optimizer.update(grads, state, x)
        return (optax.apply_updates(x, updates), state), None

    (x, _), _ = jax.jit(
        lambda c: jax.lax.scan(body, c, None, length=steps)
    )((start, optimizer.init(start)))
    return x


def test_converges_on_a_parabola():
    """Noiseless ill-conditioned parabola (curvatures 1, 10, 100), start 3 away.

    A sign-like step with constant eta alone would keep oscillating at ~eta = 0.1. VSGD's
    posterior variance shrinks with the residuals, so it anneals itself: measured ~1e-15 after
    2000 steps; 1e-8 leaves room for platform differences while ruling out oscillation.
    """
    curvature = jnp.array([1.0, 10.0, 100.0])
    minimum = jnp.array([1.0, -2.0, 3.0])
    loss = lambda x: 0.5 * jnp.sum(curvature * (x - minimum) ** 2)
    x = _minimise(loss, jnp.zeros(3), vsgd(0.1), 2000)
    assert float(jnp.max(jnp.abs(x - minimum))) < 1e-8


def test_converges_on_rosenbrock():
    """Rosenbrock from (-1.5, 2), eta = 0.01, 5000 steps: f = 0 at (1, 1).

    Measured f ~ 1.5e-11 (Adam, same eta/steps: ~1e-17; f is still ~7e-4 after 2000 steps,
    i.e. while crawling along the valley). f < 1e-6 requires having reached the minimum.
    """
    loss = lambda x: (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2
    x = _minimise(loss, jnp.array([-1.5, 2.0]), vsgd(0.01), 5000)
    assert float(loss(x)) < 1e-6
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-3)


# --- complex leaves, per-leaf counters, masking ---------------------------------------------


def test_complex_leaf_equals_real_imaginary_pair():
    """A complex leaf is VSGD on (Re, Im) pairs; its state is real with a trailing axis of 2."""
    real = _tree(9, shapes={"z": (4, 3)})["z"]
    imaginary = _tree(10, shapes={"z": (4, 3)})["z"]
    stream = _gradient_stream(6, seed=6, shapes={"re": (4, 3), "im": (4, 3)})
    optimizer = vsgd(0.05, weight_decay=0.1, **HYPERPARAMETERS)
    complex_params, complex_state = _run_optax(
        optimizer, {"z": jax.lax.complex(real, imaginary)},
        [{"z": jax.lax.complex(g["re"], g["im"])} for g in stream], jit=True,
    )
    pair_params, pair_state = _run_optax(
        optimizer, {"z": jnp.stack([real, imaginary], -1)},
        [{"z": jnp.stack([g["re"], g["im"]], -1)} for g in stream], jit=True,
    )
    assert complex_params["z"].dtype == jnp.complex128
    # theta - eta * (u + lambda theta) is complex arithmetic for a complex leaf (the real eta
    # multiplies as eta + 0i), which may round differently by an ulp: 1e-15 on O(1) values.
    np.testing.assert_allclose(jnp.real(complex_params["z"]), pair_params["z"][..., 0],
                               rtol=0, atol=1e-15)
    np.testing.assert_allclose(jnp.imag(complex_params["z"]), pair_params["z"][..., 1],
                               rtol=0, atol=1e-15)
    for field in ("gradient_mean", "drift_rate", "noise_rate"):
        leaf = getattr(complex_state[0], field)["z"]
        assert leaf.dtype == jnp.float64 and leaf.shape == (4, 3, 2)
        np.testing.assert_array_equal(leaf, getattr(pair_state[0], field)["z"])


def test_per_leaf_step_counters_with_missing_gradients():
    """A leaf with a None gradient is skipped (state untouched, update None); a zero gradient
    counts. A leaf first updated at step 4 goes through the step-1 branch then."""
    params = _tree(11, shapes={"early": (3,), "late": (3,), "zero": (3,)})
    optimizer = scale_by_vsgd(**HYPERPARAMETERS)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    stream = _gradient_stream(5, seed=7, shapes={"early": (3,), "late": (3,)})
    late_state = rule.init_state(params["late"], HYPERPARAMETERS["prior_strength"],
                                 HYPERPARAMETERS["variance_ratio"])
    for t, grads in enumerate(stream):
        late = grads["late"] if t >= 3 else None
        before = state
        updates, state = update(
            {"early": grads["early"], "late": late, "zero": jnp.zeros(3)}, state
        )
        if late is None:
            assert updates["late"] is None
            for field in rule.VSGDState._fields:
                np.testing.assert_array_equal(getattr(state, field)["late"],
                                              getattr(before, field)["late"])
        else:
            kwargs = {k: v for k, v in HYPERPARAMETERS.items() if k != "eps"}
            variance, late_state = rule.posterior_update(late, late_state, **kwargs)
            np.testing.assert_array_equal(
                updates["late"],
                rule.normalized_direction(late_state.gradient_mean, variance,
                                          HYPERPARAMETERS["eps"]),
            )
    assert {k: int(v) for k, v in state.step.items()} == {"early": 5, "late": 2, "zero": 5}


def test_masked_leaves_have_no_state_and_subtree_added_late():
    """optax.masked: masked-out leaves have no state. A subtree whose state is built after 3
    steps of the others starts at step 1 while the others continue (independent counters)."""
    params = _tree(12, shapes={"weights": (3,), "frozen": (2,)})
    masked = optax.masked(scale_by_vsgd(**HYPERPARAMETERS), {"weights": True, "frozen": False})
    state = masked.init(params)
    assert isinstance(state.inner_state.step["frozen"], optax.MaskedNode)
    stream = _gradient_stream(5, seed=8, shapes={"weights": (3,), "frozen": (2,)})
    for grads in stream:
        updates, state = masked.update(grads, state)
        np.testing.assert_array_equal(updates["frozen"], grads["frozen"])  # passed through
    assert int(state.inner_state.step["weights"]) == 5

    # build the state of "frozen" late and merge it: it starts from the prior at step 1
    transformation = scale_by_vsgd(**HYPERPARAMETERS)
    late = transformation.init({"frozen": params["frozen"]})
    merged = ScaleByVSGDState(*[
        {"weights": getattr(state.inner_state, f)["weights"], "frozen": getattr(late, f)["frozen"]}
        for f in ScaleByVSGDState._fields
    ])
    updates, merged = transformation.update(stream[0], merged)
    assert {k: int(v) for k, v in merged.step.items()} == {"weights": 6, "frozen": 1}
    fresh_updates, _ = transformation.update(
        {"frozen": stream[0]["frozen"]}, transformation.init({"frozen": params["frozen"]})
    )
    np.testing.assert_array_equal(updates["frozen"], fresh_updates["frozen"])


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=-0.1), r"Invalid lr: -0.1 \(must be >= 0\)"),
    (dict(variance_ratio=0.0), r"Invalid variance_ratio: 0.0 \(must be > 0\)"),
    (dict(prior_strength=0.0), r"Invalid prior_strength: 0.0 \(must be > 0\)"),
    (dict(kappa1=0.5), r"Invalid kappa1: 0.5 \(must be in \(0.5, 1\]\)"),
    (dict(kappa2=1.5), r"Invalid kappa2: 1.5"),
    (dict(eps=-1.0), r"Invalid eps: -1.0"),
    (dict(weight_decay=float("nan")), r"Invalid weight_decay: nan \(must be finite\)"),
    (dict(init="authors"), r"Invalid init: 'authors'"),
    (dict(variance_ratio="30"), r"Invalid variance_ratio: '30' \(must be a real scalar\)"),
])
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vsgd(**kwargs)


# --- sharding -------------------------------------------------------------------------------

_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from vsgd_bayes.optax import vsgd

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    key = jax.random.PRNGKey(0)
    params = {"w": jax.random.normal(key, (8, 3)), "b": jnp.arange(4.0)}
    stream = [jax.tree.map(lambda p: 0.3 + jnp.sin(p + t), params) for t in range(5)]
    optimizer = vsgd(0.05, weight_decay=0.1)

    def run(params, stream):
        state = optimizer.init(params)
        update = jax.jit(optimizer.update)
        for grads in stream:
            updates, state = update(grads, state, params)
            params = optax.apply_updates(params, updates)
        return params, state, updates

    plain = run(params, stream)
    put = lambda tree: jax.device_put(tree, sharding)
    sharded = run(put(params), [put(g) for g in stream])
    equal = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain[:2]),
                                                       jax.tree.leaves(sharded[:2])))
    shardings = [leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
                 for leaf in jax.tree.leaves((sharded[0], sharded[2]))
                 + jax.tree.leaves(sharded[1][0].gradient_mean)]
    print(json.dumps(dict(devices=len(jax.devices()), equal=equal, shardings=shardings)))
    """
)


def test_sharded_parameters_on_a_two_device_mesh():
    """Run on 2 forced CPU devices (the flag must precede JAX's start, hence a subprocess):
    results equal the unsharded run bitwise; params, updates and state keep the sharding."""
    root = pathlib.Path(__file__).resolve().parents[1]
    environment = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
                       JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=environment,
                            capture_output=True, text=True, timeout=240, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    assert report["equal"]
    assert report["shardings"] and all(report["shardings"])
