"""Fused VSGD step on CUDA as one Triton kernel launch for a list of tensors.

Loaded by :mod:`vsgd_bayes.torch._fused` only when Triton is importable. One int64 table
travels to the device per step: the five addresses of every tensor, their sizes and (as
float64 bits) the per-tensor scalars of
:func:`vsgd_bayes.torch._foreach.step_constants` followed by lr, 1 - lr*lambda, eps and the
gradient sign; the block -> tensor map is cached on the device per list of sizes. Each
program steps BLOCK elements of one tensor with the single-pass form of
the update (see ``vsgd_cpu.cpp``), in the state dtype.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import triton
import triton.language as tl

BLOCK = 2048
_CONSTANTS_PER_TENSOR = 7
_GLOBALS = 4  # lr, decay, eps, gradient sign

_TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


@triton.jit
def _vsgd_kernel(
    table,  # int64: [5 * n addresses | n sizes | scalars as float64 bits]
    scalars,  # float64 view of the same buffer
    blocks,  # int64: [block -> tensor index | block -> first element]
    n_tensors,
    n_blocks,
    scalars_offset,
    PARAM: tl.constexpr,
    STATE: tl.constexpr,
    BLOCK: tl.constexpr,
    FLOAT64: tl.constexpr,  # state in float64: tl.sqrt is exact there, sqrt_rn is fp32-only
    ALIGNED: tl.constexpr,  # every address a multiple of 16 bytes: allows vector loads
):
    block = tl.program_id(0)
    tensor = tl.load(blocks + block)
    start = tl.load(blocks + n_blocks + block)
    numel = tl.load(table + 5 * n_tensors + tensor)
    theta_ptr = tl.load(table + tensor).to(tl.pointer_type(PARAM))
    grad_ptr = tl.load(table + n_tensors + tensor).to(tl.pointer_type(PARAM))
    mean_ptr = tl.load(table + 2 * n_tensors + tensor).to(tl.pointer_type(STATE))
    drift_ptr = tl.load(table + 3 * n_tensors + tensor).to(tl.pointer_type(STATE))
    noise_ptr = tl.load(table + 4 * n_tensors + tensor).to(tl.pointer_type(STATE))
    if ALIGNED:
        # Addresses read from a table carry no alignment facts; without these hints Triton
        # emits one scalar load per element.
        theta_ptr = tl.multiple_of(theta_ptr, 16)
        grad_ptr = tl.multiple_of(grad_ptr, 16)
        mean_ptr = tl.multiple_of(mean_ptr, 16)
        drift_ptr = tl.multiple_of(drift_ptr, 16)
        noise_ptr = tl.multiple_of(noise_ptr, 16)

    c = scalars + scalars_offset + 7 * tensor
    inverse_shape = tl.load(c + 0).to(STATE)
    drift_keep = tl.load(c + 1).to(STATE)
    drift_prior = tl.load(c + 2).to(STATE)
    drift_half_step = tl.load(c + 3).to(STATE)
    noise_keep = tl.load(c + 4).to(STATE)
    noise_prior = tl.load(c + 5).to(STATE)
    noise_half_step = tl.load(c + 6).to(STATE)
    g = scalars + scalars_offset + 7 * n_tensors
    lr = tl.load(g + 0).to(STATE)
    decay = tl.load(g + 1).to(STATE)
    eps = tl.load(g + 2).to(STATE)
    sign = tl.load(g + 3).to(STATE)

    offsets = tl.max_contiguous(tl.multiple_of(start + tl.arange(0, BLOCK), BLOCK), BLOCK)
    mask = offsets < numel
    g_hat = sign * tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(STATE)
    mu = tl.load(mean_ptr + offsets, mask=mask, other=0.0)
    b_g = tl.load(drift_ptr + offsets, mask=mask, other=1.0)
    b_ghat = tl.load(noise_ptr + offsets, mask=mask, other=1.0)
    theta = tl.load(theta_ptr + offsets, mask=mask, other=0.0).to(STATE)

    gain = b_g / (b_g + b_ghat)
    innovation = g_hat - mu
    variance = gain * b_ghat * inverse_shape
    step_of_mean = gain * innovation
    residual = innovation - step_of_mean
    mu_new = mu + step_of_mean
    b_g_new = drift_keep * b_g + drift_prior + drift_half_step * (
        variance + step_of_mean * step_of_mean
    )
    b_ghat_new = noise_keep * b_ghat + noise_prior + noise_half_step * (
        variance + residual * residual
    )
    if FLOAT64:
        denominator = tl.sqrt(mu_new * mu_new + variance) + eps
    else:
        denominator = tl.sqrt_rn(mu_new * mu_new + variance) + eps
    theta_new = theta * decay - lr * (mu_new / denominator)

    tl.store(mean_ptr + offsets, mu_new, mask=mask)
    tl.store(drift_ptr + offsets, b_g_new, mask=mask)
    tl.store(noise_ptr + offsets, b_ghat_new, mask=mask)
    tl.store(theta_ptr + offsets, theta_new.to(PARAM), mask=mask)


def vsgd_step(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    means: List[torch.Tensor],
    drift_rates: List[torch.Tensor],
    noise_rates: List[torch.Tensor],
    constants: Sequence[Tuple[float, ...]],
    lr: float,
    decay: float,
    eps: float,
    maximize: bool,
) -> None:
    """Steps contiguous CUDA tensors of one parameter dtype and one state dtype in place."""
    keep = [i for i, p in enumerate(params) if p.numel() > 0]
    if not keep:
        return
    n = len(keep)
    numels = tuple(params[i].numel() for i in keep)
    device = params[keep[0]].device
    blocks = _block_map(numels, device)
    addresses = [
        group[i].data_ptr()
        for group in (params, grads, means, drift_rates, noise_rates)
        for i in keep
    ]
    integers = torch.tensor(addresses + list(numels), dtype=torch.int64)
    floats = [value for i in keep for value in constants[i]]
    floats += [lr, decay, eps, -1.0 if maximize else 1.0]
    floats_bits = torch.tensor(floats, dtype=torch.float64).view(torch.int64)
    table = torch.cat([integers, floats_bits]).to(device, non_blocking=True)
    n_blocks = blocks.numel() // 2
    state_dtype = means[keep[0]].dtype
    arguments = (table, table.view(torch.float64), blocks, n, n_blocks, integers.numel())
    options = dict(
        PARAM=_TRITON_DTYPES[params[keep[0]].dtype],
        STATE=_TRITON_DTYPES[state_dtype],
        BLOCK=BLOCK,
        FLOAT64=state_dtype == torch.float64,
    )
    aligned = _hints_work and all(address % 16 == 0 for address in addresses)
    try:
        _vsgd_kernel[(n_blocks,)](*arguments, ALIGNED=aligned, **options)
    except Exception:  # a Triton that rejects the hints (compilation error)
        if not aligned:
            raise
        _disable_hints()  # this Triton rejects the hints: run without them from now on
        _vsgd_kernel[(n_blocks,)](*arguments, ALIGNED=False, **options)


_hints_work = True


def _disable_hints() -> None:
    global _hints_work
    _hints_work = False


_block_maps: Dict[Tuple[Tuple[int, ...], torch.device], torch.Tensor] = {}


def _block_map(numels: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """[block -> tensor index | block -> first element] on ``device``, cached per sizes."""
    key = (numels, device)
    if key not in _block_maps:
        counts = torch.tensor([triton.cdiv(n, BLOCK) for n in numels], dtype=torch.int64)
        tensor_of_block = torch.repeat_interleave(torch.arange(len(numels)), counts)
        first_block = torch.cumsum(counts, 0) - counts
        index_in_tensor = torch.arange(int(counts.sum())) - first_block[tensor_of_block]
        if len(_block_maps) > 64:  # a handful of parameter groups; bound it anyway
            _block_maps.clear()
        _block_maps[key] = torch.cat([tensor_of_block, index_in_tensor * BLOCK]).to(device)
    return _block_maps[key]
