r"""The multi-tensor ("foreach") path of ``FactoredVSGD``: pure PyTorch, nothing compiled.

The single-tensor arithmetic (``_factored_single_tensor.py``) on lists grouped by (device,
state dtype, parameter dtype): the elementwise part of the step (local update, residuals,
parameter step) runs as ``torch._foreach_*`` kernels on the matrix views, while the row and
column sums of the factor updates, which reduce each tensor along its own axes, stay one
call per tensor (:func:`~vsgd_bayes.torch._factored_single_tensor.update_factors_`). Tested
against the single-tensor path.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.hyperparameters import factored as factored_hp
from vsgd_bayes.torch._common import as_float, increment_steps
from vsgd_bayes.torch._factored_single_tensor import (
    expected_precision,
    factored_step_scalars,
    update_factors_,
)

__all__ = ["foreach_factored_vsgd"]


def foreach_factored_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    drift_row_rates: list[Tensor],
    drift_column_rates: list[Tensor],
    noise_row_rates: list[Tensor],
    noise_column_rates: list[Tensor],
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
    factorization: str,
    maximize: bool,
) -> None:
    """One Factored VSGD step on lists of tensors, in place (contract of
    :func:`~vsgd_bayes.torch._factored_single_tensor.single_tensor_factored_vsgd`)."""
    lr = as_float(lr)
    drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
    prior_shape = hp.prior_shape(prior_strength, init)
    groups: dict[tuple, list[list[Tensor]]] = defaultdict(lambda: [[] for _ in range(8)])
    for tensors in zip(params, grads, gradient_means, drift_row_rates, drift_column_rates,
                       noise_row_rates, noise_column_rates, steps):
        key = (tensors[0].device, tensors[2].dtype, tensors[0].dtype)
        for column, tensor in zip(groups[key], tensors):
            column.append(tensor)
    for (_, dtype, param_dtype), lists in groups.items():
        ps, gs, means, drift_rows, drift_columns, noise_rows, noise_columns, sts = lists
        increment_steps(sts)
        matrices = [factored_hp.matrix_shape(tuple(p.shape), factorization) for p in ps]
        scalars = [
            factored_step_scalars(s, prior_strength, kappa1, kappa2, init, m, n, dtype)
            for s, (m, n) in zip(sts, matrices)
        ]
        gradients = [g.to(dtype).reshape(shape) for g, shape in zip(gs, matrices)]
        if maximize:
            gradients = torch._foreach_neg(gradients)
        means_prev = [mean.reshape(shape).clone() for mean, shape in zip(means, matrices)]
        # [factored-local]: E[r]E[s] and E[p]E[q] per tensor (outer products), then
        # sigma^2 = 1 / (sum) and mu = sigma^2 (E[w_g] u + E[w_ghat] g_hat), in foreach kernels.
        drift_precisions = [
            expected_precision(sc.row_shape_before, r, sc.column_shape_before, c).expand(shape)
            for sc, r, c, shape in zip(scalars, drift_rows, drift_columns, matrices)
        ]
        noise_precisions = [
            expected_precision(sc.row_shape_before, r, sc.column_shape_before, c).expand(shape)
            for sc, r, c, shape in zip(scalars, noise_rows, noise_columns, matrices)
        ]
        variances = torch._foreach_add(drift_precisions, noise_precisions)
        torch._foreach_reciprocal_(variances)
        weighted_prev = torch._foreach_mul(drift_precisions, means_prev)
        weighted_gradient = torch._foreach_mul(noise_precisions, gradients)
        torch._foreach_add_(weighted_prev, weighted_gradient)
        new_means = torch._foreach_mul(variances, weighted_prev)
        # D = sigma^2 + (mu - u)^2, N = sigma^2 + (mu - g_hat)^2
        drift_residuals = torch._foreach_sub(new_means, means_prev)
        torch._foreach_mul_(drift_residuals, drift_residuals)
        torch._foreach_add_(drift_residuals, variances)
        noise_residuals = torch._foreach_sub(new_means, gradients)
        torch._foreach_mul_(noise_residuals, noise_residuals)
        torch._foreach_add_(noise_residuals, variances)
        # [factored-targets], [svi-blend], [factored-gauge]: reductions along each tensor's
        # own axes, one call per tensor.
        for sc, dr, dc, nr, nc, drift_residual, noise_residual in zip(
            scalars, drift_rows, drift_columns, noise_rows, noise_columns, drift_residuals,
            noise_residuals,
        ):
            update_factors_(dr, dc, drift_residual, sc, drift_prior_rate, prior_shape,
                            sc.drift_step_size)
            update_factors_(nr, nc, noise_residual, sc, noise_prior_rate, prior_shape,
                            sc.noise_step_size)
        torch._foreach_copy_(means, [m.reshape(t.shape) for m, t in zip(new_means, means)])
        variances = [v.reshape(t.shape) for v, t in zip(variances, means)]
        # [parameter-step]: theta (1 - eta lambda) - eta mu / (sqrt(mu^2 + sigma^2) + eps)
        denominators = torch._foreach_mul(means, means)
        torch._foreach_add_(denominators, variances)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, eps)
        directions = torch._foreach_div(means, denominators)
        torch._foreach_mul_(directions, lr)
        work = ps if param_dtype == dtype else [p.to(dtype) for p in ps]
        if weight_decay != 0.0:
            torch._foreach_mul_(work, 1.0 - lr * weight_decay)
        torch._foreach_sub_(work, directions)
        if work is not ps:
            torch._foreach_copy_(ps, work)
