r"""The multi-tensor ("foreach") path of ``KalmanVSGD``: pure PyTorch, nothing compiled.

The single-tensor arithmetic (``_kalman_single_tensor.py``), operation for operation, on
lists grouped by (device, state dtype, parameter dtype) with ``torch._foreach_*`` kernels; the
per-tensor scalars (c / t, t^-kappa) are lists. Tested against the single-tensor path.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._common import as_float, increment_steps
from vsgd_bayes.torch._kalman_single_tensor import kalman_step_scalars

__all__ = ["foreach_kalman_vsgd"]


def foreach_kalman_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    innovation_variances: list[Tensor],
    log_drift_to_noises: list[Tensor],
    gain_sensitivities: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    ratio_step_scale: float,
    max_ratio_change: float,
    kappa: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    """One Kalman VSGD step on lists of tensors, in place (the contract of
    :func:`~vsgd_bayes.torch._kalman_single_tensor.single_tensor_kalman_vsgd`)."""
    lr = as_float(lr)
    groups: dict[tuple, list[list[Tensor]]] = defaultdict(lambda: [[] for _ in range(7)])
    for tensors in zip(params, grads, gradient_means, innovation_variances, log_drift_to_noises,
                       gain_sensitivities, steps):
        key = (tensors[0].device, tensors[2].dtype, tensors[0].dtype)
        for column, tensor in zip(groups[key], tensors):
            column.append(tensor)
    for (_, dtype, param_dtype), (ps, gs, means, variances, log_ratios, sensitivities,
                                  sts) in groups.items():
        tiny = torch.finfo(dtype).tiny
        increment_steps(sts)
        scalars = [kalman_step_scalars(s, ratio_step_scale, kappa, dtype) for s in sts]
        step_sizes = [step_size for step_size, _ in scalars]
        weights = [weight for _, weight in scalars]
        gradients = [g.to(dtype) for g in gs]
        if maximize:
            gradients = torch._foreach_neg(gradients)
        # [kalman-steady-gain]: k = 2 / (1 + sqrt(1 + 4/lambda)), 1 - k = k^2 / lambda
        inverse_ratios = torch._foreach_neg(log_ratios)
        torch._foreach_exp_(inverse_ratios)
        gains = torch._foreach_mul(inverse_ratios, 4.0)
        torch._foreach_add_(gains, 1.0)
        torch._foreach_sqrt_(gains)
        torch._foreach_add_(gains, 1.0)
        torch._foreach_reciprocal_(gains)
        torch._foreach_mul_(gains, 2.0)
        complements = torch._foreach_mul(gains, gains)
        torch._foreach_mul_(complements, inverse_ratios)
        # [kalman-innovation]: v = g_hat - mu_{t-1}
        innovations = torch._foreach_sub(gradients, means)
        # [kalman-ratio-score] and [kalman-ratio-step]
        scores = torch._foreach_mul(innovations, sensitivities)
        torch._foreach_div_(scores, torch._foreach_clamp_min(variances, tiny))
        changes = torch._foreach_add(complements, 1.0)
        torch._foreach_mul_(changes, changes)
        torch._foreach_mul_(changes, step_sizes)
        torch._foreach_div_(changes, complements)
        torch._foreach_mul_(changes, scores)
        torch._foreach_clamp_min_(changes, -max_ratio_change)
        torch._foreach_clamp_max_(changes, max_ratio_change)
        torch._foreach_add_(log_ratios, changes)
        torch._foreach_clamp_min_(log_ratios, -hp.LOG_RATIO_BOUND)
        torch._foreach_clamp_max_(log_ratios, hp.LOG_RATIO_BOUND)
        # [kalman-mean], [kalman-sensitivity]: mu += k v, s = (1 - k) s + v
        torch._foreach_addcmul_(means, gains, innovations)
        torch._foreach_mul_(sensitivities, complements)
        torch._foreach_add_(sensitivities, innovations)
        # [kalman-innovation-variance]: S += t^-kappa (v^2 - S)
        torch._foreach_mul_(innovations, innovations)
        torch._foreach_sub_(innovations, variances)
        torch._foreach_mul_(innovations, weights)
        torch._foreach_add_(variances, innovations)
        # [kalman-variances]: sigma^2 = S (1 - k) k
        posterior = torch._foreach_mul(variances, complements)
        torch._foreach_mul_(posterior, gains)
        # [parameter-step]: theta (1 - eta lambda) - eta mu / max(sqrt(mu^2 + sigma^2) + eps, tiny)
        denominators = torch._foreach_mul(means, means)
        torch._foreach_add_(denominators, posterior)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, eps)
        torch._foreach_clamp_min_(denominators, tiny)
        directions = torch._foreach_div(means, denominators)
        torch._foreach_mul_(directions, lr)
        work = ps if param_dtype == dtype else [p.to(dtype) for p in ps]
        if weight_decay != 0.0:
            torch._foreach_mul_(work, 1.0 - lr * weight_decay)
        torch._foreach_sub_(work, directions)
        if work is not ps:
            torch._foreach_copy_(ps, work)
