"""KroneckerVSGD beyond the battery: float64 parity with the JAX rule (with a check of the
check), the identity basis is VSGD exactly, gradient_posterior, state dicts mid-run, bad
hyperparameters, a failed refresh that changes nothing (its twin: refreshes decomposed inside
the step leave a half step), float32. (Every generic optimizer behaviour runs in
tests/test_torch_battery.py.)"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vsgd_bayes.rules import kronecker as kronecker_rule
from vsgd_bayes.torch import VSGD, KroneckerVSGD
from vsgd_bayes.torch import _kronecker_single_tensor as single_tensor
from vsgd_bayes.torch.kronecker import kronecker_vsgd

#: A (5, 4) matrix, a vector, a (1, n) row (rows unstructured) and a (6, 3) matrix whose rows
#: exceed max_basis_dim = 5 (one side unstructured).
SHAPES = ((5, 4), (3,), (1, 6), (6, 3))
OPTIONS = dict(
    lr=0.05,
    weight_decay=0.1,
    prior_strength=1e-6,
    variance_ratio=9.0,
    kappa1=0.7,
    kappa2=0.95,
    init="paper",
    basis_update_every=3,
)
MAX_BASIS_DIM = 5
STEPS = 30


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _stream(seed=0, steps=STEPS, shapes=SHAPES, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
        for _ in range(steps)
    ]


def _params(seed=1, shapes=SHAPES, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64).to(dtype))
        for s in shapes
    ]


def _run_torch(stream, foreach=False, **options):
    params = _params()
    # the (6, 3) matrix in a group of its own with max_basis_dim = 5 (its rows unstructured)
    groups = [{"params": params[:3]}, {"params": params[3:], "max_basis_dim": MAX_BASIS_DIM}]
    optimizer = KroneckerVSGD(groups, foreach=foreach, **{**OPTIONS, **options})
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    return params, optimizer


def _run_rule(stream):
    arrays = [jnp.asarray(p.detach().numpy()) for p in _params()]
    states = [
        kronecker_rule.init_state(
            a,
            OPTIONS["prior_strength"],
            OPTIONS["variance_ratio"],
            "paper",
            MAX_BASIS_DIM if a.shape == (6, 3) else 2048,
        )
        for a in arrays
    ]
    for grads in stream:
        for i, g in enumerate(grads):
            arrays[i], states[i] = kronecker_rule.step(
                arrays[i], jnp.asarray(g.numpy()), states[i], **OPTIONS
            )
    return arrays, states


def _to_scale(got, want):
    """Largest difference over the array's largest value (0 for empty arrays)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def _largest_error(params, optimizer, arrays, states):
    errors = []
    for p, a, s in zip(params, arrays, states):
        errors.append(_to_scale(p.detach().numpy(), a))
        for field in kronecker_rule.KroneckerState._fields[1:]:
            errors.append(_to_scale(optimizer.state[p][field].numpy(), getattr(s, field)))
    return max(errors)


@pytest.fixture(scope="module")
def rule_run():
    stream = _stream()
    with jax.enable_x64(True):
        return stream, _run_rule(stream)


@pytest.mark.parametrize("foreach", [False, True], ids=["single_tensor", "foreach_flag"])
def test_float64_parity_with_the_rule(rule_run, foreach):
    stream, (arrays, states) = rule_run
    params, optimizer = _run_torch(stream, foreach=foreach)
    # The same float64 formulas through LAPACK's eigh/QR (torch's and jaxlib's builds may
    # order their sums differently): each step adds ~1e-16 relative, and an eigenvector moves
    # by that over the eigenvalue gap (relative gaps here >= ~1e-2), so 30 steps with 10
    # refreshes stay near 1e-13; 1e-10 leaves a wide margin, far below the 1e-6 of the
    # check of the check below.
    assert _largest_error(params, optimizer, arrays, states) < 1e-10
    for p, s in zip(params, states):
        assert optimizer.state[p]["step"].item() == int(s.step) == STEPS
    # the sides are structured as the rule says: empty (0, 0) for an unstructured side
    shapes = {
        tuple(p.shape): (
            tuple(optimizer.state[p]["row_basis"].shape),
            tuple(optimizer.state[p]["col_basis"].shape),
        )
        for p in params
    }
    assert shapes == {
        (5, 4): ((5, 5), (4, 4)),
        (3,): ((0, 0), (0, 0)),
        (1, 6): ((0, 0), (6, 6)),
        (6, 3): ((0, 0), (3, 3)),
    }
    # and the bases did move away from the identity (the test exercises the refresh)
    assert not torch.allclose(
        optimizer.state[params[0]]["row_basis"], torch.eye(5, dtype=torch.float64), atol=1e-3
    )


def test_check_of_the_check_rates_not_rotated_at_refresh_miss_the_rule(rule_run, monkeypatch):
    stream, (arrays, states) = rule_run
    monkeypatch.setattr(single_tensor, "rotate_rates", lambda rate, row, col: rate)
    params, optimizer = _run_torch(stream)
    assert _largest_error(params, optimizer, arrays, states) > 1e-6


def test_identity_basis_is_vsgd_exactly():
    stream = _stream(seed=2, steps=12)
    options = {k: v for k, v in OPTIONS.items() if k != "basis_update_every"}
    kronecker_params, vsgd_params = _params(), _params()
    kronecker = KroneckerVSGD(kronecker_params, basis_update_every=10**9, **options)
    vsgd = VSGD(vsgd_params, foreach=False, fused=False, **options)
    for grads in stream:
        for p, q, g in zip(kronecker_params, vsgd_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        kronecker.step()
        vsgd.step()
    for p, q in zip(kronecker_params, vsgd_params):
        assert torch.equal(p.detach(), q.detach())
        for key in ("step", "gradient_mean", "drift_rate", "noise_rate"):
            assert torch.equal(kronecker.state[p][key], vsgd.state[q][key]), key
    structured = kronecker.state[kronecker_params[0]]["row_basis"]
    assert torch.equal(structured, torch.eye(5, dtype=torch.float64))


def test_gradient_posterior_rotates_back_to_the_parameters_coordinates():
    params, optimizer = _run_torch(_stream(seed=3, steps=7))
    shape = 1e-6 + 0.5  # the posterior shape a_0 + 1/2, init="paper"
    for p in params:
        state = optimizer.state[p]
        posterior = optimizer.gradient_posterior(p)
        rows, cols = p.shape[0], p.shape[-1] if p.dim() == 2 else 1
        eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
        left = state["row_basis"] if state["row_basis"].numel() else eye(rows)
        right = state["col_basis"] if state["col_basis"].numel() else eye(cols)
        basis = torch.kron(left, right)  # Q = L (x) R, row-major vec
        mean = (basis @ state["gradient_mean"].reshape(-1)).reshape(p.shape)
        covariance = basis @ torch.diag((state["drift_rate"] / shape).reshape(-1)) @ basis.T
        assert torch.allclose(posterior.mean, mean, rtol=0, atol=1e-14 * mean.abs().max())
        drift = torch.diagonal(covariance).reshape(p.shape)
        assert torch.allclose(posterior.drift_variance, drift, rtol=1e-12, atol=0)
        assert posterior.noise_variance.shape == p.shape


def test_state_dict_round_trip_mid_run_continues_identically():
    stream = _stream(seed=4, steps=10)
    params = _params()
    optimizer = KroneckerVSGD(params, max_basis_dim=MAX_BASIS_DIM, **OPTIONS)
    for grads in stream[:4]:  # mid-run: one refresh done (step 3), one due at step 6
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = KroneckerVSGD(resumed_params)  # defaults: the load restores the groups
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["basis_update_every"] == 3
    for grads in stream[4:]:
        for ps in (params, resumed_params):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        optimizer.step()
        resumed.step()
    for p, q in zip(params, resumed_params):
        assert torch.equal(p.detach(), q.detach())
        assert optimizer.state[p].keys() == resumed.state[q].keys()
        for key in optimizer.state[p]:
            assert torch.equal(optimizer.state[p][key], resumed.state[q][key]), key


@pytest.mark.parametrize(
    "name, value, requirement",
    [
        ("basis_update_every", 0, r"must be an integer >= 1"),
        ("basis_update_every", 2.5, r"must be an integer >= 1"),
        ("max_basis_dim", 0, r"must be an integer >= 1"),
        ("max_basis_dim", float("nan"), r"must be finite"),
        ("kappa1", 0.5, r"must be in \(0\.5, 1\]"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_the_argument(name, value, requirement):
    with pytest.raises(ValueError, match=rf"Invalid {name}: {value!r} \({requirement}\)"):
        KroneckerVSGD(_params(), **{name: value})
    # and set between steps: the step fails before anything changes
    params = _params()
    optimizer = KroneckerVSGD(params, basis_update_every=2)
    for p, g in zip(params, _stream(seed=5, steps=1)[0]):
        p.grad = g
    optimizer.step()
    before = [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())
    optimizer.param_groups[0][name] = value
    with pytest.raises(ValueError, match=rf"Invalid {name}"):
        optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(before[0], params))
    after = optimizer.state_dict()["state"]
    for index, state in before[1]["state"].items():
        assert all(torch.equal(state[k], after[index][k]) for k in state)


def test_max_basis_dim_changed_after_the_first_step_is_refused_before_anything_changes():
    params = _params()
    optimizer = KroneckerVSGD(params)
    for p, g in zip(params, _stream(seed=6, steps=1)[0]):
        p.grad = g
    optimizer.step()
    optimizer.param_groups[0]["max_basis_dim"] = 4
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"Invalid max_basis_dim: 4 for parameter 0"):
        optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(before, params))


def _nan_at_refresh(plan=True, monkeypatch=None):
    """A run of OPTIONS (refresh every 3 steps) on two groups, the second of which gets a NaN
    gradient at step 3, a refresh step: (params, optimizer, snapshot before the step, error)."""
    stream = _stream(seed=8, steps=3)
    params = _params()
    groups = [{"params": params[:3]}, {"params": params[3:], "max_basis_dim": MAX_BASIS_DIM}]
    optimizer = KroneckerVSGD(groups, **OPTIONS)
    if not plan:  # the twin: no planning, every refresh decomposed inside the step
        monkeypatch.setattr(KroneckerVSGD, "_plan_refreshes", lambda self: {})
    for grads in stream[:2]:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    for p, g in zip(params, stream[2]):
        p.grad = g.clone()
    params[3].grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())
    with pytest.raises(torch.linalg.LinAlgError) as error:
        optimizer.step()
    return params, optimizer, before, str(error.value)


def _unchanged(params, optimizer, before):
    after = optimizer.state_dict()["state"]
    return all(torch.equal(p, q) for p, q in zip(before[0], params)) and all(
        torch.equal(state[k], after[index][k])
        for index, state in before[1]["state"].items()
        for k in state
    )


def test_non_finite_moment_at_a_refresh_fails_naming_it_and_changes_nothing():
    params, optimizer, before, message = _nan_at_refresh()
    assert message.startswith(
        "KroneckerVSGD cannot refresh the basis of parameter 0 of param group 1 (shape (6, 3)) "
        "at step 3: its column noise moment is not finite"
    )
    assert "no parameter or state was changed by this step" in message
    # group 0 comes first and its (5, 4) matrix refreshes at this step too: still untouched
    assert _unchanged(params, optimizer, before)
    # and the optimizer goes on from where it was once the gradient is finite again
    reference_params = _params()
    groups = [{"params": reference_params[:3]},
              {"params": reference_params[3:], "max_basis_dim": MAX_BASIS_DIM}]  # fmt: skip
    reference = KroneckerVSGD(groups, **OPTIONS)
    stream = _stream(seed=8, steps=3)
    for grads in stream:
        for p, g in zip(reference_params, grads):
            p.grad = g.clone()
        reference.step()
    for p, g in zip(params, stream[2]):
        p.grad = g.clone()
    optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(params, reference_params))


def test_check_of_the_check_refreshes_decomposed_inside_the_step_leave_a_half_step(
    monkeypatch,
):
    params, optimizer, before, message = _nan_at_refresh(plan=False, monkeypatch=monkeypatch)
    assert not _unchanged(params, optimizer, before)  # group 0 stepped before group 1 failed
    assert not torch.equal(before[0][0], params[0])
    assert "KroneckerVSGD cannot refresh" not in message  # LAPACK's own message


def test_functional_plans_its_refreshes_before_writing_any_tensor():
    shapes = ((5, 4), (4, 3))
    params = _params(shapes=shapes)
    grads = [torch.ones(s, dtype=torch.float64) for s in shapes]
    grads[1][0, 0] = float("inf")
    group = KroneckerVSGD(_params(shapes=shapes), **{**OPTIONS, "basis_update_every": 1}).defaults
    options = {name: group[name] for name in KroneckerVSGD.hyperparameters}
    fields = [[init(p, group, torch.float64) for p in params]
              for init in KroneckerVSGD.state_fields.values()]  # fmt: skip
    steps = [torch.tensor(0.0), torch.tensor(0.0)]
    before = [p.detach().clone() for p in params], [[t.clone() for t in f] for f in fields]
    with pytest.raises(torch.linalg.LinAlgError, match=r"tensor 1 of the lists \(shape \(4, 3\)\)"):
        with torch.no_grad():
            kronecker_vsgd(params, grads, *fields, steps, maximize=False, **options)
    assert all(torch.equal(p, q) for p, q in zip(before[0], params))  # tensor 0 too
    assert all(torch.equal(t, u) for f, g in zip(fields, before[1]) for t, u in zip(f, g))
    assert [s.item() for s in steps] == [0.0, 0.0]
    # with finite gradients the functional's own plan gives the optimizer's step exactly
    grads[1] = torch.ones(4, 3, dtype=torch.float64)
    with torch.no_grad():  # as torch.optim's functional forms, outside autograd
        kronecker_vsgd(params, grads, *fields, steps, maximize=False, **options)
    reference = _params(shapes=shapes)
    optimizer = KroneckerVSGD(reference, **options)
    for p, g in zip(reference, grads):
        p.grad = g.clone()
    optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(params, reference))
    for column, key in zip(fields, KroneckerVSGD.state_fields):
        assert all(torch.equal(t, optimizer.state[q][key]) for t, q in zip(column, reference))


def test_float32_runs_finite():
    stream = _stream(seed=7, steps=STEPS, dtype=torch.float32)
    params = _params(dtype=torch.float32)
    optimizer = KroneckerVSGD(params, max_basis_dim=MAX_BASIS_DIM, **OPTIONS)
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = g * 1e3  # large and small scales in one run
        optimizer.step()
    for p in params:
        assert torch.isfinite(p).all()
        for key, value in optimizer.state[p].items():
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), key
        basis = optimizer.state[p]["row_basis"]
        if basis.numel():  # still orthogonal after 10 refreshes in float32
            assert torch.allclose(basis.T @ basis, torch.eye(len(basis)), atol=1e-5)
