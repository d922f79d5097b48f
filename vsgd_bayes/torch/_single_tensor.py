r"""The single-tensor path of the torch VSGD optimizer: a line-by-line port of the JAX rule.

Each function of :mod:`vsgd_bayes.rules.vsgd` has a counterpart here with the same name and the same
arithmetic, in the same order, so that this path agrees with the rule to float64 rounding
(tested in ``tests/test_torch_parity.py``). It loops over the parameters one at a time; the
foreach and fused paths (``_foreach.py``, ``_fused.py``) implement the same contract faster
and are tested against this one, parameters and every state entry.

The scalars of a step (the shape a, the Robbins-Monro step sizes rho_{t,i} = t^(-kappa_i), the
prior rates gamma and K_g gamma) come from :mod:`vsgd_bayes.hyperparameters` as Python float64
numbers, so that 16-bit parameters never see them rounded. Only under ``torch.compile`` are they
computed from the step tensor (a Python number read off a tensor would break the graph).

References:
    Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep Neural
    Networks", 2024 (arXiv 2404.06549).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._common import step_in_state_dtype_

__all__ = ["single_tensor_vsgd", "step_scalars"]


def step_scalars(
    step_t: Tensor, prior_strength: float, kappa1: float, kappa2: float, init: str, dtype
) -> tuple[Any, Any, Any]:
    """(shape a, rho_{t,1}, rho_{t,2}) for the step count held in ``step_t`` (already advanced).

    Eagerly these are Python floats (float64); under ``torch.compile`` they are 0-dim tensors of
    ``dtype`` computed from ``step_t`` (reading a Python number off a tensor breaks the graph).
    """
    if torch.compiler.is_compiling():
        step = step_t.to(dtype)  # an exact integer in any float dtype up to 2^24
        shape = torch.where(
            step <= 1,
            torch.scalar_tensor(hp.prior_shape(prior_strength, init), dtype=dtype),
            torch.scalar_tensor(hp.posterior_shape(prior_strength, init), dtype=dtype),
        )
    else:
        step = step_t.item()
        shape = hp.shape_before_step(step, prior_strength, init)
    drift_step_size, noise_step_size = hp.step_sizes(step, kappa1, kappa2)
    return shape, drift_step_size, noise_step_size


def local_update(
    gradient_mean_prev: Tensor, drift_rate: Tensor, noise_rate: Tensor, gradient: Tensor, shape
) -> tuple[Tensor, Tensor]:
    """(mu_t, sigma_t^2): ``vsgd_bayes.rules.vsgd.local_update`` [local-mean], [local-variance]."""
    drift_precision = shape / drift_rate
    noise_precision = shape / noise_rate
    gradient_variance = (drift_precision + noise_precision).reciprocal_()
    gradient_mean = gradient_variance * (
        drift_precision.mul_(gradient_mean_prev) + noise_precision.mul_(gradient)
    )
    return gradient_mean, gradient_variance


def global_targets(
    gradient_mean: Tensor,
    gradient_variance: Tensor,
    gradient_mean_prev: Tensor,
    gradient: Tensor,
    prior_strength: float,
    variance_ratio: float,
    init: str,
) -> tuple[Tensor, Tensor]:
    """(b'_g, b'_ghat): ``vsgd_bayes.rules.vsgd.global_targets`` [global-targets]."""
    drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
    drift_rate_target = (
        (gradient_mean - gradient_mean_prev).square_().add_(gradient_variance).mul_(0.5)
    ).add_(drift_prior_rate)
    noise_rate_target = (
        (gradient_mean - gradient).square_().add_(gradient_variance).mul_(0.5)
    ).add_(noise_prior_rate)
    return drift_rate_target, noise_rate_target


def svi_blend_(rate: Tensor, rate_target: Tensor, step_size) -> None:
    """In place b <- (1 - rho) b + rho b' [svi-blend] (``rate_target`` is consumed)."""
    rate.mul_(1.0 - step_size).add_(rate_target.mul_(step_size))


def normalized_direction(gradient_mean: Tensor, gradient_variance: Tensor, eps: float) -> Tensor:
    """mu / (sqrt(mu^2 + sigma^2) + eps)."""
    return gradient_mean / (gradient_mean.square().add_(gradient_variance).sqrt_().add_(eps))


def parameter_step_(
    param: Tensor,
    gradient_mean: Tensor,
    gradient_variance: Tensor,
    lr: float | Tensor,
    weight_decay: float,
    eps: float,
) -> None:
    """In place theta <- theta (1 - eta lambda) - eta mu / (sqrt(mu^2 + sigma^2) + eps)
    [parameter-step]."""
    if weight_decay != 0.0:  # multiplying by exactly 1.0 would change nothing
        param.mul_(1.0 - lr * weight_decay)
    param.sub_(normalized_direction(gradient_mean, gradient_variance, eps).mul_(lr))


def single_tensor_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    drift_rates: list[Tensor],
    noise_rates: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    variance_ratio: float,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    weight_decay: float,
    eps: float,
    init: str,
    maximize: bool,
) -> None:
    """One VSGD step on each parameter, one tensor at a time (updates params and state in place).

    Symbols: eta = ``lr``, K_g = ``variance_ratio``, gamma = ``prior_strength``,
    kappa_i = ``kappa1``/``kappa2``, lambda = ``weight_decay``, epsilon = ``eps``; the state is
    mu = ``gradient_means``, b_g = ``drift_rates``, b_ghat = ``noise_rates`` and the per-parameter
    step counts ``steps`` (0-dim float32 tensors, advanced here). The step is the one of
    :func:`vsgd_bayes.rules.vsgd.step`, with g_hat = -grad when ``maximize``.

    All tensors are real (complex parameters are viewed as real by the caller). The arithmetic
    runs in the state dtype, promote(param dtype, float32); the parameter keeps its own dtype.
    Gradients are never modified. Hyperparameters are not validated here (the optimizer does it
    before anything is modified).
    """
    for param, grad, gradient_mean, drift_rate, noise_rate, step_t in zip(
        params, grads, gradient_means, drift_rates, noise_rates, steps
    ):
        dtype = gradient_mean.dtype
        step_t += 1
        shape, drift_step_size, noise_step_size = step_scalars(
            step_t, prior_strength, kappa1, kappa2, init, dtype
        )
        # g_hat in the state dtype; a new tensor whenever it is negated or cast, never p.grad.
        gradient = grad.to(dtype)
        if maximize:
            gradient = -gradient

        gradient_mean_prev = gradient_mean.clone()
        new_gradient_mean, gradient_variance = local_update(
            gradient_mean_prev, drift_rate, noise_rate, gradient, shape
        )
        drift_rate_target, noise_rate_target = global_targets(
            new_gradient_mean,
            gradient_variance,
            gradient_mean_prev,
            gradient,
            prior_strength,
            variance_ratio,
            init,
        )
        svi_blend_(drift_rate, drift_rate_target, drift_step_size)
        svi_blend_(noise_rate, noise_rate_target, noise_step_size)
        gradient_mean.copy_(new_gradient_mean)

        step_in_state_dtype_(
            param,
            dtype,
            lambda p: parameter_step_(p, gradient_mean, gradient_variance, lr, weight_decay, eps),
        )
