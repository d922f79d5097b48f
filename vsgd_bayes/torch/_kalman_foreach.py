r"""The multi-tensor ("foreach") path of ``KalmanVSGD``: pure PyTorch, nothing compiled.

The arithmetic of the single-tensor path (``_kalman_single_tensor.py``, a port of
:mod:`vsgd_bayes.rules.kalman`) rearranged so that every quantity is written once into a scratch
row, and run the way VSGD's foreach path runs (``_foreach.py``, whose batching it shares):
every tensor is cut into flat blocks of at most ``BLOCK_SIZE`` elements, gathered into batches;
on CPU a batch of one block is stepped with plain operations writing into five scratch rows
(``out=``), a batch of several blocks with ``torch._foreach_*``; the batch stays in the
last-level cache between the passes of a step. Algebraically equal to the single-tensor path
(tested against it in ``tests/test_torch_battery.py``): the innovation variance's update
S + w (v^2 - S) is computed as (1 - w) S + w v^2.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._common import as_float, increment_steps
from vsgd_bayes.torch._foreach import _DEFAULT_BLOCK_SIZE, BLOCK_SIZE, _batches, _inplace, _into

__all__ = ["foreach_kalman_vsgd"]

#: Scratch rows of one batch: 1/lambda then 1 - k, k, v, and two work rows.
_ROWS = 5


_HALF_ROOT_TWO = math.sqrt(0.5)
_ROOT_TWO = math.sqrt(2.0)
_CONSTANTS: dict[tuple[float, torch.dtype], Tensor] = {}


def _constant(value: float, dtype: torch.dtype) -> Tensor:
    """``value`` as a 0-dim CPU tensor of ``dtype`` (usable as an operand on any device)."""
    key = (value, dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(value, dtype=dtype)
    return _CONSTANTS[key]


def _four_over_ratio_into(log_ratios, out) -> None:
    """``out = 4 / lambda = exp(ln 4 - phi)``.

    A CPU tensor takes 2^(2 - phi / ln 2): torch's CPU exp2 costs ~0.13 ns per element in
    cache against ~0.6 for exp (measured on the project's CPU, float32), and the step's two
    other transcendental passes are sqrt. Lists (and GPUs) take exp.
    """
    if isinstance(log_ratios, Tensor) and log_ratios.device.type == "cpu":
        torch.add(_constant(2.0, out.dtype), log_ratios, alpha=-1.0 / math.log(2.0), out=out)
        torch.exp2(out, out=out)
    else:
        _affine_into(log_ratios, out, -1.0, _constant(math.log(4.0), _dtype_of(out)))
        _inplace("exp", out)


def _dtype_of(tensors) -> torch.dtype:
    return (tensors if isinstance(tensors, Tensor) else tensors[0]).dtype


def _affine_into(source, out, scale: float, shift: Tensor) -> None:
    """``out = shift + scale * source`` (``shift`` a 0-dim CPU tensor): one pass per tensor
    on CPU (``torch.add`` broadcasts the 0-dim shift), a foreach copy, mul and add otherwise."""
    sources, outs = (source, out) if isinstance(source, list) else ([source], [out])
    if outs[0].device.type == "cpu":
        for a, b in zip(sources, outs):
            torch.add(shift, a, alpha=scale, out=b)
    else:
        torch._foreach_copy_(outs, sources)
        torch._foreach_mul_(outs, scale)
        torch._foreach_add_(outs, shift.item())


def _scaled_product_into(a, b, scale: float, out) -> None:
    """``out = scale * a * b``: one pass for a tensor (addcmul onto a 0-dim zero)."""
    if isinstance(a, list):
        torch._foreach_copy_(out, a)
        torch._foreach_mul_(out, b)
        torch._foreach_mul_(out, scale)
    else:
        torch.addcmul(_constant(0.0, out.dtype), a, b, value=scale, out=out)


def _multiply_add_(a, b, c) -> None:
    """``a <- a * b + c`` in place: one pass for a tensor (addcmul with ``out=a``)."""
    if isinstance(a, list):
        torch._foreach_mul_(a, b)
        torch._foreach_add_(a, c)
    else:
        torch.addcmul(c, a, b, out=a)


def _clamp_(a, low: float, high: float) -> None:
    """Clamp in place to [low, high]: one pass for a tensor, two foreach calls for a list."""
    if isinstance(a, list):
        torch._foreach_clamp_min_(a, low)
        torch._foreach_clamp_max_(a, high)
    else:
        a.clamp_(low, high)


def _step_batch(batch, scratch: Tensor, *, step_size: float, weight: float, lr: float,
                max_ratio_change: float, weight_decay: float, eps: float,
                maximize: bool, step_variance: str) -> None:
    """One Kalman VSGD step on one batch of blocks (one state dtype, one step count)."""
    if len(batch) == 1 and batch[0][2].device.type == "cpu":
        params, grads, means, variances, log_ratios, sensitivities = batch[0]
        shape = means.shape
        rows = [row[: means.numel()].view(shape) for row in scratch]
    else:
        params, grads, means, variances, log_ratios, sensitivities = (
            list(x) for x in zip(*batch)
        )
        rows = [[] for _ in scratch]
        offset = 0
        for mean in means:
            length = mean.numel()
            for views, row in zip(rows, scratch):
                view = row.narrow(0, offset, length)
                views.append(view if mean.dim() == 1 else view.view(mean.shape))
            offset += length
    complement, gain, innovation, work, change = rows
    dtype = (means if isinstance(means, Tensor) else means[0]).dtype
    tiny = torch.finfo(dtype).tiny

    # [kalman-steady-gain]: 4/lambda = exp(ln 4 - phi); the gain row holds
    # h = 1 / (1 + sqrt(1 + 4/lambda)) = k/2 (the factor 2 is folded into the scalars below);
    # 1 - k = k^2 / lambda = h^2 (4/lambda), held in the first row
    _four_over_ratio_into(log_ratios, complement)
    _into("add", complement, gain, 1.0)
    _inplace("sqrt", gain)
    _inplace("add", gain, 1.0)
    _inplace("reciprocal", gain)
    _inplace("mul", complement, gain)
    _inplace("mul", complement, gain)
    # [kalman-innovation]: v = g_hat - mu_{t-1}, g_hat = -grad when maximising
    if maximize:
        _into("add", means, innovation, grads)
        _inplace("neg", innovation)
    else:
        _into("sub", grads, innovation, means)
    # [kalman-ratio-score], [kalman-ratio-step]:
    # phi += clip(c/t (1 + (1 - k))^2 / (1 - k) * v s / max(S, tiny))
    # (v s first: 1/tiny times |v| could overflow where s = 0)
    _into("clamp_min", variances, change, tiny)
    _scaled_product_into(innovation, sensitivities, step_size, work)
    _inplace("div", work, change)
    _into("add", complement, change, 1.0)
    _inplace("mul", change, change)
    _inplace("div", change, complement)
    _inplace("mul", change, work)
    _clamp_(change, -max_ratio_change, max_ratio_change)
    _inplace("add", log_ratios, change)
    _clamp_(log_ratios, -hp.LOG_RATIO_BOUND, hp.LOG_RATIO_BOUND)
    # [kalman-mean], [kalman-sensitivity]: mu += k v = 2 h v, s = (1 - k) s + v
    _inplace("addcmul", means, gain, innovation, value=2.0)
    _multiply_add_(sensitivities, complement, innovation)
    # [kalman-innovation-variance]: S = (1 - w) S + w v^2
    _inplace("mul", variances, 1.0 - weight)
    _inplace("addcmul", variances, innovation, innovation, value=weight)
    # [kalman-variances], [parameter-step]: sigma^2 = S (1 - k) k = 2 S (1 - k) h, and
    # mu / max(sqrt(mu^2 + sigma^2) + eps, tiny) = mu / max(sqrt(2) (D + eps/sqrt(2)), tiny)
    # with D = sqrt(S (1 - k) h + mu^2 / 2)
    if step_variance == "predictive":  # [kalman-step-variance]: S in place of sigma^2
        denominator = _into("mul", variances, work, 0.5)
    else:
        denominator = _into("mul", variances, work, complement)
        _inplace("mul", denominator, gain)
    _inplace("addcmul", denominator, means, means, value=0.5)
    _inplace("sqrt", denominator)
    if eps != 0.0:  # adding exactly 0.0 would change nothing
        _inplace("add", denominator, eps * _HALF_ROOT_TWO)
    _inplace("clamp_min", denominator, tiny)
    # sqrt(2) times the direction, clipped to +-sqrt(2): |direction| <= 1 in exact arithmetic;
    # the clip bounds the step where mu^2 underflows (kalman_rule.normalized_direction).
    # The innovation row is free: v was last read by the update of S above.
    direction = _into("div", means, innovation, denominator)
    _clamp_(direction, -_ROOT_TWO, _ROOT_TWO)
    param_dtype = (params if isinstance(params, Tensor) else params[0]).dtype
    if param_dtype == dtype:
        weights = params
    else:  # 16-bit parameters: step in the state dtype, round once
        weights = change
        _inplace("copy", weights, params)
    if weight_decay != 0.0:
        _inplace("mul", weights, 1.0 - lr * weight_decay)
    _inplace("add", weights, direction, alpha=-lr * _HALF_ROOT_TWO)
    if weights is not params:
        _inplace("copy", params, weights)


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
    step_variance: str = hp.KALMAN_DEFAULTS["step_variance"],
) -> None:
    """One Kalman VSGD step on lists of tensors, in place (the contract of
    :func:`~vsgd_bayes.torch._kalman_single_tensor.single_tensor_kalman_vsgd`)."""
    if not params:
        return
    increment_steps(steps)
    lr = as_float(lr)
    # Group by device, dtypes and step count: within a group every scalar is one float.
    groups: dict[tuple, list[tuple[Tensor, ...]]] = defaultdict(list)
    for slot in zip(params, grads, gradient_means, innovation_variances, log_drift_to_noises,
                    gain_sensitivities, steps):
        if slot[0].numel() == 0:
            continue
        key = (slot[0].device, slot[2].dtype, slot[0].dtype, slot[1].dtype,
               float(slot[6].item()))
        groups[key].append(slot[:6])
    for (device, state_dtype, _, _, step), slots in groups.items():
        block_size = BLOCK_SIZE.get(device.type, _DEFAULT_BLOCK_SIZE)
        batches = _batches(slots, block_size)
        largest = max(sum(slot[2].numel() for slot in b) for b in batches)
        scratch = torch.empty((_ROWS, largest), dtype=state_dtype, device=device)
        for batch in batches:
            _step_batch(
                batch,
                scratch,
                step_size=hp.ratio_step_size(step, ratio_step_scale),
                weight=hp.averaging_weight(step, kappa),
                lr=lr,
                max_ratio_change=max_ratio_change,
                weight_decay=weight_decay,
                eps=eps,
                maximize=maximize,
                step_variance=step_variance,
            )
