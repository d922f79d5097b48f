"""Fused VSGD step on CUDA as one Triton kernel launch for a list of tensors.

Imported by :mod:`vsgd_bayes.torch._fused` at first use (importing it imports Triton). The
kernel evaluates the single-pass form of ``derivations/09_fast_paths.md`` (its labels are
cited in brackets at each group of operations). Two small tables travel to the kernel:

* ``table`` (int64, on the device): the addresses of every parameter and its three state
  tensors, their sizes, and the block -> tensor map. It changes only when parameters or
  state move, so it is built and uploaded once and reused (cached by those addresses).
* ``step_table`` (uploaded each step): the gradients' addresses (gradients are often new
  tensors every step) followed by the step's scalars as float64: the fields of
  :class:`vsgd_bayes.torch._foreach.StepConstants` in field order (once for the whole list
  when every tensor has the same step count, the usual case; else once per tensor), then
  lr, 1 - lr*lambda, eps and the gradient sign. The scalars are float64 in memory because
  Triton passes Python floats as float32, which would round the float64 update.

Each program steps BLOCK elements of one tensor with the single-pass form of the update
(see ``vsgd_cpu.cpp``), in the state dtype. Host work per step: the addresses, one
dictionary lookup, one upload of n + 11 (or 8n + 4) words and one launch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

#: Elements per program, and warps per program, tuned on an H100 with
#: ``benchmarks/gpu_tune.py`` (the measurements: ``benchmarks/README.md``, "Constants of the
#: fast paths").
BLOCK = 1024
NUM_WARPS = 4

_TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


@triton.jit
def _vsgd_kernel(
    table,  # int64: [4n addresses (theta, mu, b_g, b_ghat) | n sizes | block -> tensor |
    #         block -> first element]
    step_table,  # int64: [n gradient addresses | scalars as float64 bits]
    step_scalars,  # float64 view of step_table: [n (skipped) | 7 constants (per tensor if
    #                PER_TENSOR) | lr, decay, eps, sign]
    n_tensors,
    n_blocks,
    PER_TENSOR: tl.constexpr,  # tensors with different step counts: constants per tensor
    PARAM: tl.constexpr,
    STATE: tl.constexpr,
    BLOCK: tl.constexpr,
    FLOAT64: tl.constexpr,  # state in float64: tl.sqrt is exact there, sqrt_rn is fp32-only
    ALIGNED: tl.constexpr,  # every address a multiple of 16 bytes: allows vector loads
):
    block = tl.program_id(0)
    blocks = table + 5 * n_tensors
    tensor = tl.load(blocks + block)
    start = tl.load(blocks + n_blocks + block)
    numel = tl.load(table + 4 * n_tensors + tensor)
    theta_ptr = tl.load(table + tensor).to(tl.pointer_type(PARAM))
    mean_ptr = tl.load(table + n_tensors + tensor).to(tl.pointer_type(STATE))
    drift_ptr = tl.load(table + 2 * n_tensors + tensor).to(tl.pointer_type(STATE))
    noise_ptr = tl.load(table + 3 * n_tensors + tensor).to(tl.pointer_type(STATE))
    grad_ptr = tl.load(step_table + tensor).to(tl.pointer_type(PARAM))
    if ALIGNED:
        # Addresses read from a table carry no alignment facts; without these hints Triton
        # emits one scalar load per element.
        theta_ptr = tl.multiple_of(theta_ptr, 16)
        grad_ptr = tl.multiple_of(grad_ptr, 16)
        mean_ptr = tl.multiple_of(mean_ptr, 16)
        drift_ptr = tl.multiple_of(drift_ptr, 16)
        noise_ptr = tl.multiple_of(noise_ptr, 16)

    # The fields of _foreach.StepConstants, loaded in field order from the float64 table
    # (tests/test_derivations.py checks the names and offsets below against the NamedTuple),
    # then the per-call scalars lr, 1 - lr lambda, eps and the gradient sign.
    scalars = step_scalars + n_tensors
    if PER_TENSOR:
        c = scalars + 7 * tensor
        g = scalars + 7 * n_tensors
    else:
        c = scalars
        g = scalars + 7
    inverse_shape = tl.load(c + 0).to(STATE)
    drift_keep = tl.load(c + 1).to(STATE)
    drift_prior = tl.load(c + 2).to(STATE)
    drift_half_step = tl.load(c + 3).to(STATE)
    noise_keep = tl.load(c + 4).to(STATE)
    noise_prior = tl.load(c + 5).to(STATE)
    noise_half_step = tl.load(c + 6).to(STATE)
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

    # [fast-gain] the gain and the innovation
    gain = b_g / (b_g + b_ghat)
    innovation = g_hat - mu
    # [fast-variance] sigma_t^2
    variance = gain * b_ghat * inverse_shape
    # [fast-residuals] mu_t - mu_{t-1} = k e and g_hat - mu_t = (1 - k) e
    step_of_mean = gain * innovation
    residual = innovation - step_of_mean
    # [fast-mean] mu_t
    mu_new = mu + step_of_mean
    # [svi-blend] of the targets [fast-targets]
    b_g_new = drift_keep * b_g + drift_prior + drift_half_step * (
        variance + step_of_mean * step_of_mean
    )
    b_ghat_new = noise_keep * b_ghat + noise_prior + noise_half_step * (
        variance + residual * residual
    )
    # [parameter-step] theta (1 - eta lambda) - eta mu_t / (sqrt(mu_t^2 + sigma^2) + eps)
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
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    means: list[torch.Tensor],
    drift_rates: list[torch.Tensor],
    noise_rates: list[torch.Tensor],
    constants: Sequence[tuple[float, ...]],
    lr: float,
    decay: float,
    eps: float,
    maximize: bool,
) -> None:
    """Steps contiguous CUDA tensors of one parameter dtype and one state dtype in place.

    ``constants`` holds one tuple per tensor; tensors of the same step count share one
    tuple object (the caller's cache), which is how a uniform step is recognised cheaply.
    """
    if any(p.numel() == 0 for p in params):
        keep = [i for i, p in enumerate(params) if p.numel() > 0]
        if not keep:
            return
        params, grads, means, drift_rates, noise_rates, constants = (
            [group[i] for i in keep]
            for group in (params, grads, means, drift_rates, noise_rates, constants)
        )
    device = params[0].device
    addresses = tuple(
        t.data_ptr() for group in (params, means, drift_rates, noise_rates) for t in group
    )
    numels = tuple(p.numel() for p in params)
    table, n_blocks, aligned = _table(addresses, numels, device)

    first = constants[0]
    per_tensor = any(c is not first and c != first for c in constants)
    floats = [value for c in constants for value in c] if per_tensor else list(first)
    floats += [lr, decay, eps, -1.0 if maximize else 1.0]
    grad_addresses = [g.data_ptr() for g in grads]
    aligned = aligned and all(address % 16 == 0 for address in grad_addresses)
    step_table = torch.cat(
        [
            torch.tensor(grad_addresses, dtype=torch.int64),
            torch.tensor(floats, dtype=torch.float64).view(torch.int64),
        ]
    ).to(device, non_blocking=True)

    state_dtype = means[0].dtype
    options = dict(
        PER_TENSOR=per_tensor,
        PARAM=_TRITON_DTYPES[params[0].dtype],
        STATE=_TRITON_DTYPES[state_dtype],
        BLOCK=BLOCK,
        FLOAT64=state_dtype == torch.float64,
        num_warps=NUM_WARPS,
    )
    arguments = (table, step_table, step_table.view(torch.float64), len(params), n_blocks)
    aligned = aligned and _hints_work
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


#: Device tables by (addresses, sizes, device, BLOCK), least recently used first; one per
#: parameter group (and dtype pair) is in use at a time, so a small bound is enough.
_tables: OrderedDict[tuple, tuple[torch.Tensor, int, bool]] = OrderedDict()
_MAX_TABLES = 32


def _table(
    addresses: tuple[int, ...], numels: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, int, bool]:
    """(table on ``device``, number of blocks, every address 16-byte aligned), cached.

    The table is a function of the key alone, so a hit is always the table that would be
    built (tensors freed and reallocated at the same addresses with the same sizes give the
    same table).
    """
    key = (addresses, numels, device, BLOCK)
    entry = _tables.get(key)
    if entry is not None:
        _tables.move_to_end(key)
        return entry
    sizes = torch.tensor(numels, dtype=torch.int64)
    counts = (sizes + BLOCK - 1) // BLOCK
    tensor_of_block = torch.repeat_interleave(torch.arange(len(numels)), counts)
    first_block = torch.cumsum(counts, 0) - counts
    index_in_tensor = torch.arange(int(counts.sum())) - first_block[tensor_of_block]
    table = torch.cat(
        [
            torch.tensor(addresses, dtype=torch.int64),
            sizes,
            tensor_of_block,
            index_in_tensor * BLOCK,
        ]
    )
    aligned = all(address % 16 == 0 for address in addresses)
    entry = (table.to(device), int(counts.sum()), aligned)
    _tables[key] = entry
    if len(_tables) > _MAX_TABLES:
        _tables.popitem(last=False)
    return entry
