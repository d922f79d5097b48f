"""Schedule-Free averaging, the ``schedule_free_momentum`` option of every torch optimizer of
the family (:mod:`vsgd_bayes.torch._schedule_free`).

The reference is independent of this package's averaging code: ``optax.contrib.schedule_free``
(optax's implementation of Defazio et al. 2024) wrapped around this package's optax
transformation of the same method, in float64 on a closed loop (the gradient is taken at the
point the optimizer hands out, so where gradients are taken is tested too). The rest: x is the
uniform average of the z iterates at a constant rate, ``eval()``/``train()`` round-trip,
a step in eval mode is refused and changes nothing, state dicts resume exactly, and off means
off. The generic behaviours (paths, dtypes, errors) run in ``tests/test_torch_battery.py``,
whose rows each carry a Schedule-Free input.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from vsgd_bayes import optax as vsgd_optax
from vsgd_bayes.torch import VSGD, ConstantVSGD, FactoredVSGD, KalmanVSGD

# float64 on both sides; the two implementations order their arithmetic differently (optax
# recomputes x from y and z as this package does, but through its own tree maps and the
# rule's jnp functions): agreement to ~1e-15 per step, grown over 60 steps of a closed loop.
RELATIVE_TOLERANCE = 1e-10
STEPS = 60
BETA = 0.9
LR = 0.05
WEIGHT_DECAY = 0.01

#: torch class -> the optax transformation of the same method (ConstantVSGD has none).
WITH_OPTAX = {
    "VSGD": (VSGD, vsgd_optax.vsgd),
    "KalmanVSGD": (KalmanVSGD, vsgd_optax.kalman_vsgd),
    "FactoredVSGD": (FactoredVSGD, vsgd_optax.factored_vsgd),
}
ALL = {"VSGD": VSGD, "ConstantVSGD": ConstantVSGD, "KalmanVSGD": KalmanVSGD,
       "FactoredVSGD": FactoredVSGD}

SHAPES = ((4, 3), (5,))


def problem(seed: int = 0):
    """A noisy quadratic: gradient at y is h (y - target) + noise_t (noise fixed in advance)."""
    rng = np.random.default_rng(seed)
    curvature = [rng.uniform(0.2, 3.0, size=s) for s in SHAPES]
    target = [rng.normal(size=s) for s in SHAPES]
    noise = [rng.normal(scale=0.3, size=(STEPS, *s)) for s in SHAPES]
    start = [rng.normal(size=s) for s in SHAPES]
    return curvature, target, noise, start


def gradient(y, i, t, curvature, target, noise):
    return curvature[i] * (y - target[i]) + noise[i][t]


def run_torch(cls, momentum=BETA, seed=0, **options):
    curvature, target, noise, start = problem(seed)
    params = [torch.nn.Parameter(torch.tensor(x)) for x in start]
    optimizer = cls(params, lr=LR, weight_decay=WEIGHT_DECAY, schedule_free_momentum=momentum,
                    **options)
    for t in range(STEPS):
        for i, p in enumerate(params):
            p.grad = torch.tensor(gradient(p.detach().numpy(), i, t, curvature, target, noise))
        optimizer.step()
    y = [p.detach().clone().numpy() for p in params]
    optimizer.eval()
    x = [p.detach().clone().numpy() for p in params]
    return y, x


def run_optax(transformation, momentum=BETA, seed=0):
    curvature, target, noise, start = problem(seed)
    with jax.enable_x64(True):
        optimizer = optax.contrib.schedule_free(
            transformation(learning_rate=LR, weight_decay=WEIGHT_DECAY), LR, b1=momentum
        )
        params = [jnp.asarray(x) for x in start]
        state = optimizer.init(params)
        for t in range(STEPS):
            grads = [jnp.asarray(gradient(np.asarray(p), i, t, curvature, target, noise))
                     for i, p in enumerate(params)]
            updates, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        x = optax.contrib.schedule_free_eval_params(state, params)
        return [np.asarray(p) for p in params], [np.asarray(p) for p in x]


def relative_error(actual, expected) -> float:
    return max(float(np.abs(a - e).max() / np.abs(e).max()) for a, e in zip(actual, expected))


@pytest.mark.parametrize("name", list(WITH_OPTAX))
def test_matches_optax_schedule_free_around_the_same_method(name):
    cls, transformation = WITH_OPTAX[name]
    y, x = run_torch(cls)
    y_ref, x_ref = run_optax(transformation)
    assert relative_error(y, y_ref) < RELATIVE_TOLERANCE, name
    assert relative_error(x, x_ref) < RELATIVE_TOLERANCE, name
    # check of the check: another beta gives another trajectory, far outside the tolerance
    y_other, _ = run_torch(cls, momentum=0.8)
    assert relative_error(y_other, y_ref) > 1e3 * RELATIVE_TOLERANCE


@pytest.mark.parametrize("name", list(ALL))
def test_x_is_the_uniform_average_of_the_z_iterates_at_a_constant_rate(name):
    # w_t = lr^2 for every t, so c_t = 1/t and x_t = (z_1 + ... + z_t) / t
    curvature, target, noise, start = problem(1)
    params = [torch.nn.Parameter(torch.tensor(x)) for x in start]
    optimizer = ALL[name](params, lr=LR, schedule_free_momentum=BETA)
    z_sum = [np.zeros(s) for s in SHAPES]
    for t in range(STEPS):
        for i, p in enumerate(params):
            p.grad = torch.tensor(gradient(p.detach().numpy(), i, t, curvature, target, noise))
        optimizer.step()
        for i, p in enumerate(params):
            z_sum[i] += optimizer.state[p]["schedule_free_z"].numpy()
    y = [p.detach().clone() for p in params]
    optimizer.eval()
    for i, p in enumerate(params):
        np.testing.assert_allclose(p.detach().numpy(), z_sum[i] / STEPS, rtol=1e-12, atol=1e-12)
    # and y is beta x + (1 - beta) z
    z = [optimizer.state[p]["schedule_free_z"] for p in params]
    for yi, p, zi in zip(y, params, z):
        torch.testing.assert_close(yi, BETA * p.detach() + (1 - BETA) * zi, rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("name", list(ALL))
def test_eval_then_train_restores_y_and_a_step_in_eval_mode_changes_nothing(name):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))]
    optimizer = ALL[name](params, lr=LR, schedule_free_momentum=BETA)
    for _ in range(5):
        params[0].grad = torch.randn(3, 2, dtype=torch.float64)
        optimizer.step()
    y = params[0].detach().clone()
    optimizer.eval()
    optimizer.eval()  # idempotent
    x = params[0].detach().clone()
    assert not torch.equal(x, y)
    state = copy.deepcopy(optimizer.state_dict())
    params[0].grad = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"eval mode .* call optimizer\.train\(\) before step"):
        optimizer.step()
    assert torch.equal(params[0].detach(), x)
    after = optimizer.state_dict()
    for key, value in state["state"][0].items():
        assert torch.equal(after["state"][0][key], value), key
    optimizer.train()
    optimizer.train()  # idempotent
    torch.testing.assert_close(params[0].detach(), y, rtol=1e-14, atol=1e-15)
    optimizer.step()  # steps again in train mode


@pytest.mark.parametrize("name", list(ALL))
def test_a_state_dict_resumes_the_run_exactly(name):
    curvature, target, noise, start = problem(2)

    def build():
        params = [torch.nn.Parameter(torch.tensor(x)) for x in start]
        return params, ALL[name](params, lr=LR, schedule_free_momentum=BETA)

    def steps(params, optimizer, times):
        for t in times:
            for i, p in enumerate(params):
                p.grad = torch.tensor(gradient(p.detach().numpy(), i, t, curvature, target,
                                               noise))
            optimizer.step()

    params, optimizer = build()
    steps(params, optimizer, range(STEPS))
    resumed_params, resumed = build()
    half_params, half = build()
    steps(half_params, half, range(STEPS // 2))
    saved = copy.deepcopy(half.state_dict())
    with torch.no_grad():
        for p, q in zip(resumed_params, half_params):
            p.copy_(q)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["schedule_free_weight_sum"] == pytest.approx(
        (STEPS // 2) * LR**2)
    steps(resumed_params, resumed, range(STEPS // 2, STEPS))
    for p, q in zip(resumed_params, params):
        assert torch.equal(p, q)


def test_off_is_the_plain_optimizer_bitwise_and_keeps_no_average():
    torch.manual_seed(1)
    grads = [torch.randn(4) for _ in range(10)]
    runs = []
    for options in ({}, {"schedule_free_momentum": None}):
        param = torch.nn.Parameter(torch.ones(4))
        optimizer = VSGD([param], lr=LR, **options)
        for g in grads:
            param.grad = g.clone()
            optimizer.step()
        optimizer.eval()  # a no-op without the option
        assert "schedule_free_z" not in optimizer.state[param]
        runs.append(param.detach().clone())
    assert torch.equal(runs[0], runs[1])
    # and on, the trajectory differs (the option is not silently ignored)
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = VSGD([param], lr=LR, schedule_free_momentum=BETA)
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
    assert not torch.allclose(param.detach(), runs[0])


def test_groups_switch_on_their_own():
    on = torch.nn.Parameter(torch.ones(3))
    off = torch.nn.Parameter(torch.ones(3))
    optimizer = VSGD([{"params": [on], "schedule_free_momentum": 0.5}, {"params": [off]}],
                     lr=LR)
    for _ in range(3):
        on.grad, off.grad = torch.ones(3), torch.ones(3)
        optimizer.step()
    before = off.detach().clone(), on.detach().clone()
    optimizer.eval()
    assert torch.equal(off.detach(), before[0])
    assert not torch.equal(on.detach(), before[1])
    with pytest.raises(ValueError, match=r"Invalid schedule_free_momentum: -0\.5"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))],
                                   "schedule_free_momentum": -0.5})
