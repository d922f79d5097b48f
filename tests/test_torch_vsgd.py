"""Behaviour of the torch ``VSGD`` optimizer (single-tensor and default paths).

Equalities between two runs of the same arithmetic are bitwise (``torch.equal``); the few
others carry their tolerance and its reason.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch import VSGD, GradientPosterior

PATHS = [dict(foreach=False), dict(foreach=True)]
PATH_IDS = ["single_tensor", "foreach"]



def make_params(seed=0, shapes=((3, 2), (4,)), dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes
    ]


def gradients(seed, shapes, steps, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(s, generator=generator, dtype=dtype) for s in shapes] for _ in range(steps)
    ]


def snapshot(optimizer, params):
    return [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()["state"])


def assert_unchanged(before, after):
    (params_before, state_before), (params_after, state_after) = before, after
    assert all(torch.equal(a, b) for a, b in zip(params_before, params_after))
    assert state_before.keys() == state_after.keys()
    for index in state_before:
        for key in state_before[index]:
            assert torch.equal(state_before[index][key], state_after[index][key]), key


# ------------------------------------------------------------------ validation (bad inputs)
BAD_HYPERPARAMETERS = [
    (dict(lr=-0.1), ValueError, r"Invalid lr: -0\.1 \(must be >= 0\)"),
    (dict(lr=float("nan")), ValueError, r"Invalid lr: nan \(must be finite\)"),
    (dict(variance_ratio=0.0), ValueError, r"Invalid variance_ratio: 0\.0"),
    (dict(prior_strength=0.0), ValueError, r"Invalid prior_strength: 0\.0 \(must be > 0\)"),
    (dict(kappa1=0.5), ValueError, r"Invalid kappa1: 0\.5 \(must be in \(0\.5, 1\]\)"),
    (dict(kappa2=1.5), ValueError, r"Invalid kappa2: 1\.5"),
    (dict(weight_decay=-1.0), ValueError, r"Invalid weight_decay: -1\.0"),
    (dict(eps=float("inf")), ValueError, r"Invalid eps: inf"),
    (dict(init="adam"), ValueError, r"Invalid init: 'adam'"),
    (dict(lr="0.1"), ValueError, r"Invalid lr: '0\.1' \(must be a real scalar\)"),
    (dict(lr=torch.ones(2)), ValueError, r"Invalid lr: tensor"),
    (dict(maximize=1), TypeError, r"Invalid maximize: 1 \(must be a bool\)"),
    (dict(foreach="yes"), TypeError, r"Invalid foreach: 'yes'"),
    (dict(foreach=True, fused=True), ValueError, r"mutually exclusive"),
]


@pytest.mark.parametrize("options, error, message", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_rejected_at_construction(options, error, message):
    with pytest.raises(error, match=message):
        VSGD(make_params(), **options)


@pytest.mark.parametrize("options, error, message", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_rejected_by_add_param_group(options, error, message):
    optimizer = VSGD(make_params()[:1])
    with pytest.raises(error, match=message):
        optimizer.add_param_group({"params": make_params()[1:], **options})
    assert len(optimizer.param_groups) == 1


# ------------------------------------------------------------------------- step counter
@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_late_parameter_starts_at_step_one(paths):
    early, late = make_params(seed=1)
    optimizer = VSGD([early, late], **paths)
    late_alone = torch.nn.Parameter(late.detach().clone())
    alone = VSGD([late_alone], **paths)
    stream = gradients(2, [early.shape, late.shape], 5)
    for t, (early_grad, late_grad) in enumerate(stream):
        early.grad = early_grad
        late.grad = late_grad if t >= 3 else None
        optimizer.step()
        if t >= 3:
            late_alone.grad = late_grad
            alone.step()
    assert optimizer.state[early]["step"].item() == 5
    assert optimizer.state[late]["step"].item() == 2
    assert torch.equal(late, late_alone)
    for key in ("gradient_mean", "drift_rate", "noise_rate"):
        assert torch.equal(optimizer.state[late][key], alone.state[late_alone][key])


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_frozen_parameter_is_skipped_and_resumes_its_own_count(paths):
    frozen, always = make_params(seed=3)
    optimizer = VSGD([frozen, always], **paths)
    twin = torch.nn.Parameter(frozen.detach().clone())
    twin_optimizer = VSGD([twin], **paths)
    stream = gradients(4, [frozen.shape, always.shape], 6)
    for t, (frozen_grad, always_grad) in enumerate(stream):
        always.grad = always_grad
        frozen.grad = None if t in (2, 3) else frozen_grad  # frozen at steps 3 and 4
        before = frozen.detach().clone()
        optimizer.step()
        if t in (2, 3):
            assert torch.equal(frozen, before)
        else:
            twin.grad = frozen_grad
            twin_optimizer.step()
    assert optimizer.state[frozen]["step"].item() == 4
    assert torch.equal(frozen, twin)
    for key in ("gradient_mean", "drift_rate", "noise_rate"):
        assert torch.equal(optimizer.state[frozen][key], twin_optimizer.state[twin][key])


# ----------------------------------------------------------------- hyperparameters per group
@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_per_group_hyperparameters_are_honoured(paths):
    first, second = make_params(seed=5)
    group_options = dict(lr=0.03, prior_strength=1e-4, variance_ratio=3.0, kappa1=0.6,
                         kappa2=0.99, weight_decay=0.1, eps=0.0, init="paper")
    optimizer = VSGD([{"params": [first]}, {"params": [second], **group_options}], **paths)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in (first, second)]
    solo = [VSGD([twins[0]], **paths), VSGD([twins[1]], **group_options, **paths)]
    for grads in gradients(6, [first.shape, second.shape], 4):
        for param, twin, grad in zip((first, second), twins, grads):
            param.grad, twin.grad = grad, grad.clone()
        optimizer.step()
        for solo_optimizer in solo:
            solo_optimizer.step()
    assert torch.equal(first, twins[0]) and torch.equal(second, twins[1])
    # and the group options did matter: with the defaults the second parameter ends elsewhere
    default_twin = torch.nn.Parameter(make_params(seed=5)[1].detach())
    default_optimizer = VSGD([default_twin], **paths)
    for grads in gradients(6, [first.shape, second.shape], 4):
        default_twin.grad = grads[1]
        default_optimizer.step()
    assert not torch.equal(default_twin, second)


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_lr_is_read_at_every_step_so_schedulers_work(paths):
    scheduled, manual = make_params(seed=7)[:1], make_params(seed=7)[:1]
    optimizer = VSGD(scheduled, lr=0.2, **paths)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    manual_optimizer = VSGD(manual, lr=0.2, **paths)
    for t, (grad,) in enumerate(gradients(8, [scheduled[0].shape], 5)):
        manual_optimizer.param_groups[0]["lr"] = 0.2 * 0.5 ** (t // 2)
        scheduled[0].grad, manual[0].grad = grad, grad.clone()
        before = scheduled[0].detach().clone()
        optimizer.step()
        manual_optimizer.step()
        scheduler.step()
        # VSGD's step is at most lr per coordinate (|mu| / sqrt(mu^2 + sigma^2) <= 1)
        assert (scheduled[0] - before).abs().max() <= 0.2 * 0.5 ** (t // 2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5**2)
    assert torch.equal(scheduled[0], manual[0])


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_lr_may_be_a_zero_dim_tensor(paths):
    with_float, with_tensor = make_params(seed=9), make_params(seed=9)
    a = VSGD(with_float, lr=0.25, weight_decay=0.01, **paths)
    b = VSGD(with_tensor, lr=torch.tensor(0.25, dtype=torch.float64), weight_decay=0.01, **paths)
    for grads in gradients(10, [p.shape for p in with_float], 3):
        for p, q, g in zip(with_float, with_tensor, grads):
            p.grad, q.grad = g, g.clone()
        a.step()
        b.step()
    # 0.25 is exact in any float format, so the two runs perform the same roundings
    assert all(torch.equal(p, q) for p, q in zip(with_float, with_tensor))


# ------------------------------------------------------------ closure, maximize, decay, complex
def test_step_runs_the_closure_with_grad_enabled_and_returns_its_loss():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = VSGD([param])
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert calls == [True]
    assert loss.item() == 5.0
    # first step moves every coordinate against the closure's gradient 2*param
    moved = param.detach() - torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert torch.equal(torch.sign(moved), torch.tensor([-1.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_maximize_negates_the_gradient_without_touching_it(paths):
    ascending, descending = make_params(seed=11), make_params(seed=11)
    up = VSGD(ascending, maximize=True, **paths)
    down = VSGD(descending, **paths)
    for grads in gradients(12, [p.shape for p in ascending], 3):
        for p, q, g in zip(ascending, descending, grads):
            p.grad, q.grad = g.clone(), -g
        up.step()
        down.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(ascending, grads))
    assert all(torch.equal(p, q) for p, q in zip(ascending, descending))


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_weight_decay_is_decoupled(paths):
    decayed, plain = make_params(seed=13), make_params(seed=13)
    lr, weight_decay = 0.1, 0.3
    a = VSGD(decayed, lr=lr, weight_decay=weight_decay, **paths)
    b = VSGD(plain, lr=lr, **paths)
    for grads in gradients(14, [p.shape for p in decayed], 3):
        for p, q, g in zip(decayed, plain, grads):
            p.grad, q.grad = g, g.clone()
        previous = [p.detach().clone() for p in decayed]
        previous_plain = [q.detach().clone() for q in plain]
        a.step()
        b.step()
        # the state never sees the decay (it is not added to the gradient) ...
        for p, q in zip(decayed, plain):
            for key in ("gradient_mean", "drift_rate", "noise_rate"):
                assert torch.equal(a.state[p][key], b.state[q][key])
        # ... and the step is theta (1 - lr wd) - lr * direction, with the plain run's direction
        for p, q, old_p, old_q in zip(decayed, plain, previous, previous_plain):
            decayed_step = p.detach() - old_p * (1 - lr * weight_decay)
            plain_step = q.detach() - old_q
            # both are -lr * direction up to float64 rounding of values of order 1: 1e-15
            assert torch.allclose(decayed_step, plain_step, rtol=0, atol=1e-15)
    assert not any(torch.equal(p, q) for p, q in zip(decayed, plain))


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_parameters_are_independent_real_coordinates(dtype, paths):
    generator = torch.Generator().manual_seed(15)
    value = torch.randn(3, 2, generator=generator, dtype=dtype)
    complex_param = torch.nn.Parameter(value.clone())
    real_twin = torch.nn.Parameter(torch.view_as_real(value).clone())
    a = VSGD([complex_param], weight_decay=0.01, **paths)
    b = VSGD([real_twin], weight_decay=0.01, **paths)
    for _ in range(4):
        grad = torch.randn(3, 2, generator=generator, dtype=dtype)
        complex_param.grad, real_twin.grad = grad, torch.view_as_real(grad).clone()
        a.step()
        b.step()
    assert torch.equal(torch.view_as_real(complex_param.detach()), real_twin.detach())
    for key in ("gradient_mean", "drift_rate", "noise_rate"):
        assert a.state[complex_param][key].dtype == dtype
        assert torch.equal(torch.view_as_real(a.state[complex_param][key]), b.state[real_twin][key])
    posterior = a.gradient_posterior(complex_param)
    twin_posterior = b.gradient_posterior(real_twin)
    for field in GradientPosterior._fields:
        twin_value = getattr(twin_posterior, field)
        assert torch.equal(torch.view_as_real(getattr(posterior, field)), twin_value)


# ------------------------------------------------------- failed steps leave everything untouched
def one_step(optimizer, params, seed):
    for p, g in zip(params, gradients(seed, [p.shape for p in params], 1)[0]):
        p.grad = g
    optimizer.step()


def test_sparse_gradients_are_rejected_before_anything_changes():
    dense, sparse = make_params(seed=17)
    optimizer = VSGD([dense, sparse])
    one_step(optimizer, [dense, sparse], 18)
    before = snapshot(optimizer, [dense, sparse])
    dense.grad = torch.ones_like(dense)
    sparse.grad = torch.ones_like(sparse).to_sparse()
    message = r"VSGD does not support sparse gradients: parameter 1 of param group 0"
    with pytest.raises(RuntimeError, match=message):
        optimizer.step()
    assert_unchanged(before, snapshot(optimizer, [dense, sparse]))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr", float("nan"), r"Invalid lr: nan"),
        ("lr", torch.tensor(float("nan")), r"Invalid lr: tensor\(nan\)"),
        ("kappa1", 0.3, r"Invalid kappa1: 0\.3"),
        ("prior_strength", -1.0, r"Invalid prior_strength: -1\.0"),
        ("init", "Paper", r"Invalid init: 'Paper'"),
        ("maximize", "no", r"Invalid maximize: 'no'"),
    ],
)
def test_a_bad_value_written_into_a_param_group_fails_the_step_cleanly(key, value, message):
    first, second = make_params(seed=19)
    optimizer = VSGD([{"params": [first]}, {"params": [second]}])
    one_step(optimizer, [first, second], 20)
    before = snapshot(optimizer, [first, second])
    # the bad value sits in the SECOND group: the first group must not have been stepped
    optimizer.param_groups[1][key] = value
    for p in (first, second):
        p.grad = torch.ones_like(p)
    with pytest.raises((ValueError, TypeError), match=message):
        optimizer.step()
    assert_unchanged(before, snapshot(optimizer, [first, second]))


# ------------------------------------------------------------------------ 16-bit parameters
@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_parameters_keep_float32_state_and_round_once(dtype, paths):
    generator = torch.Generator().manual_seed(21)
    start = torch.randn(5, 4, generator=generator).to(dtype)
    low = torch.nn.Parameter(start.clone())
    full = torch.nn.Parameter(start.float())
    a = VSGD([low], **paths)
    b = VSGD([full], **paths)
    for t in range(3):
        grad = torch.randn(5, 4, generator=generator).to(dtype)
        low.grad, full.grad = grad, grad.float()
        if t > 0:  # from the same parameter value, one 16-bit step = the float32 step rounded once
            full.data.copy_(low.detach().float())
        a.step()
        b.step()
        assert torch.equal(low.detach(), full.detach().to(dtype))
    for key in ("gradient_mean", "drift_rate", "noise_rate"):
        assert a.state[low][key].dtype == torch.float32
        # open loop: the state does not depend on the parameters
        assert torch.equal(a.state[low][key], b.state[full][key])
    assert a.state[low]["drift_rate"].min() > 0  # gamma = 1e-8 was not flushed to zero


def test_bfloat16_mlp_trains_200_steps_with_finite_values():
    torch.manual_seed(0)
    inputs = torch.randn(32, 8)
    targets = torch.sin(inputs.sum(dim=1, keepdim=True))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.to(torch.bfloat16)
    optimizer = VSGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs.bfloat16()), targets.bfloat16())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for state in optimizer.state.values():
        for key in ("gradient_mean", "drift_rate", "noise_rate"):
            assert torch.isfinite(state[key]).all()
    # it learns: the loss of the last 20 steps is well below the first
    assert sum(losses[-20:]) / 20 < 0.5 * losses[0]


# ------------------------------------------------------------------------------ GradScaler
def test_grad_scaler_steps_unscaled_and_skips_inf_steps_without_touching_state():
    scaled_params, plain_params = make_params(seed=23), make_params(seed=23)
    scaled = VSGD(scaled_params)
    plain = VSGD(plain_params)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    for t, grads in enumerate(gradients(24, [p.shape for p in plain_params], 4)):
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
        for p, g in zip(plain_params, grads):
            p.grad = g
        plain.step()
    # scaling by a power of two and unscaling is exact: the runs are bitwise equal
    assert all(torch.equal(p, q) for p, q in zip(scaled_params, plain_params))
    assert scaled.state[scaled_params[0]]["step"].item() == 3


# ----------------------------------------------------------------------- gradient posterior
def test_gradient_posterior_reports_mean_variances_and_momentum():
    param = make_params(seed=25)[0]
    optimizer = VSGD([param], prior_strength=1e-6, init="paper")
    with pytest.raises(ValueError, match=r"has no VSGD state yet"):
        optimizer.gradient_posterior(param)
    with pytest.raises(ValueError, match=r"not in this optimizer"):
        optimizer.gradient_posterior(torch.nn.Parameter(torch.zeros(2)))
    for (grad,) in gradients(26, [param.shape], 3):
        param.grad = grad
        optimizer.step()
    posterior = optimizer.gradient_posterior(param)
    state = optimizer.state[param]
    shape = hp.posterior_shape(1e-6, "paper")  # a = gamma + 1/2
    assert torch.equal(posterior.mean, state["gradient_mean"])
    assert posterior.mean.data_ptr() != state["gradient_mean"].data_ptr()
    assert torch.equal(posterior.drift_variance, state["drift_rate"] / shape)
    assert torch.equal(posterior.noise_variance, state["noise_rate"] / shape)
    momentum = state["noise_rate"] / (state["drift_rate"] + state["noise_rate"])
    assert torch.equal(posterior.momentum, momentum)
    assert torch.all((posterior.momentum > 0) & (posterior.momentum < 1))


def test_first_step_mean_is_the_prior_weighted_gradient():
    # mu_1 = g_hat_1 / (1 + K_g) for both initialisations (prior rates gamma, K_g gamma)
    for init in hp.INITS:
        param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        optimizer = VSGD([param], variance_ratio=4.0, init=init)
        param.grad = torch.tensor([5.0, -10.0, 0.0], dtype=torch.float64)
        optimizer.step()
        expected = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
        # float64 rounding of sigma^2 (a/b_g mu + a/b_ghat g) with b ~ 1e-8: a few ulps
        assert torch.allclose(optimizer.state[param]["gradient_mean"], expected, rtol=1e-14, atol=0)


def test_default_path_is_foreach_and_matches_single_tensor():
    from vsgd_bayes.torch import _functional

    params = make_params(seed=27)
    assert _functional.default_foreach(params)
    assert not _functional.default_fused(params)  # fused is only chosen when declared safe


def test_docstring_examples_run():
    import doctest

    import vsgd_bayes.torch as package
    from vsgd_bayes.torch import constant, vsgd

    for module in (package, vsgd, constant):
        failures, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failures == 0, module.__name__


def test_fused_step_on_a_device_without_the_kernel_fails_before_any_change(monkeypatch):
    from vsgd_bayes.torch import _fused

    first, second = make_params(seed=29)
    optimizer = VSGD([{"params": [first]}, {"params": [second], "fused": True}])
    monkeypatch.setattr(_fused, "fused_is_available", lambda device: False)
    for p in (first, second):
        p.grad = torch.ones_like(p)
    before = snapshot(optimizer, [first, second])
    with pytest.raises(RuntimeError, match=r"fused=True: the fused VSGD kernel is not available"):
        optimizer.step()
    assert_unchanged(before, snapshot(optimizer, [first, second]))
    assert len(optimizer.state) == 0  # not even the first group's state was created
