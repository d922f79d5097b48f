"""Functional entry point of the torch VSGD optimizer: picks an execution path and runs it.

Three paths implement one contract (the signature of
:func:`vsgd_bayes.torch._single_tensor.single_tensor_vsgd`) and are kept numerically equal by
``tests/test_torch_parity.py``:

* ``single_tensor``: a line-by-line port of :mod:`vsgd_bayes.rule`, one tensor at a time;
* ``foreach``: the same arithmetic on lists of tensors with ``torch._foreach_*`` kernels
  (``_foreach.py``);
* ``fused``: one compiled kernel per (device, dtype) (``_fused.py``).

The fast paths are imported lazily, only when they are used: importing this package never
compiles anything.
"""

from __future__ import annotations

import importlib
from typing import List, Optional, Union

import torch
from torch import Tensor

from vsgd_bayes.torch._single_tensor import single_tensor_vsgd

__all__ = ["vsgd", "default_foreach", "default_fused", "FUSED_BY_DEFAULT"]

#: The hook for the default path. ``fused=None`` selects the fused path only while this is True
#: (and ``fused_is_available`` holds for every device involved). It stays False until the fused
#: kernel is known to be safe to pick without being asked for (it needs a C++ compiler at first
#: use, which a default must not).
FUSED_BY_DEFAULT = False


def _foreach_module():
    return importlib.import_module("vsgd_bayes.torch._foreach")


def _fused_module():
    return importlib.import_module("vsgd_bayes.torch._fused")


def _has_foreach_path() -> bool:
    try:
        _foreach_module()
    except ImportError:  # the fast-path module is not there (yet): use the single-tensor path
        return False
    return True


def _foreach_supported_types():
    # Plain tensors, Parameters and DTensors (FSDP2 shards) are what the torch._foreach_* ops
    # accept (subclasses with their own dispatch are not).
    types = [torch.Tensor, torch.nn.Parameter]
    try:
        from torch.distributed.tensor import DTensor

        types.append(DTensor)
    except ImportError:  # torch built without distributed support
        pass
    return tuple(types)


def default_foreach(params: List[Tensor]) -> bool:
    """Whether ``foreach=None`` runs the foreach path for these parameters.

    It does when every parameter is a plain tensor or a DTensor (any device, CPU included:
    the foreach kernels have a generic implementation there), we are not TorchScript-scripting,
    and the foreach module is present.
    """
    if torch.jit.is_scripting():
        return False
    supported = _foreach_supported_types()
    return all(type(p) in supported for p in params) and _has_foreach_path()


def default_fused(params: List[Tensor]) -> bool:
    """Whether ``fused=None`` runs the fused path: only when :data:`FUSED_BY_DEFAULT` is set."""
    if not FUSED_BY_DEFAULT or not params:
        return False
    fused_is_available = _fused_module().fused_is_available
    return all(fused_is_available(p.device) for p in params)


def _local(tensors: List[Tensor]) -> List[Tensor]:
    """DTensors (FSDP2 shards, replicated tensors) as their local tensors, which alias them.

    VSGD is elementwise and its state is sharded like its parameter, so each rank steps its
    own shard: no communication is needed, and every path sees plain tensors (a path that
    flattens its tensors could not flatten an unevenly sharded DTensor).
    """
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


def _as_real(tensors: List[Tensor]) -> List[Tensor]:
    """Complex tensors as real views (..., 2): independent real and imaginary coordinates."""
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in tensors]


def vsgd(
    params: List[Tensor],
    grads: List[Tensor],
    gradient_means: List[Tensor],
    drift_rates: List[Tensor],
    noise_rates: List[Tensor],
    steps: List[Tensor],
    *,
    foreach: Optional[bool] = None,
    fused: Optional[bool] = None,
    lr: Union[float, Tensor],
    variance_ratio: float,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    weight_decay: float,
    eps: float,
    init: str,
    maximize: bool,
) -> None:
    """Functional VSGD: one step on every parameter of the lists, in place.

    See :class:`vsgd_bayes.torch.VSGD` for the algorithm and the arguments. Complex tensors
    (parameters, gradients, state) are viewed as real here, so every path sees real tensors.
    ``foreach=None``/``fused=None`` pick the fastest path that needs no compiler (foreach when
    available, else single-tensor; fused only through :data:`FUSED_BY_DEFAULT`).

    Raises:
        ValueError: ``foreach=True`` together with ``fused=True``.
        RuntimeError: ``fused=True`` on a device where the fused kernel is not available.
    """
    if foreach and fused:
        raise ValueError("foreach=True and fused=True are mutually exclusive; choose one path")
    params, grads = _local(params), _local(grads)
    gradient_means, drift_rates, noise_rates = (
        _local(gradient_means), _local(drift_rates), _local(noise_rates)
    )
    if fused is None and foreach is None:
        fused = default_fused(params)
    if foreach is None:
        foreach = not fused and default_foreach(params)

    tensors = [
        _as_real(list(ts)) for ts in (params, grads, gradient_means, drift_rates, noise_rates)
    ]
    hyperparameters = dict(
        lr=lr,
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa1=kappa1,
        kappa2=kappa2,
        weight_decay=weight_decay,
        eps=eps,
        init=init,
        maximize=maximize,
    )
    if fused:
        fused_module = _fused_module()
        for device in {t.device for t in tensors[0]}:
            if not fused_module.fused_is_available(device):
                raise RuntimeError(
                    f"fused=True: the fused VSGD kernel is not available on {device}"
                )
        path = fused_module.fused_vsgd
    elif foreach:
        path = _foreach_module().foreach_vsgd
    else:
        path = single_tensor_vsgd
    path(*tensors, list(steps), **hyperparameters)
