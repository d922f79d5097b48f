r"""The multi-tensor ("foreach") path of ``ConstantVSGD``: pure PyTorch, nothing compiled.

The single-tensor arithmetic (``_constant_single_tensor.py``), operation for operation, on
lists grouped by (device, state dtype, parameter dtype) with ``torch._foreach_*`` kernels;
the per-tensor scalars (a, rho_t) are lists. Tested against the single-tensor path.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from vsgd_bayes.torch._common import as_float, foreach_parameter_step_, increment_steps
from vsgd_bayes.torch._constant_single_tensor import constant_step_scalars

__all__ = ["foreach_constant_vsgd"]


def foreach_constant_vsgd(
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
    """One Constant VSGD step on lists of tensors, in place (contract of the single-tensor
    path :func:`~vsgd_bayes.torch._constant_single_tensor.single_tensor_constant_vsgd`)."""
    lr = as_float(lr)
    groups: dict[tuple, list[list[Tensor]]] = defaultdict(lambda: [[] for _ in range(5)])
    for tensors in zip(params, grads, gradient_means, rates, steps):
        key = (tensors[0].device, tensors[2].dtype, tensors[0].dtype)
        for column, tensor in zip(groups[key], tensors):
            column.append(tensor)
    gain = 1.0 / (1.0 + variance_ratio)  # k = 1 / (1 + K_g)
    precision_factor = 1.0 + 1.0 / variance_ratio
    for (_, dtype, _), (ps, gs, means, rts, sts) in groups.items():
        increment_steps(sts)
        scalars = [constant_step_scalars(s, prior_strength, kappa, init, dtype) for s in sts]
        shapes = [shape for shape, _ in scalars]
        step_sizes = [step_size for _, step_size in scalars]
        gradients = [g.to(dtype) for g in gs]
        if maximize:
            gradients = torch._foreach_neg(gradients)
        means_prev = torch._foreach_mul(means, 1.0)  # a copy of mu_{t-1}
        # [constant-variance]: sigma^2 = 1 / (a / b (1 + 1/K_g))
        variances = torch._foreach_reciprocal(rts)
        torch._foreach_mul_(variances, shapes)
        torch._foreach_mul_(variances, precision_factor)
        torch._foreach_reciprocal_(variances)
        # [constant-mean]: mu_t = mu_{t-1} + k (g_hat - mu_{t-1})
        innovations = torch._foreach_sub(gradients, means_prev)
        torch._foreach_mul_(innovations, gain)
        new_means = torch._foreach_add(means_prev, innovations)
        # [constant-target]: gamma + drift residual / 2 + noise residual / (2 K_g)
        drift_residuals = torch._foreach_sub(new_means, means_prev)
        torch._foreach_mul_(drift_residuals, drift_residuals)
        torch._foreach_add_(drift_residuals, variances)
        noise_residuals = torch._foreach_sub(new_means, gradients)
        torch._foreach_mul_(noise_residuals, noise_residuals)
        torch._foreach_add_(noise_residuals, variances)
        torch._foreach_mul_(drift_residuals, 0.5)
        torch._foreach_add_(drift_residuals, prior_strength)
        torch._foreach_mul_(noise_residuals, 0.5)
        torch._foreach_div_(noise_residuals, variance_ratio)
        targets = torch._foreach_add(drift_residuals, noise_residuals)
        # [svi-blend]: b <- (1 - rho_t) b + rho_t b'
        torch._foreach_mul_(rts, [1.0 - r for r in step_sizes])
        torch._foreach_mul_(targets, step_sizes)
        torch._foreach_add_(rts, targets)
        torch._foreach_copy_(means, new_means)
        # [parameter-step]: theta (1 - eta lambda) - eta mu / (sqrt(mu^2 + sigma^2) + eps)
        foreach_parameter_step_(ps, means, variances, lr, weight_decay, eps, dtype)
