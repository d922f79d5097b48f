"""The fused CPU kernel of CurvatureKalmanVSGD (``_curvature_fused.py``, ``curvature_cpu.cpp``).

float64 parity of the fused path with the single-tensor path and with the JAX rule
(parameters and every state entry, both step variances, both curvature steps, weight decay,
maximize, several shapes, a parameter without a gradient at some steps, so mixed step counts
in one call), float32 parity with the single-tensor path, state dicts moving between the
paths, the choice of the default path, the errors, and checks of the checks (a wrong
per-tensor scalar makes the parity fail). The generic behaviours (hooks, dtypes, state dicts,
flags) run on the fused path from the row in ``tests/test_torch_battery.py``.
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules import curvature as curvature_rule
from vsgd_bayes.torch import CurvatureKalmanVSGD, _functional
from vsgd_bayes.torch import _curvature_fused as fused

#: float64: the kernel evaluates the rule's expressions in the rule's order (no fused
#: multiply-add: built with -ffp-contract=off), with torch's exp (SLEEF's); after one step
#: every state entry equals the single-tensor path's bit for bit and a parameter differs in
#: the last bit where torch's vectorised sqrt is not correctly rounded (measured). So
#: rounding only, amplified by the filter: measured 1e-14 to 2e-14 over 40 steps. 1e-11 of
#: each array's largest value is the tolerance of the other curvature parity tests.
FLOAT64_TOLERANCE = 1e-11
#: float32: the same expressions in float32 (~6e-8 per operation) on both sides, but not
#: the same rounding everywhere (torch's vectorised sqrt is not always correctly rounded, the
#: kernel's is, as the rule's), and the filter amplifies a last-bit difference: P_hh's floor
#: and the trust region switch on signs of differences, m_h is a quotient of gradient
#: differences by displacements, the ratio steps divide by the information. Measured over 40
#: steps: the fused path differs from the single-tensor path by up to 1.3e-4 of an array's
#: scale, and against the float64 run the single-tensor path's own float32 error reaches
#: 7e-5, the fused path's 1.9e-4. 5e-4 bounds all three; a wrong scalar gives errors of
#: order 1 (the check of the check).
FLOAT32_TOLERANCE = 5e-4

SHAPES = [(4, 3), (5,), (), (2, 3, 7), (0,), (70,)]
SKIPPED = {1: (2, 3), 3: (0, 1, 2)}  # parameter index -> steps without a gradient


@pytest.fixture(scope="module", autouse=True)
def kernel():
    # `make setup` builds the kernel; a machine where it cannot be built fails here, loudly,
    # as VSGD's fused tests do, instead of passing without checking anything.
    assert fused.curvature_fused_is_available("cpu"), (
        f"the fused CurvatureKalmanVSGD kernel cannot be built: {fused._cpu_error}"
    )


def relative_errors(actual: dict, expected: dict) -> dict:
    errors = {}
    for key, value in expected.items():
        a = np.asarray(actual[key], np.float64)
        b = np.asarray(value, np.float64)
        assert a.shape == b.shape, key
        scale = max(np.abs(b).max(initial=0.0), np.finfo(np.float64).tiny)
        errors[key] = float(np.abs(a - b).max(initial=0.0) / scale)
    return errors


def settings_for(step_variance: str, curvature_step: str) -> dict:
    return dict(lr=0.05, initial_drift_to_noise=0.3, initial_curvature_drift_to_noise=2e-2,
                ratio_step_scale=1.5, max_ratio_change=0.7, kappa=0.8, weight_decay=0.03,
                eps=1e-8, step_variance=step_variance, curvature_step=curvature_step)


def run(path: str, settings: dict, *, dtype=torch.float64, steps=32, maximize=False,
        seed=0, rule=False):
    """The parameters and every state entry after ``steps`` steps on a gradient stream that
    follows the parameters (a quadratic plus noise), and those of the JAX rule (``rule``)."""
    rng = np.random.default_rng(seed)
    start = [rng.normal(size=s) for s in SHAPES]
    params = [torch.nn.Parameter(torch.tensor(x, dtype=dtype)) for x in start]
    optimizer = CurvatureKalmanVSGD(params, **settings, maximize=maximize,
                                    foreach=path == "foreach", fused=path == "fused")
    rule_params = [jnp.asarray(x) for x in start]
    rule_states = [
        curvature_rule.init_state(p, settings["lr"], settings["initial_drift_to_noise"],
                                  settings["initial_curvature_drift_to_noise"])
        for p in rule_params
    ]
    rule_settings = {k: v for k, v in settings.items() if not k.startswith("initial_")}
    curvature = [rng.uniform(0.5, 3.0, size=s) for s in SHAPES]
    for t in range(steps):
        for i, param in enumerate(params):
            noise = rng.normal(size=SHAPES[i])
            if t in SKIPPED.get(i, ()):
                param.grad = None  # skipped: its step does not advance
                continue
            grad = 0.3 * (curvature[i] * param.detach().double().numpy() + noise)
            param.grad = torch.tensor(grad, dtype=dtype)
            if rule:
                observed = -grad if maximize else grad
                rule_params[i], rule_states[i] = curvature_rule.step(
                    rule_params[i], jnp.asarray(observed), rule_states[i], **rule_settings
                )
        optimizer.step()
    result, expected = {}, {}
    for i, param in enumerate(params):
        result[f"param {i}"] = param.detach().double().numpy()
        expected[f"param {i}"] = rule_params[i]
        state = optimizer.state[param]
        assert tuple(state) == curvature_rule.CurvatureKalmanVSGDState._fields
        result[f"param {i} step"] = state["step"].numpy()
        expected[f"param {i} step"] = np.asarray(rule_states[i].step)
        for key in curvature_rule.CurvatureKalmanVSGDState._fields[1:]:
            result[f"param {i} {key}"] = state[key].double().numpy()
            expected[f"param {i} {key}"] = getattr(rule_states[i], key)
    return result, (expected if rule else None)


def worst(errors: dict) -> tuple[str, float]:
    key = max(errors, key=errors.get)
    return key, errors[key]


@pytest.mark.parametrize("curvature_step", hp.CURVATURE_STEPS)
@pytest.mark.parametrize("step_variance", ["predictive", "posterior"])
def test_fused_float64_equals_the_single_tensor_path_and_the_rule(step_variance, curvature_step):
    settings = settings_for(step_variance, curvature_step)
    maximize = (step_variance, curvature_step) == ("posterior", "trust_region")
    result, expected = run("fused", settings, maximize=maximize, rule=True)
    key, error = worst(relative_errors(result, expected))
    assert error <= FLOAT64_TOLERANCE, (key, error)
    single, _ = run("single_tensor", settings, maximize=maximize)
    key, error = worst(relative_errors(result, single))
    assert error <= FLOAT64_TOLERANCE, (key, error)
    # every step count is the rule's, the skipped parameters' included
    assert result["param 1 step"] == 32 - 2 and result["param 3 step"] == 32 - 3


@pytest.mark.parametrize("curvature_step", hp.CURVATURE_STEPS)
@pytest.mark.parametrize("step_variance", ["predictive", "posterior"])
def test_fused_float32_equals_the_single_tensor_path(step_variance, curvature_step):
    settings = settings_for(step_variance, curvature_step)
    result, _ = run("fused", settings, dtype=torch.float32, steps=40)
    single, _ = run("single_tensor", settings, dtype=torch.float32, steps=40)
    key, error = worst(relative_errors(result, single))
    assert error <= FLOAT32_TOLERANCE, (key, error)
    # and as accurate as the single-tensor path against the float64 run
    exact, _ = run("single_tensor", settings, dtype=torch.float64, steps=40)
    for float32_run in (result, single):
        key, error = worst(relative_errors(float32_run, exact))
        assert error <= FLOAT32_TOLERANCE, (key, error)


@pytest.mark.parametrize("wrong", ["swapped scalars", "another kappa"])
def test_the_parity_check_sees_a_wrong_step_scalar(monkeypatch, wrong):
    # check of the check: the kernel handed (c / t, t^-kappa) in the wrong order, or the
    # weight of another kappa, differs from the single-tensor path far beyond the tolerance
    settings = settings_for("predictive", "none")
    single, _ = run("single_tensor", settings, steps=12)
    result, _ = run("fused", settings, steps=12)
    assert worst(relative_errors(result, single))[1] <= FLOAT64_TOLERANCE
    original = fused.step_scalars

    def wrong_scalars(step, ratio_step_scale, kappa):
        if wrong == "swapped scalars":
            return original(step, ratio_step_scale, kappa)[::-1]
        return original(step, ratio_step_scale, 1.5 - kappa)

    monkeypatch.setattr(fused, "step_scalars", wrong_scalars)
    result, _ = run("fused", settings, steps=12)
    errors = relative_errors(result, single)
    assert errors["param 0 noise_variance"] > 1e3 * FLOAT64_TOLERANCE
    assert worst(errors)[1] > 10 * FLOAT32_TOLERANCE


def _train(optimizer, params, grads):
    for step_grads in grads:
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        optimizer.step()


def _grads(seed, steps, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, dtype=dtype, generator=generator) for s in SHAPES]
            for _ in range(steps)]


@pytest.mark.parametrize("first, then", [("fused", "foreach"), ("foreach", "fused"),
                                         ("fused", "single_tensor")])
def test_a_state_dict_moves_between_the_paths_and_continues_identically(first, then):
    def flags(path):
        return dict(foreach=path == "foreach", fused=path == "fused")

    def make():
        generator = torch.Generator().manual_seed(7)
        return [torch.nn.Parameter(torch.randn(s, dtype=torch.float64, generator=generator))
                for s in SHAPES]

    settings = settings_for("predictive", "trust_region")
    before, after = _grads(1, 10), _grads(2, 10)
    # the reference: one optimizer on the path `then` throughout
    reference_params = make()
    reference = CurvatureKalmanVSGD(reference_params, **settings, **flags(then))
    _train(reference, reference_params, before + after)
    # trained on `first`, saved, loaded into an optimizer on `then`, continued
    params = make()
    optimizer = CurvatureKalmanVSGD(params, **settings, **flags(first))
    _train(optimizer, params, before)
    saved = copy.deepcopy(optimizer.state_dict())
    other_params = make()
    other = CurvatureKalmanVSGD(other_params, **settings, **flags(then))
    _train(other, other_params, before)
    other_saved = other.state_dict()
    # the same entries, shapes and dtypes whatever the path
    for index, state in saved["state"].items():
        for key, value in state.items():
            twin = other_saved["state"][index][key]
            assert value.shape == twin.shape and value.dtype == twin.dtype, key
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = CurvatureKalmanVSGD(resumed_params, **settings, **flags(then))
    resumed.load_state_dict(saved)
    resumed.param_groups[0].update(flags(then))  # the loaded group carries `first`'s flags
    _train(resumed, resumed_params, after)
    for i, (param, expected) in enumerate(zip(resumed_params, reference_params)):
        actual = {k: v for k, v in resumed.state[param].items()}
        actual["param"] = param.detach()
        target = {k: v for k, v in reference.state[expected].items()}
        target["param"] = expected.detach()
        key, error = worst(relative_errors(actual, target))
        assert error <= FLOAT64_TOLERANCE, (i, key, error)


def test_fused_and_foreach_together_are_an_error():
    with pytest.raises(ValueError, match="foreach=True and fused=True are mutually exclusive"):
        CurvatureKalmanVSGD([torch.nn.Parameter(torch.zeros(2))], foreach=True, fused=True)


def test_fused_on_a_device_without_the_kernel_fails_before_anything_changes():
    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    param.grad = torch.ones(3, device="meta")
    optimizer = CurvatureKalmanVSGD([param], fused=True)
    with pytest.raises(RuntimeError, match="fused CurvatureKalmanVSGD kernel is not available "
                                           "on meta"):
        optimizer.step()
    assert not optimizer.state[param]
    assert not fused.curvature_fused_is_available("meta")
    assert not fused.curvature_fused_is_available("cuda")


def _functional_lists(param_dtype, state_dtype):
    param = torch.ones(3, dtype=param_dtype)
    state = [torch.zeros(3, dtype=state_dtype) for _ in range(8)]
    return ([param], [torch.ones(3, dtype=param_dtype)], *[[s] for s in state],
            [torch.zeros(2, 5, 3, dtype=state_dtype)], [torch.zeros(2, 3, dtype=state_dtype)],
            [param.to(state_dtype)], [torch.tensor(0.0)])


@pytest.mark.parametrize("param_dtype, state_dtype, message", [
    (torch.float32, torch.bfloat16, r"supports state of dtype .* got torch\.bfloat16"),
    (torch.float16, torch.float16, r"supports state of dtype .* got torch\.float16"),
    (torch.float32, torch.float64, r"got torch\.float64 for a torch\.float32 parameter"),
    (torch.complex64, torch.complex64, r"supports parameters of dtypes .* got torch\.complex64"),
])
def test_unsupported_dtypes_are_named_and_nothing_changes(param_dtype, state_dtype, message):
    lists = _functional_lists(param_dtype, state_dtype)
    snapshot = [t.clone() for column in lists for t in column]
    with pytest.raises(TypeError, match=message):
        fused.fused_curvature_kalman_vsgd(
            *lists, lr=0.1, ratio_step_scale=2.0, max_ratio_change=1.0, kappa=0.8,
            weight_decay=0.0, eps=0.0, maximize=False,
        )
    assert all(torch.equal(a, b) for a, b in zip(snapshot, [t for c in lists for t in c]))


def test_16_bit_parameters_step_with_float32_state_like_the_single_tensor_path():
    settings = settings_for("predictive", "none")
    for dtype in (torch.bfloat16, torch.float16):
        results = []
        for path in ("fused", "single_tensor"):
            generator = torch.Generator().manual_seed(3)
            param = torch.nn.Parameter(torch.randn(40, generator=generator).to(dtype))
            optimizer = CurvatureKalmanVSGD([param], **settings, fused=path == "fused",
                                            foreach=False)
            for _ in range(10):
                param.grad = (2.0 * param.detach().float()
                              + torch.randn(40, generator=generator)).to(dtype)
                optimizer.step()
            assert optimizer.state[param]["gradient_mean"].dtype == torch.float32
            results.append({"param": param.detach().float(),
                            **{k: v for k, v in optimizer.state[param].items()}})
        errors = relative_errors(*results)
        # one rounding of theta to 16 bits per step on each side; an element whose float32
        # values straddle a 16-bit rounding boundary differs by one 16-bit ulp
        assert errors["param"] <= 2 * float(torch.finfo(dtype).eps), (dtype, errors["param"])
        assert errors["noise_variance"] <= 0.05, dtype


def test_the_default_is_fused_on_cpu_only_when_the_kernel_is_built(monkeypatch):
    params = [torch.zeros(3), torch.zeros(2, dtype=torch.float64)]
    name = "vsgd_bayes.torch._curvature_fused"
    assert _functional.default_fused(params, name) is True
    called = []
    monkeypatch.setattr(fused, "fused_curvature_kalman_vsgd",
                        lambda *a, **k: called.append("fused"))
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.ones(3)
    CurvatureKalmanVSGD([param]).step()
    assert called == ["fused"]
    # not built: the default is foreach, and nothing is built or loaded
    monkeypatch.setattr(fused, "cpu_kernel_is_built", lambda: False)
    monkeypatch.setattr(fused, "curvature_fused_is_available",
                        lambda device: pytest.fail("a default must not load the kernel"))
    monkeypatch.setattr(fused, "fused_is_available",
                        lambda device: pytest.fail("a default must not load the kernel"))
    assert _functional.default_fused(params, name) is False
    CurvatureKalmanVSGD([param]).step()
    assert called == ["fused"]


def test_the_build_command_builds_both_kernels_and_reports_a_failure(monkeypatch, capsys):
    from vsgd_bayes.torch import _fused, build

    monkeypatch.setattr(build, "cpu_kernel_is_built", lambda: True)
    monkeypatch.setattr(build, "build_cpu_kernel", lambda: "/cache/vsgd_fused_cpu_x.so")
    monkeypatch.setattr(fused, "cpu_kernel_is_built", lambda: True)
    monkeypatch.setattr(fused, "build_cpu_kernel", lambda: "/cache/curvature_fused_cpu_x.so")
    assert build.main() == 0
    out = capsys.readouterr().out
    assert "already built: /cache/vsgd_fused_cpu_x.so" in out
    assert "CurvatureKalmanVSGD CPU kernel already built: /cache/curvature_fused_cpu_x.so" in out

    def fails():
        raise RuntimeError("could not be built: OSError: no compiler")

    monkeypatch.setattr(fused, "build_cpu_kernel", fails)
    assert build.main() == 1
    captured = capsys.readouterr()
    assert "vsgd_fused_cpu_x.so" in captured.out  # VSGD's kernel is still reported
    assert "no compiler" in captured.err and "CurvatureKalmanVSGD will default" in captured.err
    assert _fused.cpu_extension_name() != fused.cpu_extension_name()


def test_non_contiguous_parameters_and_a_gradient_of_another_dtype_step_as_single_tensor():
    # stepped through contiguous copies written back; a float32 gradient of a float64
    # parameter is cast to the state dtype, as the single-tensor path casts it
    settings = settings_for("predictive", "trust_region")
    results = []
    for path in ("fused", "single_tensor"):
        generator = torch.Generator().manual_seed(4)
        param = torch.nn.Parameter(torch.randn(6, 5, dtype=torch.float64, generator=generator).t())
        assert not param.is_contiguous()
        param.grad_dtype = None  # torch 2.13 refuses a gradient of another dtype otherwise
        optimizer = CurvatureKalmanVSGD([param], **settings, fused=path == "fused", foreach=False)
        for _ in range(8):
            grad = 2.0 * param.detach() + torch.randn(5, 6, dtype=torch.float64,
                                                      generator=generator)
            param.grad = grad.float()
            optimizer.step()
        results.append({"param": param.detach(), **dict(optimizer.state[param])})
    key, error = worst(relative_errors(*results))
    assert error <= FLOAT64_TOLERANCE, (key, error)
