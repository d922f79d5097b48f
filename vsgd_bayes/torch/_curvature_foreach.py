r"""The multi-tensor ("foreach") path of ``CurvatureKalmanVSGD``: pure PyTorch, nothing compiled.

The functions of the single-tensor path (``_curvature_single_tensor.py``, a port of
:mod:`vsgd_bayes.rules.curvature`) run unchanged on
:class:`~vsgd_bayes.torch._tensor_list.TensorList` operands: every elementwise operation of the
step is one ``torch._foreach_*`` call over all the parameters that share a device, dtypes and
step count (one kernel launch per operation on CUDA instead of one per tensor). The rounding
of each operation is the single tensor's, so the two paths agree to the last bit in float64
(tested in ``tests/test_torch_battery.py`` and ``tests/test_torch_curvature.py``). The step
allocates its intermediate lists (about 60 tensors the size of the parameters, freed at the
end of each group); the fused CPU kernel (``_curvature_fused.py``) needs none
(``benchmarks/step_time.py`` gives the cost of each).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._common import as_float, increment_steps
from vsgd_bayes.torch._curvature_single_tensor import (
    new_point,
    posterior_update,
    record_point_,
    state_of,
    write_,
)
from vsgd_bayes.torch._tensor_list import TensorList

__all__ = ["foreach_curvature_kalman_vsgd"]

_DEFAULTS = hp.CURVATURE_DEFAULTS


def foreach_curvature_kalman_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    curvature_means: list[Tensor],
    gradient_variances: list[Tensor],
    cross_covariances: list[Tensor],
    curvature_variances: list[Tensor],
    noise_variances: list[Tensor],
    log_drift_to_noises: list[Tensor],
    log_curvature_drift_to_noises: list[Tensor],
    ratio_sensitivities: list[Tensor],
    ratio_informations: list[Tensor],
    previous_points: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    ratio_step_scale: float,
    max_ratio_change: float,
    kappa: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    step_variance: str = _DEFAULTS["step_variance"],
    curvature_step: str = _DEFAULTS["curvature_step"],
) -> None:
    """One Curvature Kalman VSGD step on lists of tensors, in place (the contract of
    :func:`~vsgd_bayes.torch._curvature_single_tensor.single_tensor_curvature_kalman_vsgd`)."""
    if not params:
        return
    increment_steps(steps)
    lr = as_float(lr)
    # Group by device, dtypes and step count: within a group every scalar is one float.
    groups: dict[tuple, list[tuple[Tensor, ...]]] = defaultdict(list)
    slots = zip(params, grads, gradient_means, curvature_means, gradient_variances,
                cross_covariances, curvature_variances, noise_variances, log_drift_to_noises,
                log_curvature_drift_to_noises, ratio_sensitivities, ratio_informations,
                previous_points, steps)
    for slot in slots:
        if slot[0].numel() == 0:
            continue
        key = (slot[0].device, slot[2].dtype, slot[0].dtype, slot[1].dtype,
               float(slot[-1].item()))
        groups[key].append(slot[:-1])
    for (_, dtype, _, _, step), members in groups.items():
        columns = [list(column) for column in zip(*members)]
        group_params, group_grads = columns[0], columns[1]
        fields = [TensorList(column) for column in columns[2:10]]
        sensitivities, information = columns[10], columns[11]
        before, point = record_point_(TensorList(columns[12]), TensorList(group_params))
        state = state_of(
            *fields,
            lambda j, i: TensorList(s[j, i] for s in sensitivities),
            lambda j: TensorList(s[j] for s in information),
            before,
        )
        gradient = TensorList(g.to(dtype) for g in group_grads)
        if maximize:
            gradient = -gradient
        variance, new_state = posterior_update(
            gradient, point, state,
            step_size=hp.ratio_step_size(step, ratio_step_scale),
            weight=hp.averaging_weight(step, kappa),
            max_ratio_change=max_ratio_change, step_variance=step_variance,
        )
        write_(state, new_state)
        moved = new_point(point, new_state, variance, lr=lr, weight_decay=weight_decay,
                          eps=eps, curvature_step=curvature_step)
        # in the state dtype; 16-bit parameters are rounded once, by the copy
        torch._foreach_copy_(group_params, moved.tensors)
