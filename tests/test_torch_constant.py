"""``ConstantVSGD``: validation, behaviour and its exact relations to Adam and SGD-momentum.

With beta = K_g / (1 + K_g), Constant VSGD's posterior mean is the EMA
mu_t = mu_{t-1} + (1 - beta)(g_hat_t - mu_{t-1}) from mu_0 = 0, which is torch Adam's
``exp_avg`` (beta_1 = beta) and, from the second step on when g_hat_1 = 0, torch SGD's
``momentum_buffer`` with momentum = dampening = beta (derivation in the module docstring of
``vsgd_bayes.torch.constant``).
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules import constant as constant_rule
from vsgd_bayes.torch import ConstantVSGD
from vsgd_bayes.torch.constant import DEFAULT_VARIANCE_RATIO

PATHS = [dict(foreach=False), dict(foreach=True)]
PATH_IDS = ["single_tensor", "foreach"]



def stream(seed, shape, steps, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype) * 3.0 for _ in range(steps)]


def test_default_variance_ratio_gives_adams_momentum():
    assert DEFAULT_VARIANCE_RATIO == 9.0
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = ConstantVSGD([param])
    param.grad = torch.tensor([1.0, -2.0], dtype=torch.float64)
    optimizer.step()
    # mu_1 = (1 - 0.9) g_hat_1; 1/(1+9) and the EMA update round to within one ulp
    expected = torch.tensor([0.1, -0.2], dtype=torch.float64)
    assert torch.allclose(optimizer.state[param]["gradient_mean"], expected, rtol=1e-15, atol=0)


def test_rule_and_optimizer_share_every_default():
    # One table (hp.CONSTANT_DEFAULTS) for the JAX rule and the torch optimizer: their
    # signatures name its values, and the two run with their defaults give the same run.
    rule_defaults = inspect.signature(constant_rule.step).parameters
    torch_defaults = inspect.signature(ConstantVSGD).parameters
    for name, value in hp.CONSTANT_DEFAULTS.items():
        assert rule_defaults[name].default == torch_defaults[name].default == value, name
    param = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=torch.float64))
    optimizer = ConstantVSGD([param])
    theta = jnp.asarray(param.detach().numpy())
    state = constant_rule.init_state(theta)
    for grad in stream(5, (5,), 6):
        param.grad = grad
        optimizer.step()
        theta, state = constant_rule.step(theta, jnp.asarray(grad.numpy()), state)
    # the same float64 operations in the same order: rounding only (1e-12 of values ~ 1)
    np.testing.assert_allclose(param.detach().numpy(), np.asarray(theta), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        optimizer.state[param]["rate"].numpy(), np.asarray(state.rate), rtol=1e-12
    )


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("variance_ratio", [3.0, 7.0])
def test_gradient_mean_is_adams_first_moment_bitwise(variance_ratio, paths):
    # K_g = 3, 7: beta = 0.75, 0.875, so 1 - beta = 1/(1 + K_g) exactly and torch's
    # exp_avg.lerp_(g, 1 - beta) = m + (1 - beta)(g - m) performs our very operations.
    beta = variance_ratio / (1.0 + variance_ratio)
    ours = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    adams = torch.nn.Parameter(ours.detach().clone())
    constant = ConstantVSGD([ours], variance_ratio=variance_ratio, **paths)
    adam = torch.optim.Adam([adams], betas=(beta, 0.999), foreach=False)
    for grad in stream(1, (4, 3), 25):
        ours.grad, adams.grad = grad, grad.clone()  # open loop: the same stream for both
        constant.step()
        adam.step()
        assert torch.equal(constant.state[ours]["gradient_mean"], adam.state[adams]["exp_avg"])


def test_gradient_mean_is_adams_first_moment_for_k_9_up_to_rounding():
    # K_g = 9: 1/(1+9) and 1 - 0.9 differ in their last bit; the EMAs then agree to rounding
    ours = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
    adams = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
    constant = ConstantVSGD([ours], variance_ratio=9.0)
    adam = torch.optim.Adam([adams], betas=(0.9, 0.999), foreach=False)
    for grad in stream(2, (50,), 40):
        ours.grad, adams.grad = grad, grad.clone()
        constant.step()
        adam.step()
    # values of order 1, a few float64 roundings per step that the EMA contracts: 1e-14
    mean, exp_avg = constant.state[ours]["gradient_mean"], adam.state[adams]["exp_avg"]
    assert torch.allclose(mean, exp_avg, rtol=0, atol=1e-14)


@pytest.mark.parametrize("first_gradient_is_zero", [True, False])
def test_gradient_mean_and_sgd_momentum_buffer(first_gradient_is_zero):
    # torch SGD: buf_1 = g_hat_1 (no dampening at the first step), then
    # buf_t = beta buf_{t-1} + (1 - beta) g_hat_t. Ours: mu_1 = (1 - beta) g_hat_1, then the
    # same recursion. Hence buf_t - mu_t = beta^(t-1) (buf_1 - mu_1) = beta^t g_hat_1, which is
    # zero iff g_hat_1 = 0.
    variance_ratio = 3.0
    beta = variance_ratio / (1.0 + variance_ratio)
    grads = stream(3, (6,), 30)
    if first_gradient_is_zero:
        grads[0] = torch.zeros(6, dtype=torch.float64)
    ours = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
    sgds = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
    constant = ConstantVSGD([ours], variance_ratio=variance_ratio)
    sgd = torch.optim.SGD([sgds], lr=0.1, momentum=beta, dampening=beta, foreach=False)
    for t, grad in enumerate(grads, start=1):
        ours.grad, sgds.grad = grad, grad.clone()
        constant.step()
        sgd.step()
        mean = constant.state[ours]["gradient_mean"]
        buffer = sgd.state[sgds]["momentum_buffer"]
        predicted_gap = beta**t * grads[0]
        # mu + k (g - mu) and beta buf + (1 - beta) g associate differently: float64 rounding
        # of values of order 1, contracted by the EMA, stays below 1e-14
        assert torch.allclose(buffer - mean, predicted_gap, rtol=0, atol=1e-14), t
    if not first_gradient_is_zero:
        assert (buffer - mean).abs().max() > 1e-6  # the gap decays like 0.75^t but is there
