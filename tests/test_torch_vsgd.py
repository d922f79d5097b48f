"""Behaviour of the torch ``VSGD`` optimizer (single-tensor and default paths).

Equalities between two runs of the same arithmetic are bitwise (``torch.equal``); the few
others carry their tolerance and its reason.
"""

from __future__ import annotations

import copy

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


# ------------------------------------------------------------------------- step counter
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


def test_gradient_posterior_of_a_complex_parameter_is_that_of_its_real_coordinates():
    generator = torch.Generator().manual_seed(15)
    value = torch.randn(3, 2, generator=generator, dtype=torch.complex128)
    complex_param = torch.nn.Parameter(value.clone())
    real_twin = torch.nn.Parameter(torch.view_as_real(value).clone())
    a, b = VSGD([complex_param]), VSGD([real_twin])
    for _ in range(3):
        grad = torch.randn(3, 2, generator=generator, dtype=torch.complex128)
        complex_param.grad, real_twin.grad = grad, torch.view_as_real(grad).clone()
        a.step()
        b.step()
    posterior, twin_posterior = a.gradient_posterior(complex_param), b.gradient_posterior(real_twin)
    for field in GradientPosterior._fields:
        value = getattr(posterior, field)
        assert value.dtype == torch.complex128, field
        assert torch.equal(torch.view_as_real(value), getattr(twin_posterior, field)), field


@pytest.mark.parametrize("kernel_built, expected_path", [(False, "foreach"), (True, "fused")])
def test_cpu_default_path_is_fused_once_built_else_foreach_and_matches_single_tensor(
    monkeypatch, kernel_built, expected_path
):
    from vsgd_bayes.torch import _foreach, _fused

    if kernel_built:
        _fused.build_cpu_kernel()  # the real kernel (cached after its first build)
    else:  # as on a machine where `make setup` could not build it
        monkeypatch.setattr(_fused, "cpu_kernel_is_built", lambda: False)
    calls = []
    module, name = (_foreach, "foreach_vsgd") if expected_path == "foreach" else (
        _fused, "fused_vsgd"
    )
    path = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        path(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    default_params, single_params = make_params(seed=27), make_params(seed=27)
    default = VSGD(default_params, weight_decay=0.01)  # foreach=None, fused=None
    single = VSGD(single_params, weight_decay=0.01, foreach=False, fused=False)
    for grads in gradients(28, [p.shape for p in default_params], 5):
        for p, q, g in zip(default_params, single_params, grads):
            p.grad, q.grad = g, g.clone()
        default.step()
        single.step()
    assert calls == [2] * 5  # the default ran the expected path, once per step, on both params
    # and it computes what the single-tensor path computes: the single-pass form differs by
    # float64 rounding only (~1e-16 per operation on values of order 1; 1e-12 is a margin)
    for p, q, start in zip(default_params, single_params, make_params(seed=27)):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
        assert (p - start).abs().min() > 1e-3  # every coordinate moved: the check has teeth
        for key in ("gradient_mean", "drift_rate", "noise_rate"):
            expected = single.state[q][key]
            scale = expected.abs().max()
            assert torch.allclose(default.state[p][key], expected, rtol=0, atol=1e-12 * scale)


def test_cpu_kernel_probe_is_a_file_check_that_never_compiles(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    from vsgd_bayes.torch import _fused

    def no_build(*args, **kwargs):
        raise AssertionError("the probe must never build the kernel")

    monkeypatch.setattr(cpp_extension, "load", no_build)
    monkeypatch.setattr(_fused, "_cpu_module", None)  # as in a fresh process
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache
    library = _fused.cpu_kernel_path()
    assert library.parent.parent == tmp_path and library.name.startswith("vsgd_fused_cpu_")
    assert not _fused.cpu_kernel_is_built()
    library.write_bytes(b"")  # check of the check: a cached library is found
    assert _fused.cpu_kernel_is_built()
    # another source version has another name, so a stale build is not taken for this one
    monkeypatch.setattr(_fused, "cpu_extension_name", lambda: "vsgd_fused_cpu_avx2_00000000")
    assert not _fused.cpu_kernel_is_built()


@pytest.mark.parametrize(
    "built, loads, expected",
    [
        (False, True, False),  # not built: foreach, and nothing is compiled or loaded
        (True, True, True),  # built: fused
        (True, False, False),  # built but it fails to load (e.g. no ninja): foreach
    ],
)
def test_cpu_default_is_fused_only_when_the_kernel_is_built_and_loads(
    monkeypatch, built, loads, expected
):
    from vsgd_bayes.torch import _functional, _fused

    asked = []

    def available(device):
        asked.append(torch.device(device).type)
        return loads

    monkeypatch.setattr(_fused, "cpu_kernel_is_built", lambda: built)
    monkeypatch.setattr(_fused, "fused_is_available", available)
    params = [_FakeParam("cpu"), _FakeParam("cpu", torch.float64)]
    assert _functional.default_fused(params) is expected
    assert asked == (["cpu"] if built else [])  # an unbuilt kernel is never even loaded
    assert _functional.default_fused([_FakeParam("cpu", torch.float8_e4m3fn)]) is False


def test_build_command_reports_the_library_or_the_reason(monkeypatch, capsys):
    from vsgd_bayes.torch import build

    monkeypatch.setattr(build, "cpu_kernel_is_built", lambda: True)
    monkeypatch.setattr(build, "build_cpu_kernel", lambda: "/cache/vsgd_fused_cpu_x.so")
    assert build.main() == 0
    assert "already built: /cache/vsgd_fused_cpu_x.so" in capsys.readouterr().out

    def fails():
        raise RuntimeError("the fused CPU kernel could not be built: OSError: no compiler")

    monkeypatch.setattr(build, "build_cpu_kernel", fails)
    assert build.main() == 1
    err = capsys.readouterr().err
    assert "no compiler" in err and "foreach" in err


def test_build_cpu_kernel_raises_with_the_reason_when_the_build_fails(monkeypatch):
    from torch.utils import cpp_extension

    from vsgd_bayes.torch import _fused

    def broken(*args, **kwargs):
        raise OSError("no C++ compiler")

    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(_fused, "_cpu_module", None)
    monkeypatch.setattr(_fused, "_cpu_tried", True)  # an earlier failure is retried
    with pytest.raises(RuntimeError, match="could not be built: OSError: no C\\+\\+ compiler"):
        _fused.build_cpu_kernel()


class _FakeParam:
    """A stand-in parameter on a device that this machine may not have (only .device is read)."""

    def __init__(self, device: str, dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype


@pytest.mark.parametrize(
    "devices, triton, expected",
    [
        (["cuda:0", "cuda:0"], True, True),  # CUDA with Triton: fused by default
        (["cuda:0"], False, False),  # no Triton: foreach
        (["cpu", "cpu"], True, False),  # CPU, kernel not built (below): foreach
        (["cuda:0", "cpu"], True, False),  # mixed devices: foreach
        ([], True, False),
        (["cuda:0", ("cuda:0", torch.float8_e4m3fn)], True, False),  # a dtype it lacks
    ],
)
def test_fused_is_the_default_on_cuda_when_triton_is_importable(
    monkeypatch, devices, triton, expected
):
    from vsgd_bayes.torch import _functional, _fused

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_fused, "_triton_available", lambda: triton)

    original = _fused.fused_is_available

    def cpu_kernel_must_not_be_asked(device):  # a default never builds the CPU kernel
        assert torch.device(device).type != "cpu"
        return original(device)

    monkeypatch.setattr(_fused, "fused_is_available", cpu_kernel_must_not_be_asked)
    monkeypatch.setattr(_fused, "cpu_kernel_is_built", lambda: False)
    params = [_FakeParam(*d) if isinstance(d, tuple) else _FakeParam(d) for d in devices]
    assert _functional.default_fused(params) is expected


@pytest.mark.parametrize("default_fused, expected", [(True, "fused"), (False, "foreach")])
def test_run_path_takes_the_fused_path_when_it_is_the_default(monkeypatch, default_fused, expected):
    from vsgd_bayes.torch import _functional, _fused

    monkeypatch.setattr(_functional, "default_fused", lambda params, module=None: default_fused)
    monkeypatch.setattr(_fused, "fused_is_available", lambda device: True)
    taken = []
    paths = {name: (lambda *a, name=name, **k: taken.append(name))
             for name in ("single_tensor", "foreach", "fused")}
    tensors = [[torch.zeros(2)] for _ in range(5)]
    _functional.run_path(paths, tensors, [torch.tensor(0.0)], foreach=None, fused=None,
                         hyperparameters={})
    assert taken == [expected]
    # an optimizer without a fused path (ConstantVSGD) never takes it by default
    taken.clear()
    del paths["fused"]
    _functional.run_path(paths, tensors, [torch.tensor(0.0)], foreach=None, hyperparameters={})
    assert taken == ["foreach"]


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


# ------------------------------------------------------- the default lr on a noiseless problem
def _toy_loss_rises(seed: int, **options) -> bool:
    """PyTorch's noiseless optimizer toy, recreated: loss = |W x + b|^2 with W (10 x 5), b, x
    standard normal (float32), 20 steps; whether the final loss is above the initial one."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(10, 5, generator=generator))
    bias = torch.nn.Parameter(torch.randn(10, generator=generator))
    inputs = torch.randn(5, generator=generator)
    optimizer = VSGD([weight, bias], **options)

    def loss():
        return (weight.mv(inputs) + bias).pow(2).sum()

    initial = loss().item()
    for _ in range(20):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    return loss().item() > initial


@pytest.mark.parametrize(
    "paths", [dict(foreach=False, fused=False), dict(foreach=True), dict(fused=True)],
    ids=["single_tensor", "foreach", "fused"],
)
@pytest.mark.parametrize(
    "options, rises",
    [
        # measured here, every path: 16 of 20 seeds end above their initial loss (seed 0:
        # 149.2 -> 23.7 after 6 steps -> 336.4 after 20). Without mini-batch noise the
        # overshoot's oscillation reads as noise: b_ghat grows, the momentum nears 1.
        (dict(lr=0.1), 16),
        (dict(lr=0.03), 0),  # measured: 0 of 20 (seed 0 ends at 13.0)
        (dict(lr=0.1, init="paper"), 0),  # measured: 0 of 20 (seed 0: 37.1)
        (dict(lr=0.1, variance_ratio=9.0), 0),  # measured: 0 of 20 (seed 0: 32.3)
    ],
    ids=["default_lr", "lr_0.03", "paper_init", "variance_ratio_9"],
)
def test_noiseless_toy_default_lr_overshoots_and_the_remedies_do_not(options, rises, paths):
    count = sum(_toy_loss_rises(seed, **options, **paths) for seed in range(20))
    assert count == rises
