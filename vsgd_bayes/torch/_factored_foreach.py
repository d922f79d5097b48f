r"""The multi-tensor ("foreach") path of ``FactoredVSGD``: pure PyTorch, nothing compiled.

The posterior step reduces each tensor along its own rows and columns, so it runs one tensor
at a time (:func:`~vsgd_bayes.torch._factored_single_tensor.factored_posterior_step_`, the
single-tensor path's own arithmetic, which keeps the temporaries to one tensor's); the
elementwise tail, the step counters and the parameter step, runs as ``torch._foreach_*``
kernels on lists grouped by (device, state dtype, parameter dtype). A first version that ran
the local update in foreach kernels on every tensor at once held 11x the parameters in
temporaries and was slower than the single-tensor path on ResNet-18's shapes
(``benchmarks/README.md``). Tested against the single-tensor path.
"""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor

from vsgd_bayes.torch._common import as_float, foreach_parameter_step_, increment_steps
from vsgd_bayes.torch._factored_single_tensor import (
    factored_posterior_step_,
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
    groups: dict[tuple, list[list[Tensor]]] = defaultdict(lambda: [[] for _ in range(8)])
    for tensors in zip(params, grads, gradient_means, drift_row_rates, drift_column_rates,
                       noise_row_rates, noise_column_rates, steps):
        key = (tensors[0].device, tensors[2].dtype, tensors[0].dtype)
        for column, tensor in zip(groups[key], tensors):
            column.append(tensor)
    for (_, dtype, _), lists in groups.items():
        ps, gs, means, drift_rows, drift_columns, noise_rows, noise_columns, sts = lists
        increment_steps(sts)
        # [factored-local], [factored-targets], [svi-blend], [factored-gauge], per tensor
        variances = [
            factored_posterior_step_(
                g, mean, dr, dc, nr, nc, s, variance_ratio=variance_ratio,
                prior_strength=prior_strength, kappa1=kappa1, kappa2=kappa2, init=init,
                factorization=factorization, maximize=maximize)
            for g, mean, dr, dc, nr, nc, s in zip(gs, means, drift_rows, drift_columns,
                                                  noise_rows, noise_columns, sts)
        ]
        # [parameter-step]: theta (1 - eta lambda) - eta mu / (sqrt(mu^2 + sigma^2) + eps)
        foreach_parameter_step_(ps, means, variances, lr, weight_decay, eps, dtype)
