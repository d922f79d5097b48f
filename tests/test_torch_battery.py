"""One battery of generic optimizer behaviours, run over every torch optimizer of the package.

Each optimizer is declared once in :data:`ROWS` (after the pattern of PyTorch's own
``OptimizerInfo``): its class, sets of constructor arguments, the errors expected at
construction and at a step (exception type and message), and the execution paths it has.
Every test below runs over every row (and path where the behaviour depends on it): paths vs
single-tensor, complex parameters, tensor lr, param groups, schedulers, steps without
gradients, state dicts (determinism, ``weights_only`` round trip, older and non-tensor-step
dicts), every optimizer hook, deepcopy, printing, errors that leave everything untouched,
mixed dtypes, late parameters, GradScaler and bfloat16.

Equalities between two runs of the same arithmetic are bitwise (``torch.equal``); the
comparison of different paths carries its tolerance and its reason.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from vsgd_bayes.torch import (
    VSGD,
    ConstantVSGD,
    CurvatureKalmanVSGD,
    FactoredVSGD,
    KalmanVSGD,
    KroneckerVSGD,
)


@dataclass(frozen=True)
class StepError:
    """A param-group entry written between steps, and what the next step must raise."""

    key: str
    value: Any
    error: type[Exception]
    message: str


@dataclass(frozen=True)
class OptimizerRow:
    cls: type[torch.optim.Optimizer]
    #: constructor arguments away from the defaults (each set runs the path comparison)
    inputs: tuple[dict[str, Any], ...]
    #: (constructor arguments, exception type, message regex)
    construction_errors: tuple[tuple[dict[str, Any], type[Exception], str], ...]
    step_errors: tuple[StepError, ...]
    paths: tuple[str, ...]
    state_keys: tuple[str, ...]
    #: two different values of hyperparameters for the param-group test
    group_options: dict[str, Any] = field(default_factory=dict)
    #: state_keys[2] starts at a prior value ~ gamma = 1e-8 that float16 would flush to zero
    #: (False for a scale-free start, whose state after a zero gradient is exactly 0)
    prior_scale_in_state: bool = True
    #: the index in state_keys of an entry that is > 0 after a step with a nonzero gradient (a
    #: rate or variance: the 16-bit test checks it was not flushed to zero)
    positive_state_index: int = 2


COMMON_CONSTRUCTION_ERRORS = (
    (dict(lr=-0.1), ValueError, r"Invalid lr: -0\.1 \(must be >= 0\)"),
    (dict(lr=float("nan")), ValueError, r"Invalid lr: nan \(must be finite\)"),
    (dict(lr="0.1"), ValueError, r"Invalid lr: '0\.1' \(must be a real scalar\)"),
    (dict(lr=torch.ones(2)), ValueError, r"Invalid lr: tensor"),
    (dict(variance_ratio=0.0), ValueError, r"Invalid variance_ratio: 0\.0 \(must be > 0\)"),
    (dict(prior_strength=0.0), ValueError, r"Invalid prior_strength: 0\.0 \(must be > 0\)"),
    (dict(weight_decay=-1.0), ValueError, r"Invalid weight_decay: -1\.0 \(must be >= 0\)"),
    (dict(eps=float("inf")), ValueError, r"Invalid eps: inf \(must be finite\)"),
    (dict(init="adam"), ValueError, r"Invalid init: 'adam' \(must be one of"),
    (dict(maximize=1), TypeError, r"Invalid maximize: 1 \(must be a bool\)"),
    (dict(foreach="yes"), TypeError, r"Invalid foreach: 'yes' \(must be a bool or None\)"),
    (dict(schedule_free_momentum=1.0), ValueError,
     r"Invalid schedule_free_momentum: 1\.0 \(must be in \(0, 1\), or None for off\)"),
    (dict(schedule_free_momentum="0.9"), ValueError, r"Invalid schedule_free_momentum: '0\.9'"),
)

COMMON_STEP_ERRORS = (
    StepError("lr", float("nan"), ValueError, r"Invalid lr: nan"),
    StepError("lr", torch.tensor(float("nan")), ValueError, r"Invalid lr: tensor\(nan\)"),
    StepError("prior_strength", -1.0, ValueError, r"Invalid prior_strength: -1\.0"),
    StepError("init", "Paper", ValueError, r"Invalid init: 'Paper'"),
    StepError("maximize", "no", TypeError, r"Invalid maximize: 'no'"),
    StepError("foreach", 2, TypeError, r"Invalid foreach: 2"),
    StepError("schedule_free_momentum", 0.0, ValueError, r"Invalid schedule_free_momentum: 0\.0"),
)

ROWS = {
    "VSGD": OptimizerRow(
        cls=VSGD,
        inputs=(
            dict(),
            dict(lr=0.3, weight_decay=0.1, maximize=True),
        dict(lr=0.05, weight_decay=0.1, schedule_free_momentum=0.9),
            dict(init="paper", prior_strength=1e-5, variance_ratio=4.0, kappa1=0.6, kappa2=1.0,
                 eps=0.0),
        ),
        construction_errors=COMMON_CONSTRUCTION_ERRORS + (
            (dict(kappa1=0.5), ValueError, r"Invalid kappa1: 0\.5 \(must be in \(0\.5, 1\]\)"),
            (dict(kappa2=1.5), ValueError, r"Invalid kappa2: 1\.5 \(must be in \(0\.5, 1\]\)"),
            (dict(fused="no"), TypeError, r"Invalid fused: 'no' \(must be a bool or None\)"),
            (dict(foreach=True, fused=True), ValueError, r"foreach=True and fused=True are "
             r"mutually exclusive"),
        ),
        step_errors=COMMON_STEP_ERRORS + (
            StepError("kappa1", 0.3, ValueError, r"Invalid kappa1: 0\.3"),
            StepError("fused", "yes", TypeError, r"Invalid fused: 'yes'"),
        ),
        paths=("single_tensor", "foreach", "fused"),
        state_keys=("step", "gradient_mean", "drift_rate", "noise_rate"),
        group_options=dict(lr=0.03, prior_strength=1e-4, variance_ratio=3.0, kappa1=0.6,
                           kappa2=0.99, weight_decay=0.1, eps=0.0, init="paper"),
    ),
    "ConstantVSGD": OptimizerRow(
        cls=ConstantVSGD,
        inputs=(
            dict(),
            dict(lr=0.3, weight_decay=0.1, maximize=True),
        dict(lr=0.05, weight_decay=0.1, schedule_free_momentum=0.9),
            dict(init="paper", prior_strength=1e-5, variance_ratio=4.0, kappa=0.6, eps=0.0),
        ),
        construction_errors=COMMON_CONSTRUCTION_ERRORS + (
            (dict(kappa=0.5), ValueError, r"Invalid kappa: 0\.5 \(must be in \(0\.5, 1\]\)"),
            (dict(kappa=float("nan")), ValueError, r"Invalid kappa: nan"),
            # no fused path: the argument does not exist
            (dict(fused=True), TypeError, r"unexpected keyword argument 'fused'"),
        ),
        step_errors=COMMON_STEP_ERRORS + (
            StepError("kappa", 0.3, ValueError, r"Invalid kappa: 0\.3"),
            StepError("variance_ratio", -1.0, ValueError, r"Invalid variance_ratio: -1\.0"),
        ),
        paths=("single_tensor", "foreach"),
        state_keys=("step", "gradient_mean", "rate"),
        group_options=dict(lr=0.03, prior_strength=1e-4, variance_ratio=3.0, kappa=0.6,
                           weight_decay=0.1, eps=0.0, init="paper"),
    ),
}
ROWS["FactoredVSGD"] = OptimizerRow(
    cls=FactoredVSGD,
    inputs=(
        dict(),
        dict(lr=0.3, weight_decay=0.1, maximize=True),
        dict(lr=0.05, weight_decay=0.1, schedule_free_momentum=0.9),
        dict(init="paper", prior_strength=1e-5, variance_ratio=4.0, kappa1=0.6, kappa2=1.0,
             eps=0.0),
        dict(factorization="tensor", weight_decay=0.01),
    ),
    construction_errors=COMMON_CONSTRUCTION_ERRORS + (
        (dict(kappa1=0.5), ValueError, r"Invalid kappa1: 0\.5 \(must be in \(0\.5, 1\]\)"),
        (dict(factorization="rows"), ValueError,
         r"Invalid factorization: 'rows' \(must be one of \('matrix', 'tensor'\)\)"),
        (dict(fused=True), TypeError, r"unexpected keyword argument 'fused'"),
    ),
    step_errors=COMMON_STEP_ERRORS + (
        StepError("kappa2", 0.3, ValueError, r"Invalid kappa2: 0\.3"),
        StepError("factorization", "rows", ValueError, r"Invalid factorization: 'rows'"),
        # the state of a stepped parameter holds rates of the other factorisation
        StepError("factorization", "tensor", ValueError,
                  r"Invalid factorization: 'tensor' for parameter 0 of param group 1"),
    ),
    paths=("single_tensor", "foreach"),
    state_keys=("step", "gradient_mean", "drift_row_rate", "drift_column_rate",
                "noise_row_rate", "noise_column_rate"),
    group_options=dict(lr=0.03, prior_strength=1e-4, variance_ratio=3.0, kappa1=0.6,
                       kappa2=0.99, weight_decay=0.1, eps=0.0, init="paper",
                       factorization="tensor"),
)
#: Kalman VSGD has no gamma, K_g or init: the common cases about those do not apply to it.
_NOT_KALMAN = {"variance_ratio", "prior_strength", "init"}

ROWS["KalmanVSGD"] = OptimizerRow(
    cls=KalmanVSGD,
    inputs=(
        dict(),
        dict(lr=0.3, weight_decay=0.1, maximize=True),
        dict(lr=0.05, weight_decay=0.1, schedule_free_momentum=0.9),
        dict(initial_drift_to_noise=1e-3, ratio_step_scale=1.0, max_ratio_change=0.5,
             kappa=1.0, eps=1e-8),
        dict(step_variance="predictive", weight_decay=0.01, maximize=True),
    ),
    construction_errors=tuple(
        case for case in COMMON_CONSTRUCTION_ERRORS if not set(case[0]) & _NOT_KALMAN
    ) + (
        (dict(initial_drift_to_noise=0.0), ValueError,
         r"Invalid initial_drift_to_noise: 0\.0 \(must be in \[1e-12, 1e12\]\)"),
        (dict(ratio_step_scale=-1.0), ValueError, r"Invalid ratio_step_scale: -1\.0"),
        (dict(max_ratio_change=0.0), ValueError, r"Invalid max_ratio_change: 0\.0"),
        (dict(kappa=0.5), ValueError, r"Invalid kappa: 0\.5 \(must be in \(0\.5, 1\]\)"),
        (dict(fused=True), TypeError, r"unexpected keyword argument 'fused'"),
        (dict(step_variance="adam"), ValueError,
         r"Invalid step_variance: 'adam' \(must be one of \('posterior', 'predictive'\)\)"),
    ),
    step_errors=tuple(
        case for case in COMMON_STEP_ERRORS if case.key not in _NOT_KALMAN
    ) + (
        StepError("kappa", 0.3, ValueError, r"Invalid kappa: 0\.3"),
        StepError("max_ratio_change", -1.0, ValueError, r"Invalid max_ratio_change: -1\.0"),
        StepError("initial_drift_to_noise", float("inf"), ValueError,
                  r"Invalid initial_drift_to_noise: inf"),
        StepError("step_variance", "prior", ValueError, r"Invalid step_variance: 'prior'"),
    ),
    paths=("single_tensor", "foreach"),
    state_keys=("step", "gradient_mean", "innovation_variance", "log_drift_to_noise",
                "gain_sensitivity"),
    group_options=dict(lr=0.03, initial_drift_to_noise=1e-3, ratio_step_scale=1.0,
                       max_ratio_change=0.5, kappa=1.0, weight_decay=0.1, eps=1e-8,
                       step_variance="predictive"),
    prior_scale_in_state=False,
)
ROWS["CurvatureKalmanVSGD"] = OptimizerRow(
    cls=CurvatureKalmanVSGD,
    inputs=(
        dict(),
        dict(lr=0.3, weight_decay=0.1, maximize=True),
        dict(lr=0.05, weight_decay=0.1, schedule_free_momentum=0.9),
        dict(initial_drift_to_noise=1e-3, initial_curvature_drift_to_noise=1.0,
             ratio_step_scale=1.0, max_ratio_change=0.5, kappa=1.0, eps=1e-8),
        dict(step_variance="posterior", curvature_step="trust_region", weight_decay=0.01,
             maximize=True),
    ),
    construction_errors=tuple(
        case for case in COMMON_CONSTRUCTION_ERRORS if not set(case[0]) & _NOT_KALMAN
    ) + (
        (dict(initial_curvature_drift_to_noise=0.0), ValueError,
         r"Invalid initial_curvature_drift_to_noise: 0\.0 \(must be in \[1e-12, 1e12\]\)"),
        (dict(initial_drift_to_noise=1e13), ValueError,
         r"Invalid initial_drift_to_noise: 10000000000000\.0"),
        (dict(curvature_step="newton"), ValueError,
         r"Invalid curvature_step: 'newton' \(must be one of \('none', 'trust_region'\)\)"),
        (dict(step_variance="adam"), ValueError, r"Invalid step_variance: 'adam'"),
        (dict(fused="no"), TypeError, r"Invalid fused: 'no' \(must be a bool or None\)"),
        (dict(foreach=True, fused=True), ValueError, r"foreach=True and fused=True are "
         r"mutually exclusive"),
    ),
    step_errors=tuple(
        case for case in COMMON_STEP_ERRORS if case.key not in _NOT_KALMAN
    ) + (
        StepError("kappa", 0.3, ValueError, r"Invalid kappa: 0\.3"),
        StepError("initial_curvature_drift_to_noise", float("nan"), ValueError,
                  r"Invalid initial_curvature_drift_to_noise: nan"),
        StepError("curvature_step", "newton", ValueError, r"Invalid curvature_step: 'newton'"),
        StepError("fused", "yes", TypeError, r"Invalid fused: 'yes'"),
    ),
    paths=("single_tensor", "foreach", "fused"),
    state_keys=("step", "gradient_mean", "curvature_mean", "gradient_variance",
                "cross_covariance", "curvature_variance", "noise_variance", "log_drift_to_noise",
                "log_curvature_drift_to_noise", "ratio_sensitivities", "ratio_information",
                "previous_point"),
    group_options=dict(lr=0.03, initial_drift_to_noise=1e-3,
                       initial_curvature_drift_to_noise=1.0, ratio_step_scale=1.0,
                       max_ratio_change=0.5, kappa=1.0, weight_decay=0.1, eps=1e-8,
                       step_variance="posterior", curvature_step="trust_region"),
    prior_scale_in_state=False,
    positive_state_index=3,  # gradient_variance P_gg = P^-_gg / S~ > 0 (curvature_mean is signed)
)
#: No foreach or fused path (per-parameter matrix products): ``foreach`` runs the single-tensor
#: loop, so only that path is listed; ``basis_update_every=1`` refreshes at every step.
ROWS["KroneckerVSGD"] = OptimizerRow(
    cls=KroneckerVSGD,
    inputs=(
        dict(),
        dict(lr=0.3, weight_decay=0.1, maximize=True, basis_update_every=1),
        dict(lr=0.05, weight_decay=0.1, schedule_free_momentum=0.9, basis_update_every=2),
        dict(init="paper", prior_strength=1e-5, variance_ratio=4.0, kappa1=0.6, kappa2=1.0,
             eps=0.0, max_basis_dim=3),
    ),
    construction_errors=COMMON_CONSTRUCTION_ERRORS + (
        (dict(kappa1=0.5), ValueError, r"Invalid kappa1: 0\.5 \(must be in \(0\.5, 1\]\)"),
        (dict(basis_update_every=0), ValueError,
         r"Invalid basis_update_every: 0 \(must be an integer >= 1\)"),
        (dict(max_basis_dim=1.5), ValueError,
         r"Invalid max_basis_dim: 1\.5 \(must be an integer >= 1\)"),
        (dict(fused=True), TypeError, r"unexpected keyword argument 'fused'"),
    ),
    step_errors=COMMON_STEP_ERRORS + (
        StepError("kappa2", 0.3, ValueError, r"Invalid kappa2: 0\.3"),
        StepError("basis_update_every", -1, ValueError, r"Invalid basis_update_every: -1"),
        # the state of a stepped (2, 2) parameter holds 2 x 2 bases
        StepError("max_basis_dim", 1, ValueError,
                  r"Invalid max_basis_dim: 1 for parameter 0 of param group 1"),
    ),
    paths=("single_tensor",),
    state_keys=("step", "gradient_mean", "drift_rate", "noise_rate", "row_basis", "col_basis",
                "row_moment", "col_moment"),
    group_options=dict(lr=0.03, prior_strength=1e-4, variance_ratio=3.0, kappa1=0.6,
                       kappa2=0.99, weight_decay=0.1, eps=0.0, init="paper",
                       basis_update_every=2, max_basis_dim=3),
)
ROW_IDS = list(ROWS)
ROW_PATHS = [(name, path) for name, row in ROWS.items() for path in row.paths]
ROW_PATH_IDS = [f"{name}-{path}" for name, path in ROW_PATHS]


def path_options(row: OptimizerRow, path: str) -> dict[str, bool]:
    options = {"foreach": path == "foreach"}
    if "fused" in row.paths:
        options["fused"] = path == "fused"
    return options


#: Parameter shapes of most tests: a matrix, a vector, a zero-size and a 0-dim tensor.
SHAPES = ((3, 4), (5,), (0,), ())

#: Fast paths vs single-tensor: VSGD's fast paths evaluate an algebraically equal single-pass
#: form, so float64 results differ by rounding (~1e-16 per operation); 1e-12 of each array's
#: largest value leaves a wide margin.
PATH_RELATIVE_TOLERANCE = 1e-12


def make_params(seed: int, shapes=SHAPES, dtype=torch.float64) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64).to(dtype))
        for s in shapes
    ]


def twins(params) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def grads_for(seed: int, params, steps: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
         for p in params]
        for _ in range(steps)
    ]


def train(optimizer, params, stream, skip: Callable[[int, int], bool] = lambda t, i: False):
    """Step ``optimizer`` through ``stream``; ``skip(t, i)`` leaves param i without a grad."""
    for t, grads in enumerate(stream):
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = None if skip(t, i) else g.clone()
        optimizer.step()


def snapshot(optimizer, params):
    return [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()["state"])


def assert_unchanged(before, after):
    (params_before, state_before), (params_after, state_after) = before, after
    assert all(torch.equal(a, b) for a, b in zip(params_before, params_after))
    assert state_before.keys() == state_after.keys()
    for index in state_before:
        assert state_before[index].keys() == state_after[index].keys()
        for key in state_before[index]:
            assert torch.equal(state_before[index][key], state_after[index][key]), key


def assert_equal_runs(params_a, opt_a, params_b, opt_b):
    """Parameters and every state entry bitwise equal (same dtype)."""
    for p, q in zip(params_a, params_b):
        assert p.dtype == q.dtype and torch.equal(p.detach(), q.detach())
        assert opt_a.state[p].keys() == opt_b.state[q].keys()
        for key in opt_a.state[p]:
            a, b = opt_a.state[p][key], opt_b.state[q][key]
            assert a.dtype == b.dtype and torch.equal(a, b), key


def real(tensor: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def assert_close_to_scale(actual, expected, rtol, what):
    actual, expected = real(actual).double(), real(expected).double()
    if expected.numel() == 0:
        return
    scale = max(expected.abs().max().item(), 1e-300)
    error = (actual - expected).abs().max().item()
    assert error <= rtol * scale, f"{what}: {error:.3e} > {rtol} * {scale:.3e}"


# ------------------------------------------------------------------ paths vs single-tensor
@pytest.mark.parametrize("name, path", [rp for rp in ROW_PATHS if rp[1] != "single_tensor"],
                         ids=[i for i in ROW_PATH_IDS if not i.endswith("single_tensor")])
def test_fast_paths_match_single_tensor_params_and_every_state_entry(name, path):
    row = ROWS[name]
    for index, inputs in enumerate(row.inputs):
        runs = []
        for run_path in ("single_tensor", path):
            params = make_params(1)
            optimizer = row.cls(params, **inputs, **path_options(row, run_path))
            # param 1 starts late, param 0 is frozen at step 3: mixed step counts in one call
            train(optimizer, params, grads_for(2, params, 5),
                  skip=lambda t, i: (i == 1 and t < 2) or (i == 0 and t == 3))
            runs.append((params, optimizer))
        (expected, reference), (actual, fast) = runs
        for i, (p, q) in enumerate(zip(actual, expected)):
            what = f"{name} {path} inputs {index} param {i}"
            assert_close_to_scale(p.detach(), q.detach(), PATH_RELATIVE_TOLERANCE, what)
            state, reference_state = fast.state[p], reference.state[q]
            keys = row.state_keys + (
                ("schedule_free_z",) if inputs.get("schedule_free_momentum") else ()
            )
            assert tuple(state) == keys
            for key in keys:
                assert state[key].dtype == reference_state[key].dtype
                assert_close_to_scale(state[key], reference_state[key], PATH_RELATIVE_TOLERANCE,
                                      f"{what} {key}")


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_default_path_choice_matches_explicit_single_tensor(name, path):
    # the path flags select what they say: with flags on a 1-element problem every path moves
    # the parameter by the same first step (up to rounding)
    row = ROWS[name]
    results = []
    for options in (path_options(row, path), path_options(row, "single_tensor")):
        param = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
        optimizer = row.cls([param], **options)
        param.grad = torch.tensor([2.0], dtype=torch.float64)
        optimizer.step()
        results.append(param.detach().clone())
    assert_close_to_scale(results[0], results[1], PATH_RELATIVE_TOLERANCE, name)


# ------------------------------------------------------------------ inputs of other kinds
@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_parameters_are_independent_real_coordinates(name, path, dtype):
    row = ROWS[name]
    generator = torch.Generator().manual_seed(3)
    value = torch.randn(3, 2, generator=generator, dtype=dtype)
    complex_param = torch.nn.Parameter(value.clone())
    real_twin = torch.nn.Parameter(torch.view_as_real(value).clone())
    a = row.cls([complex_param], weight_decay=0.01, **path_options(row, path))
    b = row.cls([real_twin], weight_decay=0.01, **path_options(row, path))
    for _ in range(3):
        grad = torch.randn(3, 2, generator=generator, dtype=dtype)
        complex_param.grad, real_twin.grad = grad, torch.view_as_real(grad).clone()
        a.step()
        b.step()
    assert torch.equal(torch.view_as_real(complex_param.detach()), real_twin.detach())
    for key in row.state_keys[1:]:
        if key in row.cls.real_state_fields:  # per row/column of the real view: real
            assert a.state[complex_param][key].dtype == dtype.to_real()
            assert torch.equal(a.state[complex_param][key], b.state[real_twin][key])
            continue
        assert a.state[complex_param][key].dtype == dtype
        assert torch.equal(torch.view_as_real(a.state[complex_param][key]), b.state[real_twin][key])


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_lr_may_be_a_zero_dim_tensor(name, path):
    row = ROWS[name]
    with_float, with_tensor = make_params(4), make_params(4)
    a = row.cls(with_float, lr=0.25, weight_decay=0.01, **path_options(row, path))
    b = row.cls(with_tensor, lr=torch.tensor(0.25, dtype=torch.float64), weight_decay=0.01,
                **path_options(row, path))
    stream = grads_for(5, with_float, 3)
    train(a, with_float, stream)
    train(b, with_tensor, stream)
    # 0.25 is exact in any float format, so the two runs perform the same roundings
    assert_equal_runs(with_float, a, with_tensor, b)


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_param_groups_get_their_own_hyperparameters(name, path):
    row = ROWS[name]
    first, second = make_params(6, shapes=((3, 2), (4,)))
    flags = path_options(row, path)
    optimizer = row.cls([{"params": [first]}, {"params": [second], **row.group_options}], **flags)
    solo_first, solo_second = twins([first]), twins([second])
    solo = [row.cls(solo_first, **flags), row.cls(solo_second, **row.group_options, **flags)]
    defaults_second = twins([second])
    with_defaults = row.cls(defaults_second, **flags)
    stream = grads_for(7, [first, second], 4)
    train(optimizer, [first, second], stream)
    train(solo[0], solo_first, [[g[0]] for g in stream])
    train(solo[1], solo_second, [[g[1]] for g in stream])
    train(with_defaults, defaults_second, [[g[1]] for g in stream])
    assert_equal_runs([first], optimizer, solo_first, solo[0])
    assert_equal_runs([second], optimizer, solo_second, solo[1])
    assert not torch.equal(second, defaults_second[0])  # the group's options did matter


@pytest.mark.parametrize("name", ROW_IDS)
@pytest.mark.parametrize("scheduler", ["StepLR", "LambdaLR"])
def test_lr_schedulers_drive_the_learning_rate(name, scheduler):
    row = ROWS[name]
    scheduled, manual = make_params(8), make_params(8)
    optimizer = row.cls(scheduled, lr=0.2)
    factor = {"StepLR": lambda t: 0.5 ** (t // 2), "LambdaLR": lambda t: 1 / (1 + t)}[scheduler]
    if scheduler == "StepLR":
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    else:
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    manual_optimizer = row.cls(manual, lr=0.2)
    for t, grads in enumerate(grads_for(9, scheduled, 5)):
        manual_optimizer.param_groups[0]["lr"] = 0.2 * factor(t)
        before = [p.detach().clone() for p in scheduled]
        train(optimizer, scheduled, [grads])
        train(manual_optimizer, manual, [grads])
        schedule.step()
        # a step moves each coordinate by at most lr (|mu| / sqrt(mu^2 + sigma^2) <= 1)
        for p, b in zip(scheduled, before):
            assert torch.all((p - b).abs() <= 0.2 * factor(t) * (1 + 1e-12))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * factor(5))
    assert_equal_runs(scheduled, optimizer, manual, manual_optimizer)


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_step_without_gradients_changes_nothing(name, path):
    row = ROWS[name]
    params = make_params(10)
    optimizer = row.cls(params, **path_options(row, path))
    before = snapshot(optimizer, params)
    optimizer.step()
    assert_unchanged(before, snapshot(optimizer, params))
    assert len(optimizer.state) == 0
    train(optimizer, params, grads_for(11, params, 1))
    before = snapshot(optimizer, params)
    optimizer.zero_grad()  # grads set to None
    optimizer.step()
    assert_unchanged(before, snapshot(optimizer, params))


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_late_parameter_starts_at_step_one(name, path):
    row = ROWS[name]
    early, late = make_params(12, shapes=((3, 2), (4,)))
    optimizer = row.cls([early, late], **path_options(row, path))
    late_alone = twins([late])
    alone = row.cls(late_alone, **path_options(row, path))
    stream = grads_for(13, [early, late], 5)
    train(optimizer, [early, late], stream, skip=lambda t, i: i == 1 and t < 3)
    train(alone, late_alone, [[g[1]] for g in stream[3:]])
    assert optimizer.state[early]["step"].item() == 5
    assert optimizer.state[late]["step"].item() == 2
    assert_equal_runs([late], optimizer, late_alone, alone)


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_mixed_dtypes_in_one_group_step_each_parameter_as_if_alone(name, path):
    row = ROWS[name]
    generator = torch.Generator().manual_seed(14)
    values = [torch.randn(5, 3, generator=generator).to(dtype)
              for dtype in (torch.float64, torch.float32, torch.bfloat16)]
    together = [torch.nn.Parameter(v.clone()) for v in values]
    optimizer = row.cls(together, **path_options(row, path))
    stream = grads_for(15, together, 3)
    train(optimizer, together, stream)
    for i, value in enumerate(values):
        alone = [torch.nn.Parameter(value.clone())]
        alone_optimizer = row.cls(alone, **path_options(row, path))
        train(alone_optimizer, alone, [[g[i]] for g in stream])
        assert_equal_runs(together[i : i + 1], optimizer, alone, alone_optimizer)


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_parameters_keep_float32_state_and_round_once(name, path, dtype):
    row = ROWS[name]
    generator = torch.Generator().manual_seed(16)
    start = torch.randn(5, 4, generator=generator).to(dtype)
    low, full = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.float())
    a = row.cls([low], **path_options(row, path))
    b = row.cls([full], **path_options(row, path))
    for t in range(3):
        grad = torch.randn(5, 4, generator=generator).to(dtype)
        low.grad, full.grad = grad, grad.float()
        if t > 0:  # from the same value, one 16-bit step = the float32 step rounded once
            full.data.copy_(low.detach().float())
        a.step()
        b.step()
        assert torch.equal(low.detach(), full.detach().to(dtype))
    for key in row.state_keys[1:]:
        assert a.state[low][key].dtype == torch.float32
        assert torch.equal(a.state[low][key], b.state[full][key])  # open loop
    # gamma = 1e-8 (or a variance) was not flushed to zero
    assert a.state[low][row.state_keys[row.positive_state_index]].min() > 0


@pytest.mark.parametrize("name", ROW_IDS)
def test_bfloat16_model_trains_with_finite_values(name):
    row = ROWS[name]
    torch.manual_seed(0)
    inputs = torch.randn(32, 8)
    targets = torch.sin(inputs.sum(dim=1, keepdim=True))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.to(torch.bfloat16)
    optimizer = row.cls(model.parameters(), lr=0.01)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs.bfloat16()), targets.bfloat16())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    for state in optimizer.state.values():
        assert all(torch.isfinite(state[key]).all() for key in row.state_keys[1:])
    # it learns: the mean loss of the last 10 steps is well below the first loss
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0]


# ------------------------------------------------------------------ state dicts
def state_dicts_equal(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(
        a["state"][i].keys() == b["state"][i].keys()
        and all(torch.equal(a["state"][i][k], b["state"][i][k]) for k in a["state"][i])
        for i in a["state"]
    )


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_state_dict_is_deterministic_and_survives_a_weights_only_round_trip(name, path):
    row = ROWS[name]
    inputs = row.inputs[2]  # away from the defaults: a lost hyperparameter would show
    runs = []
    for _ in range(2):
        params = make_params(17)
        optimizer = row.cls(params, **inputs, **path_options(row, path))
        train(optimizer, params, grads_for(18, params, 3), skip=lambda t, i: i == 1 and t < 1)
        runs.append((params, optimizer))
    assert state_dicts_equal(runs[0][1].state_dict(), runs[1][1].state_dict())

    (params, optimizer), (resumed_params, _) = runs
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed = row.cls(resumed_params, **path_options(row, path))  # defaults: the load restores
    resumed.load_state_dict(loaded)
    for key, value in inputs.items():  # every non-default hyperparameter came back
        assert resumed.param_groups[0][key] == value, key
    more = grads_for(19, params, 3)
    train(optimizer, params, more)
    train(resumed, resumed_params, more)
    assert_equal_runs(params, optimizer, resumed_params, resumed)


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_older_state_dict_with_non_tensor_steps_and_no_flags_loads_and_steps(name, path):
    row = ROWS[name]
    params = make_params(20)
    optimizer = row.cls(params, **path_options(row, path))
    train(optimizer, params, grads_for(21, params, 2))
    older = copy.deepcopy(optimizer.state_dict())
    for state in older["state"].values():
        state["step"] = state["step"].item()  # a Python number, as older torch saved it
    for group in older["param_groups"]:
        for flag in ("maximize", "foreach", "fused"):
            group.pop(flag, None)
    resumed_params = twins(params)
    resumed = row.cls(resumed_params, **path_options(row, path))
    resumed.load_state_dict(older)
    group = resumed.param_groups[0]
    assert group["maximize"] is False and group["foreach"] is None
    assert group.get("fused", None) is None
    for state in resumed.state.values():
        assert torch.is_tensor(state["step"]) and state["step"].dtype == torch.float32
    # the loaded groups' flags are None: choose the path under test for both again
    for opt in (optimizer, resumed):
        opt.param_groups[0].update(path_options(row, path))
    more = grads_for(22, params, 2)
    train(optimizer, params, more)
    train(resumed, resumed_params, more)
    assert_equal_runs(params, optimizer, resumed_params, resumed)


@pytest.mark.parametrize("name", ROW_IDS)
def test_loading_keeps_float32_state_for_16_bit_parameters(name):
    # torch.optim.Optimizer.load_state_dict casts state to the parameter dtype; float16 would
    # flush the prior rate gamma = 1e-8 to zero.
    row = ROWS[name]
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    optimizer = row.cls([param])
    param.grad = torch.zeros(3, dtype=torch.float16)  # rates stay near gamma ~ 1e-8
    optimizer.step()
    saved = optimizer.state_dict()
    fresh = row.cls([param])
    fresh.load_state_dict(saved)
    for key in row.state_keys[1:]:
        assert fresh.state[param][key].dtype == torch.float32
        assert torch.equal(fresh.state[param][key], optimizer.state[param][key])
        # a copy, not shared with the saved dict (an empty tensor has no storage to share)
        if saved["state"][0][key].numel():
            assert fresh.state[param][key].data_ptr() != saved["state"][0][key].data_ptr()
    if row.prior_scale_in_state:
        assert fresh.state[param][row.state_keys[2]].min() > 0


# ------------------------------------------------------------------ hooks
@pytest.mark.parametrize("name", ROW_IDS)
def test_step_pre_and_post_hooks_run_around_the_step(name):
    row = ROWS[name]
    params = make_params(23)
    optimizer = row.cls(params)
    seen = []
    pre = optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(("pre", params[0].detach().clone()))
    )
    post = optimizer.register_step_post_hook(
        lambda opt, args, kwargs: seen.append(("post", params[0].detach().clone()))
    )
    before = params[0].detach().clone()
    train(optimizer, params, grads_for(24, params, 1))
    assert [kind for kind, _ in seen] == ["pre", "post"]
    assert torch.equal(seen[0][1], before) and torch.equal(seen[1][1], params[0].detach())
    assert not torch.equal(seen[1][1], before)
    pre.remove()
    post.remove()
    train(optimizer, params, grads_for(25, params, 1))
    assert len(seen) == 2  # removed hooks no longer run


@pytest.mark.parametrize("name", ROW_IDS)
def test_state_dict_hooks_run_and_may_change_the_result(name):
    row = ROWS[name]
    params = make_params(26)
    optimizer = row.cls(params)
    train(optimizer, params, grads_for(27, params, 1))
    calls = []
    optimizer.register_state_dict_pre_hook(lambda opt: calls.append("pre"))

    def post(opt, state_dict):
        calls.append("post")
        state_dict["param_groups"][0]["note"] = "added by a hook"
        return state_dict

    optimizer.register_state_dict_post_hook(post)
    state_dict = optimizer.state_dict()
    assert calls == ["pre", "post"]
    assert state_dict["param_groups"][0]["note"] == "added by a hook"


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_load_state_dict_pre_hook_that_changes_state_is_honoured(name, path):
    row = ROWS[name]
    params = make_params(28)
    optimizer = row.cls(params, **path_options(row, path))
    train(optimizer, params, grads_for(29, params, 2))
    saved = optimizer.state_dict()
    fresh = row.cls(twins(params), **path_options(row, path))
    calls = []

    def double_the_mean(opt, state_dict):
        state = {i: {**s, "gradient_mean": 2 * s["gradient_mean"]}
                 for i, s in state_dict["state"].items()}
        return {**state_dict, "state": state}

    fresh.register_load_state_dict_pre_hook(double_the_mean)
    fresh.register_load_state_dict_post_hook(lambda opt: calls.append(len(opt.state)))
    fresh.load_state_dict(saved)
    assert calls == [len(optimizer.state)]  # the post hook ran after the state was loaded
    for p, q in zip(params, fresh.param_groups[0]["params"]):
        expected = 2 * optimizer.state[p]["gradient_mean"]
        assert torch.equal(fresh.state[q]["gradient_mean"], expected)


@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_load_state_dict_pre_hook_that_empties_state_leaves_an_optimizer_that_steps(name, path):
    row = ROWS[name]
    params = make_params(30)
    optimizer = row.cls(params, **path_options(row, path))
    train(optimizer, params, grads_for(31, params, 2))
    reset_params, fresh_params = twins(params), twins(params)
    reset = row.cls(reset_params, **path_options(row, path))
    reset.register_load_state_dict_pre_hook(lambda opt, sd: {**sd, "state": {}})
    reset.load_state_dict(optimizer.state_dict())
    assert len(reset.state) == 0
    fresh = row.cls(fresh_params, **path_options(row, path))
    more = grads_for(32, params, 2)
    train(reset, reset_params, more)  # lazy re-initialisation: as if never stepped
    train(fresh, fresh_params, more)
    assert_equal_runs(reset_params, reset, fresh_params, fresh)


# ------------------------------------------------------------------ copies and printing
@pytest.mark.parametrize("name, path", ROW_PATHS, ids=ROW_PATH_IDS)
def test_deepcopy_continues_like_the_original(name, path):
    row = ROWS[name]
    params = make_params(33)
    optimizer = row.cls(params, **path_options(row, path))
    train(optimizer, params, grads_for(34, params, 2))
    copied = copy.deepcopy(optimizer)
    copied_params = copied.param_groups[0]["params"]
    assert all(p is not q for p, q in zip(params, copied_params))
    more = grads_for(35, params, 2)
    train(optimizer, params, more)
    train(copied, copied_params, more)
    assert_equal_runs(params, optimizer, copied_params, copied)


@pytest.mark.parametrize("name", ROW_IDS)
def test_repr_names_the_class_and_every_hyperparameter(name):
    row = ROWS[name]
    optimizer = row.cls(make_params(36), **row.group_options)
    text = repr(optimizer)
    assert text.startswith(row.cls.__name__ + " (")
    for key in optimizer.defaults:
        assert re.search(rf"\b{key}: ", text), key
    assert f"lr: {row.group_options['lr']}" in text


# ------------------------------------------------------------------ errors
def _construction_cases():
    return [(name, *case) for name, row in ROWS.items() for case in row.construction_errors]


@pytest.mark.parametrize("name, options, error, message", _construction_cases())
def test_bad_arguments_are_rejected_at_construction_and_by_add_param_group(
    name, options, error, message
):
    row = ROWS[name]
    with pytest.raises(error, match=message):
        row.cls(make_params(37), **options)
    if "fused" in options and "fused" not in row.paths:
        return  # not a group entry of this optimizer
    optimizer = row.cls(make_params(37)[:1])
    with pytest.raises(error, match=message):
        optimizer.add_param_group({"params": make_params(38)[1:2], **options})
    assert len(optimizer.param_groups) == 1


def _step_cases():
    return [(name, case) for name, row in ROWS.items() for case in row.step_errors]


@pytest.mark.parametrize("name, case", _step_cases(),
                         ids=[f"{n}-{c.key}={c.value!r}" for n, c in _step_cases()])
def test_a_bad_group_value_fails_the_step_before_anything_changes(name, case):
    row = ROWS[name]
    first, second = make_params(39, shapes=((3,), (2, 2)))
    optimizer = row.cls([{"params": [first]}, {"params": [second]}])
    train(optimizer, [first, second], grads_for(40, [first, second], 1))
    before = snapshot(optimizer, [first, second])
    # the bad value sits in the SECOND group: the first group must not have been stepped
    optimizer.param_groups[1][case.key] = case.value
    for p in (first, second):
        p.grad = torch.ones_like(p)
    with pytest.raises(case.error, match=case.message):
        optimizer.step()
    assert_unchanged(before, snapshot(optimizer, [first, second]))


@pytest.mark.parametrize("name", ROW_IDS)
def test_sparse_gradients_raise_runtime_error_before_anything_changes(name):
    row = ROWS[name]
    dense, sparse = make_params(41, shapes=((3,), (4, 2)))
    late = make_params(42, shapes=((2,),))[0]
    optimizer = row.cls([dense, sparse, late])
    train(optimizer, [dense, sparse], grads_for(43, [dense, sparse], 1))
    before = snapshot(optimizer, [dense, sparse, late])
    late.grad = torch.ones(2, dtype=torch.float64)  # would get state, were the step to run
    dense.grad = torch.ones_like(dense)
    sparse.grad = torch.ones_like(sparse).to_sparse()
    message = rf"{name} does not support sparse gradients: parameter 1 of param group 0"
    with pytest.raises(RuntimeError, match=message):
        optimizer.step()
    assert_unchanged(before, snapshot(optimizer, [dense, sparse, late]))


# ------------------------------------------------------------------ GradScaler
@pytest.mark.parametrize("name", ROW_IDS)
def test_grad_scaler_steps_unscaled_and_skips_inf_steps(name):
    row = ROWS[name]
    scaled_params, plain_params = make_params(44), make_params(44)
    scaled, plain = row.cls(scaled_params), row.cls(plain_params)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    for t, grads in enumerate(grads_for(45, plain_params, 4)):
        loss = sum((p * g).sum() for p, g in zip(scaled_params, grads))
        scaler.scale(loss).backward()
        if t == 2:  # an overflow: this step must be skipped
            scaled_params[0].grad[0, 0] = float("inf")
            before = snapshot(scaled, scaled_params)
        scaler.step(scaled)
        scaler.update()
        scaled.zero_grad()
        if t == 2:
            assert_unchanged(before, snapshot(scaled, scaled_params))
            assert scaler.get_scale() == 2.0**9
            continue
        train(plain, plain_params, [grads])
    # scaling by a power of two and unscaling is exact: the runs are bitwise equal
    assert_equal_runs(scaled_params, scaled, plain_params, plain)
    assert scaled.state[scaled_params[0]]["step"].item() == 3
