"""``ConstantVSGD``: validation, behaviour and its exact relations to Adam and SGD-momentum.

With beta = K_g / (1 + K_g), Constant VSGD's posterior mean is the EMA
mu_t = mu_{t-1} + (1 - beta)(g_hat_t - mu_{t-1}) from mu_0 = 0, which is torch Adam's
``exp_avg`` (beta_1 = beta) and, from the second step on when g_hat_1 = 0, torch SGD's
``momentum_buffer`` with momentum = dampening = beta (derivation in the module docstring of
``vsgd_bayes.torch.constant``).
"""

from __future__ import annotations

import pytest
import torch

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


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kappa=0.5), r"Invalid kappa: 0\.5 \(must be in \(0\.5, 1\]\)"),
        (dict(kappa=float("nan")), r"Invalid kappa: nan"),
        (dict(variance_ratio=-1.0), r"Invalid variance_ratio: -1\.0"),
        (dict(lr=-1.0), r"Invalid lr: -1\.0"),
        (dict(init="ref"), r"Invalid init: 'ref'"),
    ],
)
def test_bad_hyperparameters_are_rejected(options, message):
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=message):
        ConstantVSGD([param], **options)
    optimizer = ConstantVSGD([param])
    optimizer.param_groups[0].update(options)  # written between steps: the step fails cleanly
    param.grad = torch.ones(2)
    with pytest.raises(ValueError, match=message):
        optimizer.step()
    assert torch.equal(param.detach(), torch.zeros(2)) and len(optimizer.state) == 0


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


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_late_parameter_maximize_and_complex(paths):
    generator = torch.Generator().manual_seed(4)
    value = torch.randn(3, generator=generator, dtype=torch.complex128)
    late = torch.nn.Parameter(value.clone())
    twin = torch.nn.Parameter(torch.view_as_real(value).clone())
    early = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    a = ConstantVSGD([early, late], maximize=True, **paths)
    b = ConstantVSGD([twin], **paths)
    for t in range(5):
        grad = torch.randn(3, generator=generator, dtype=torch.complex128)
        early.grad = torch.ones(2, dtype=torch.float64)
        late.grad = grad if t >= 2 else None
        a.step()
        if t >= 2:
            twin.grad = -torch.view_as_real(grad)  # maximize = minimise the negated gradient
            b.step()
    assert a.state[early]["step"].item() == 5 and a.state[late]["step"].item() == 3
    assert torch.equal(torch.view_as_real(late.detach()), twin.detach())
    assert torch.equal(torch.view_as_real(a.state[late]["rate"]), b.state[twin]["rate"])
    assert torch.all(early > 0)  # maximize climbs along the gradient


def test_16_bit_parameters_keep_float32_state():
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    optimizer = ConstantVSGD([param])
    param.grad = torch.full((4,), 0.5, dtype=torch.float16)
    optimizer.step()
    assert optimizer.state[param]["rate"].dtype == torch.float32
    assert torch.isfinite(param).all() and optimizer.state[param]["rate"].min() > 0
