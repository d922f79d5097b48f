r"""The single-tensor path of ``ConstantVSGD``: a line-by-line port of the JAX constant rule.

Each function of :mod:`vsgd_bayes.rules.constant` has its counterpart here, with the same
arithmetic in the same order, so that this path agrees with the rule to float64 rounding
(``tests/test_torch_parity.py``); the foreach path (``_constant_foreach.py``) is tested against
this one. The scalars of a step (the shape a, rho_t = t^(-kappa)) are Python float64 numbers,
except under ``torch.compile``, where they are computed from the step tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._common import step_in_state_dtype_
from vsgd_bayes.torch._single_tensor import parameter_step_, svi_blend_

__all__ = ["single_tensor_constant_vsgd", "constant_step_scalars"]


def constant_step_scalars(
    step_t: Tensor, prior_strength: float, kappa: float, init: str, dtype: torch.dtype
) -> tuple[Any, Any]:
    """(shape a, rho_t = t^-kappa) for the step count in ``step_t`` (already advanced).

    a = a_0 at t = 1 and a_0 + 1 afterwards. Python float64 numbers eagerly, 0-dim tensors of
    ``dtype`` under ``torch.compile`` (reading a number off a tensor would break the graph).
    """
    if torch.compiler.is_compiling():
        step = step_t.to(dtype)
        shape = torch.where(
            step <= 1,
            torch.scalar_tensor(hp.prior_shape(prior_strength, init), dtype=dtype),
            torch.scalar_tensor(hp.constant_posterior_shape(prior_strength, init), dtype=dtype),
        )
    else:
        step = step_t.item()
        shape = (
            hp.prior_shape(prior_strength, init)
            if step <= 1
            else hp.constant_posterior_shape(prior_strength, init)
        )
    return shape, step ** (-kappa)


def local_update(
    gradient_mean_prev: Tensor, rate: Tensor, gradient: Tensor, shape: Any, variance_ratio: float
) -> tuple[Tensor, Tensor]:
    """(mu_t, sigma_t^2): ``constant_rule.local_update`` [constant-mean], [constant-variance]."""
    precision_factor = 1.0 + 1.0 / variance_ratio
    gradient_variance = (shape / rate).mul_(precision_factor).reciprocal_()
    gain = 1.0 / (1.0 + variance_ratio)  # k = 1 / (1 + K_g)
    gradient_mean = gradient_mean_prev + (gradient - gradient_mean_prev).mul_(gain)
    return gradient_mean, gradient_variance


def global_target(
    gradient_mean: Tensor,
    gradient_variance: Tensor,
    gradient_mean_prev: Tensor,
    gradient: Tensor,
    prior_strength: float,
    variance_ratio: float,
) -> Tensor:
    """b' = gamma + drift residual / 2 + noise residual / (2 K_g) [constant-target]."""
    drift_residual = (gradient_mean - gradient_mean_prev).square_().add_(gradient_variance)
    noise_residual = (gradient_mean - gradient).square_().add_(gradient_variance)
    return drift_residual.mul_(0.5).add_(prior_strength).add_(
        noise_residual.mul_(0.5).div_(variance_ratio)
    )


def single_tensor_constant_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    rates: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    variance_ratio: float,
    prior_strength: float,
    kappa: float,
    weight_decay: float,
    eps: float,
    init: str,
    maximize: bool,
) -> None:
    """One Constant VSGD step on each parameter, one tensor at a time, in place.

    State: mu = ``gradient_means``, b = ``rates``, step counters ``steps`` (advanced here).
    Real tensors only (the caller views complex ones as real); arithmetic in the state dtype;
    gradients are never modified; hyperparameters are not validated here.
    """
    for param, grad, gradient_mean, rate, step_t in zip(
        params, grads, gradient_means, rates, steps
    ):
        dtype = gradient_mean.dtype
        step_t += 1
        shape, step_size = constant_step_scalars(step_t, prior_strength, kappa, init, dtype)
        gradient = grad.to(dtype)
        if maximize:
            gradient = -gradient
        gradient_mean_prev = gradient_mean.clone()
        new_gradient_mean, gradient_variance = local_update(
            gradient_mean_prev, rate, gradient, shape, variance_ratio
        )
        rate_target = global_target(
            new_gradient_mean,
            gradient_variance,
            gradient_mean_prev,
            gradient,
            prior_strength,
            variance_ratio,
        )
        svi_blend_(rate, rate_target, step_size)  # [svi-blend]
        gradient_mean.copy_(new_gradient_mean)
        # [parameter-step], VSGD's
        step_in_state_dtype_(
            param,
            dtype,
            lambda p: parameter_step_(p, gradient_mean, gradient_variance, lr, weight_decay, eps),
        )
