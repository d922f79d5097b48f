"""Parity of the torch optimizers with the JAX rule, the golden data, and between their paths.

* single-tensor ``VSGD`` vs :func:`vsgd_bayes.rules.vsgd.step` (and ``ConstantVSGD`` vs
  :func:`vsgd_bayes.rules.constant.step`) on random gradient streams with random
  hyperparameters, both initialisations, float64: parameters and every state entry;
* ``VSGD`` vs the golden trajectories of the authors' implementation (``tests/golden.py``);
* the foreach and fused paths vs the single-tensor path over the table ``FAST_PATH_CASES``.
"""

from __future__ import annotations

import importlib.util
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import golden
from vsgd_bayes.rules import constant as constant_rule
from vsgd_bayes.rules import vsgd as rule
from vsgd_bayes.torch import VSGD, ConstantVSGD

#: Both implementations evaluate the same float64 expressions in the same order; they can
#: differ only by rounding (XLA may contract a*b+c into one fused multiply-add), ~1e-16 per
#: operation, so 1e-12 relative to each array's largest value leaves a wide margin.
RULE_RELATIVE_TOLERANCE = 1e-12

#: Fast paths vs single-tensor: float64 1e-12 (rounding of a differently ordered but equal
#: algebraic form); float32 1e-5 (~100 float32 roundings of 6e-8).
FAST_PATH_RELATIVE_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}

STREAMS_PER_INIT = 12  # 24 random streams in all, each with its own hyperparameters

STREAM_STEPS = 12


def assert_relative_close(actual, expected, rtol, what=""):
    """max |actual - expected| <= rtol * max |expected| (scale of the whole array)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    if expected.size == 0:
        return
    scale = max(np.abs(expected).max(), np.finfo(np.float64).tiny)
    error = np.abs(actual - expected).max()
    assert error <= rtol * scale, f"{what}: max error {error:.3e} > {rtol:.0e} * {scale:.3e}"


def random_hyperparameters(rng: np.random.Generator, init: str) -> dict:
    return dict(
        lr=float(10 ** rng.uniform(-3, 0)),
        variance_ratio=float(rng.uniform(0.5, 100.0)),
        prior_strength=float(10 ** rng.uniform(-10, -2)),
        kappa1=float(rng.uniform(0.55, 1.0)),
        kappa2=float(rng.uniform(0.55, 1.0)),
        weight_decay=float(rng.choice([0.0, rng.uniform(0.0, 0.1)])),
        eps=float(rng.choice([0.0, 1e-8])),
        init=init,
    )


def gradient_stream(rng: np.random.Generator, shape, steps: int) -> np.ndarray:
    """Open-loop stream: a slowly drifting true gradient plus noise, with a random scale."""
    scale = 10 ** rng.uniform(-3, 2)
    drift = np.cumsum(rng.normal(size=(steps, *shape)) * 0.1, axis=0) + rng.normal(size=shape)
    return scale * (drift + rng.normal(size=(steps, *shape)) * rng.uniform(0.1, 3.0))


def test_state_keys_equal_the_jax_state_fields():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = VSGD([param])
    param.grad = torch.ones(2)
    optimizer.step()
    assert tuple(optimizer.state[param]) == rule.VSGDState._fields

    constant_optimizer = ConstantVSGD([param])
    constant_optimizer.step()
    assert tuple(constant_optimizer.state[param]) == constant_rule.ConstantVSGDState._fields


@pytest.mark.parametrize("init", ["reference", "paper"])
def test_single_tensor_vsgd_matches_the_jax_rule(init):
    rng = np.random.default_rng(20240406 + (init == "paper"))
    shapes = [(3, 2), (5,), ()]
    for stream in range(STREAMS_PER_INIT):
        hyperparameters = random_hyperparameters(rng, init)
        starts = [rng.normal(size=s) for s in shapes]
        streams = [gradient_stream(rng, s, STREAM_STEPS) for s in shapes]
        params = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in starts]
        optimizer = VSGD(params, foreach=False, **hyperparameters)
        jax_params = [jnp.asarray(x) for x in starts]
        jax_states = [
            rule.init_state(
                x, hyperparameters["prior_strength"], hyperparameters["variance_ratio"],
                hyperparameters["init"],
            )
            for x in jax_params
        ]
        for t in range(STREAM_STEPS):
            for i, param in enumerate(params):
                param.grad = torch.tensor(streams[i][t])
                jax_params[i], jax_states[i] = rule.step(
                    jax_params[i], jnp.asarray(streams[i][t]), jax_states[i], **hyperparameters
                )
            optimizer.step()
        for i, param in enumerate(params):
            what = f"stream {stream} param {i} {hyperparameters}"
            assert_relative_close(param.detach(), jax_params[i], RULE_RELATIVE_TOLERANCE, what)
            state = optimizer.state[param]
            assert int(state["step"]) == int(jax_states[i].step) == STREAM_STEPS
            for field in ("gradient_mean", "drift_rate", "noise_rate"):
                assert_relative_close(
                    state[field], getattr(jax_states[i], field), RULE_RELATIVE_TOLERANCE,
                    f"{field} of {what}",
                )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("init", ["reference", "paper"])
def test_constant_vsgd_matches_the_jax_constant_rule(init, foreach):
    rng = np.random.default_rng(7 + (init == "paper"))
    shapes = [(4, 3), ()]
    for stream in range(STREAMS_PER_INIT):
        hyperparameters = random_hyperparameters(rng, init)
        hyperparameters["kappa"] = hyperparameters.pop("kappa1")
        hyperparameters.pop("kappa2")
        starts = [rng.normal(size=s) for s in shapes]
        streams = [gradient_stream(rng, s, STREAM_STEPS) for s in shapes]
        params = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in starts]
        optimizer = ConstantVSGD(params, foreach=foreach, **hyperparameters)
        jax_params = [jnp.asarray(x) for x in starts]
        jax_states = [
            constant_rule.init_state(x, hyperparameters["prior_strength"]) for x in jax_params
        ]
        for t in range(STREAM_STEPS):
            for i, param in enumerate(params):
                param.grad = torch.tensor(streams[i][t])
                jax_params[i], jax_states[i] = constant_rule.step(
                    jax_params[i], jnp.asarray(streams[i][t]), jax_states[i], **hyperparameters
                )
            optimizer.step()
        for i, param in enumerate(params):
            what = f"stream {stream} param {i} {hyperparameters}"
            assert_relative_close(param.detach(), jax_params[i], RULE_RELATIVE_TOLERANCE, what)
            state = optimizer.state[param]
            for field in ("gradient_mean", "rate"):
                assert_relative_close(
                    state[field], getattr(jax_states[i], field), RULE_RELATIVE_TOLERANCE,
                    f"{field} of {what}",
                )


GOLDEN_PATHS = {
    "single-tensor": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),  # the C++ kernel on CPU
}
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def replay_golden(data: golden.GoldenScenario, dtype: str, path: str):
    """VSGD's (params, mu) after each step of the recorded streams (default init)."""
    params = [
        torch.nn.Parameter(torch.tensor(p.init, dtype=TORCH_DTYPES[dtype]))
        for p in data.parameters
    ]
    optimizer = VSGD(params, **GOLDEN_PATHS[path], **data.hyperparameters)
    params_after, means_after = [[] for _ in params], [[] for _ in params]
    for t in range(data.steps):
        for param, recorded in zip(params, data.parameters):
            param.grad = torch.tensor(recorded.grads[t], dtype=TORCH_DTYPES[dtype])
        optimizer.step()
        for i, param in enumerate(params):
            params_after[i].append(param.detach().double().numpy().copy())
            means_after[i].append(optimizer.state[param]["gradient_mean"].double().numpy().copy())
    return [(np.stack(p), np.stack(m)) for p, m in zip(params_after, means_after)]


@pytest.mark.parametrize("path", GOLDEN_PATHS)
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("scenario", golden.SCENARIOS)
def test_vsgd_follows_the_golden_trajectories(scenario, dtype, path):
    if path == "fused":
        assert fused_available_on_cpu()  # never a silent skip
    data = golden.load(scenario)
    worst_params, worst_mean = golden.worst_errors(data, replay_golden(data, dtype, path))
    # tests/golden.py: the authors' float32 constants, rounded the same way here.
    params_tolerance, mean_tolerance = golden.TOLERANCES[dtype]
    assert worst_params <= params_tolerance, f"max |dtheta| = {worst_params:.3e} lr"
    assert worst_mean <= mean_tolerance, f"max |dmu| = {worst_mean:.3e} max |mu|"


@pytest.mark.parametrize("path", GOLDEN_PATHS)
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_golden_trajectories_fail_with_exact_constants(monkeypatch, dtype, path):
    # Check of the check: exact float64 constants measured 4.5e-4 lr on "defaults".
    golden.use_exact_constants(monkeypatch)
    data = golden.load("defaults")
    worst_params, worst_mean = golden.worst_errors(data, replay_golden(data, dtype, path))
    params_tolerance, mean_tolerance = golden.TOLERANCES[dtype]
    assert worst_params > params_tolerance, worst_params
    assert worst_mean > mean_tolerance, worst_mean


# --------------------------------------------------------------------------------------------
# Fast paths vs single-tensor. Each row: a name and the options of the run; every row runs
# STEPS steps with seeded gradients, then compares params and every state entry.
#   shapes: parameter shapes (a zero-size one in several rows);
#   none_at: {param index: steps at which its grad is None} (freezing / unfreezing);
#   start_at: {param index: first step with a gradient} (a late parameter);
#   complex: index of a complex parameter; options: optimizer hyperparameters.
FAST_PATH_CASES = {
    "mixed shapes": dict(shapes=[(3, 4), (7,), (2, 3, 5), ()]),
    "zero-size parameter": dict(shapes=[(0,), (4,), (3, 0)]),
    "grads None at some steps": dict(shapes=[(5,), (2, 2)], none_at={1: {1, 3, 4}}),
    "late parameter": dict(shapes=[(6,), (3, 2)], start_at={1: 3}),
    "maximize": dict(shapes=[(4,), (2, 3)], options=dict(maximize=True)),
    "weight decay and lr": dict(shapes=[(8,)], options=dict(weight_decay=0.05, lr=0.3)),
    "complex parameter": dict(shapes=[(3,), (2, 2)], complex=1),
    "paper init, custom prior": dict(
        shapes=[(5,)], options=dict(init="paper", prior_strength=1e-5, variance_ratio=4.0)
    ),
    "large parameter": dict(shapes=[(70_000,), (3,)]),  # more than one foreach block on CPU
}
STEPS = 6


def run_case(case: dict, dtype, **paths):
    """Run one table row and return (params, states) after the last step."""
    generator = torch.Generator().manual_seed(0)
    shapes, complex_index = case["shapes"], case.get("complex")
    params = []
    for i, shape in enumerate(shapes):
        value = torch.randn(shape, generator=generator, dtype=dtype)
        if i == complex_index:
            value = torch.complex(value, torch.randn(shape, generator=generator, dtype=dtype))
        params.append(torch.nn.Parameter(value))
    optimizer = VSGD(params, **case.get("options", {}), **paths)
    for t in range(STEPS):
        for i, param in enumerate(params):
            grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            skipped = t in case.get("none_at", {}).get(i, set()) or t < case.get(
                "start_at", {}
            ).get(i, 0)
            param.grad = None if skipped else grad
        optimizer.step()
    return [p.detach().clone() for p in params], [optimizer.state[p] for p in params]


def real(tensor):
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def fused_available_on_cpu() -> bool:
    from vsgd_bayes.torch import _fused

    return _fused.fused_is_available(torch.device("cpu"))


def test_fused_path_is_available_on_cpu_with_a_compiler():
    # The fused rows below must run in CI, not be skipped: with a C++ compiler present the
    # fused kernel must be available on CPU.
    assert shutil.which("gcc") or shutil.which("c++"), "no C++ compiler on this machine"
    assert importlib.util.find_spec("vsgd_bayes.torch._fused") is not None
    assert fused_available_on_cpu()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("path", ["foreach", "fused"])
@pytest.mark.parametrize("case", list(FAST_PATH_CASES), ids=list(FAST_PATH_CASES))
def test_fast_paths_match_the_single_tensor_path(case, path, dtype):
    if path == "fused":
        assert fused_available_on_cpu()  # never a silent skip (see the test above)
    options = FAST_PATH_CASES[case]
    expected_params, expected_states = run_case(options, dtype, foreach=False, fused=False)
    paths = dict(foreach=path == "foreach", fused=path == "fused")
    params, states = run_case(options, dtype, **paths)
    rtol = FAST_PATH_RELATIVE_TOLERANCE[dtype]
    for i, (param, expected) in enumerate(zip(params, expected_params)):
        assert param.dtype == expected.dtype
        assert_relative_close(real(param), real(expected), rtol, f"{case}: param {i}")
        state, expected_state = states[i], expected_states[i]
        assert set(state) == set(expected_state)
        for key in expected_state:
            assert state[key].dtype == expected_state[key].dtype, key
            assert_relative_close(
                real(state[key]), real(expected_state[key]), rtol, f"{case}: {key} of param {i}"
            )
