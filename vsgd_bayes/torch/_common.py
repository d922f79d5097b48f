"""Helpers shared by every torch optimizer of the package and by their execution paths.

Nothing here knows a particular update rule: state dtypes, filled state tensors, flag
validation, the views every path works on (DTensor shards as local tensors, complex tensors as
real ones), the step counters and the foreach default. Optimizer modules and path modules
import these from here, never from each other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "state_dtype",
    "filled_like",
    "check_flag",
    "local_tensors",
    "as_real",
    "as_float",
    "increment_steps",
    "default_foreach",
    "step_in_state_dtype_",
    "foreach_parameter_step_",
]


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """State and arithmetic dtype: the parameter's, but at least float32 (``rule.state_dtype``).

    The prior rates gamma ~ 1e-8 must not be rounded to 16-bit floats (float16 flushes them to
    zero, making the first step 0/0). Complex parameters keep a complex state of at least
    complex64 (its real and imaginary parts are independent coordinates).
    """
    return torch.promote_types(param_dtype, torch.float32)


def filled_like(param: Tensor, value: float, dtype: torch.dtype) -> Tensor:
    """A state tensor like ``param`` filled with ``value``; for a complex parameter both the
    real and the imaginary coordinates get ``value`` (they are independent coordinates)."""
    tensor = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
    if value != 0.0:
        (torch.view_as_real(tensor) if tensor.is_complex() else tensor).fill_(value)
    return tensor


def check_flag(name: str, value: Any, allow_none: bool) -> None:
    """``TypeError`` naming ``name`` and ``value`` unless it is a bool (or None if allowed)."""
    if not (isinstance(value, bool) or (allow_none and value is None)):
        kinds = "a bool or None" if allow_none else "a bool"
        raise TypeError(f"Invalid {name}: {value!r} (must be {kinds})")


def local_tensors(tensors: list[Tensor]) -> list[Tensor]:
    """DTensors (FSDP2 shards, replicated tensors) as their local tensors, which alias them.

    The update is elementwise and the state is sharded like its parameter, so each rank steps
    its own shard: no communication is needed, and every path sees plain tensors (a path that
    flattens its tensors could not flatten an unevenly sharded DTensor).
    """
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


def as_real(tensors: list[Tensor]) -> list[Tensor]:
    """Complex tensors as real views (..., 2): independent real and imaginary coordinates."""
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in tensors]


def as_float(value: float | Tensor) -> float:
    """A learning rate as a Python float (a 0-dim tensor, e.g. driven by a scheduler, is read
    once per step; on an accelerator that synchronises, which the multi-tensor paths accept:
    they are not capturable)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


_ONE = torch.tensor(1.0)


def increment_steps(steps: list[Tensor]) -> None:
    """``t <- t + 1`` for every step counter (0-dim float32 CPU tensors), in one foreach call.

    The counters live on the CPU, where a foreach op is a loop over tensors: a 0-dim tensor
    operand with ``alpha`` is wrapped once, a Python number once per tensor (cheaper by a
    factor of about 3.5; ``benchmarks/README.md``).
    """
    torch._foreach_add_(steps, _ONE, alpha=1.0)


def _foreach_supported_types() -> tuple[type, ...]:
    # Plain tensors, Parameters and DTensors (FSDP2 shards) are what the torch._foreach_* ops
    # accept (subclasses with their own dispatch are not).
    types: list[type] = [torch.Tensor, torch.nn.Parameter]
    try:
        from torch.distributed.tensor import DTensor

        types.append(DTensor)
    except ImportError:  # torch built without distributed support
        pass
    return tuple(types)


def default_foreach(params: list[Tensor]) -> bool:
    """Whether ``foreach=None`` runs a foreach path for these parameters.

    It does when every parameter is a plain tensor or a DTensor (any device, CPU included:
    the foreach kernels have a generic implementation there) and we are not
    TorchScript-scripting.
    """
    if torch.jit.is_scripting():
        return False
    supported = _foreach_supported_types()
    return all(type(p) in supported for p in params)


def step_in_state_dtype_(param: Tensor, dtype: torch.dtype, step_: Any) -> None:
    """Apply the in-place ``step_(tensor)`` to ``param`` in the state dtype ``dtype``.

    In place when the dtypes agree; for 16-bit parameters on a copy in the state dtype, rounded
    back once, so the step's arithmetic never happens in 16 bits.
    """
    if param.dtype == dtype:
        step_(param)
    else:
        param_in_state_dtype = param.to(dtype)
        step_(param_in_state_dtype)
        param.copy_(param_in_state_dtype)


def foreach_parameter_step_(
    params: list[Tensor],
    gradient_means: list[Tensor],
    gradient_variances: list[Tensor],
    lr: float,
    weight_decay: float,
    eps: float,
    dtype: torch.dtype,
) -> None:
    """VSGD's parameter step [parameter-step] on lists, in place, for every method that takes
    it: theta <- theta (1 - eta lambda) - eta mu / (sqrt(mu^2 + sigma^2) + eps).

    The parameters share one dtype; when it is not the state dtype ``dtype`` (16-bit
    parameters) the step is taken on copies in ``dtype`` and rounded back once.
    """
    denominators = torch._foreach_mul(gradient_means, gradient_means)
    torch._foreach_add_(denominators, gradient_variances)
    torch._foreach_sqrt_(denominators)
    torch._foreach_add_(denominators, eps)
    directions = torch._foreach_div(gradient_means, denominators)
    torch._foreach_mul_(directions, lr)
    work = params if all(p.dtype == dtype for p in params) else [p.to(dtype) for p in params]
    if weight_decay != 0.0:
        torch._foreach_mul_(work, 1.0 - lr * weight_decay)
    torch._foreach_sub_(work, directions)
    if work is not params:
        torch._foreach_copy_(params, work)
