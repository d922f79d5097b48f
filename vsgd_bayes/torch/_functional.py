"""Functional entry points: pick an execution path and run it.

:func:`run_path` is shared by every optimizer of the package: it resolves ``foreach``/``fused``
(``None`` means "the default"), hands DTensor shards over as local tensors and complex tensors
as real views, and calls the chosen path. :func:`vsgd` is VSGD's entry point; its three paths
implement one contract (the signature of
:func:`vsgd_bayes.torch._single_tensor.single_tensor_vsgd`) and are kept numerically equal by
``tests/test_torch_parity.py``:

* ``single_tensor``: a line-by-line port of :mod:`vsgd_bayes.rules.vsgd`, one tensor at a time;
* ``foreach``: the same update on lists of tensors with ``torch._foreach_*`` kernels
  (``_foreach.py``);
* ``fused``: one compiled kernel per (device, dtype) (``_fused.py``: C++ on CPU, Triton on CUDA).

Defaults (``foreach=None, fused=None``): fused on CUDA when Triton is importable (one kernel
launch per step instead of a few per operation) and on CPU when the C++ kernel has been built
(``make setup``, or ``python -m vsgd_bayes.torch.build``; a default never compiles), otherwise
foreach for plain tensors and DTensors, otherwise single-tensor. Under ``torch.compile``
every path flag compiles the single-tensor form (see :func:`run_path`). The fast paths are
imported lazily, only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from vsgd_bayes.torch._common import as_real, default_foreach, local_tensors
from vsgd_bayes.torch._single_tensor import single_tensor_vsgd

__all__ = ["vsgd", "run_path", "default_foreach", "default_fused", "fused_module"]


def foreach_module() -> ModuleType:
    return importlib.import_module("vsgd_bayes.torch._foreach")


#: VSGD's fused path; another optimizer names its own (``run_path(fused_module_name=...)``)
#: with the same interface: ``SUPPORTED_PARAM_DTYPES``, ``cpu_kernel_is_built()`` and
#: ``fused_is_available(device)``.
VSGD_FUSED_MODULE = "vsgd_bayes.torch._fused"


def fused_module(name: str = VSGD_FUSED_MODULE) -> ModuleType:
    return importlib.import_module(name)


def default_fused(params: list[Tensor], module: str = VSGD_FUSED_MODULE) -> bool:
    """Whether ``fused=None`` (with ``foreach=None``) runs the fused path for ``params``.

    When every parameter is on one device type, of a dtype the kernel supports, and the
    kernel is ready there without compiling anything: on CUDA, Triton is importable; on CPU,
    the C++ kernel is already built (:func:`~vsgd_bayes.torch._fused.cpu_kernel_is_built`, a
    file check; ``make setup`` or ``python -m vsgd_bayes.torch.build`` builds it). A default
    never starts a build; if a built kernel fails to load, one warning and foreach.
    """
    if not params or torch.jit.is_scripting():
        return False
    device_types = {p.device.type for p in params}
    if device_types not in ({"cuda"}, {"cpu"}):
        return False
    fused = fused_module(module)
    if any(p.dtype not in fused.SUPPORTED_PARAM_DTYPES for p in params):
        return False
    if device_types == {"cpu"} and not fused.cpu_kernel_is_built():
        return False
    return all(fused.fused_is_available(device) for device in {p.device for p in params})


def run_path(
    paths: dict[str, Callable[..., None]],
    tensor_lists: list[list[Tensor]],
    steps: list[Tensor],
    *,
    foreach: bool | None,
    fused: bool | None = None,
    fused_module_name: str = VSGD_FUSED_MODULE,
    hyperparameters: dict[str, Any],
) -> None:
    """Resolve the path from the flags and run it on the tensor lists (params first).

    Args:
        paths: ``{"single_tensor": f, "foreach": f, ["fused": f]}``, each with the signature
            ``f(*tensor_lists, steps, **hyperparameters)``.
        tensor_lists: params, grads, then the state lists; DTensors are handed over as local
            tensors and complex tensors as real views.
        steps: the step counters (0-dim float32 CPU tensors), advanced by the path.
        foreach, fused: the flags; None picks the default (module docstring).
        fused_module_name: the module of the fused path (its availability and dtypes);
            VSGD's by default.
        hyperparameters: keyword arguments of the path.

    Raises:
        ValueError: ``foreach=True`` together with ``fused=True``.
        RuntimeError: ``fused=True`` on a device where the fused kernel is not available.
    """
    if foreach and fused:
        raise ValueError("foreach=True and fused=True are mutually exclusive; choose one path")
    tensor_lists = [as_real(local_tensors(list(ts))) for ts in tensor_lists]
    params = tensor_lists[0]
    if torch.compiler.is_compiling():
        # Under torch.compile every flag traces the single-tensor form: inductor fuses its
        # elementwise chain itself, whereas the foreach and fused paths are eager devices
        # that read each step count as a Python number (a recompilation at every step) or
        # call an extension that dynamo cannot trace.
        paths["single_tensor"](*tensor_lists, list(steps), **hyperparameters)
        return
    if fused is None and foreach is None and "fused" in paths:
        fused = default_fused(params, fused_module_name)
    if foreach is None:
        foreach = not fused and default_foreach(params)
    if fused:
        if "fused" not in paths:
            raise ValueError("fused=True: this optimizer has no fused path")
        module = fused_module(fused_module_name)
        for device in {t.device for t in params}:
            if not module.fused_is_available(device):
                raise RuntimeError(
                    f"fused=True: the fused kernel is not available on {device}"
                )
        path = paths["fused"]
    elif foreach:
        path = paths["foreach"]
    else:
        path = paths["single_tensor"]
    path(*tensor_lists, list(steps), **hyperparameters)


def _foreach_vsgd(*args: Any, **kwargs: Any) -> None:
    foreach_module().foreach_vsgd(*args, **kwargs)


def _fused_vsgd(*args: Any, **kwargs: Any) -> None:
    fused_module().fused_vsgd(*args, **kwargs)


_VSGD_PATHS = {
    "single_tensor": single_tensor_vsgd,
    "foreach": _foreach_vsgd,
    "fused": _fused_vsgd,
}


def vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    drift_rates: list[Tensor],
    noise_rates: list[Tensor],
    steps: list[Tensor],
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float | Tensor,
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

    See :class:`vsgd_bayes.torch.VSGD` for the algorithm and the arguments, and
    :func:`~vsgd_bayes.torch._functional.run_path` for the choice of path and the errors.
    """
    run_path(
        _VSGD_PATHS,
        [params, grads, gradient_means, drift_rates, noise_rates],
        steps,
        foreach=foreach,
        fused=fused,
        hyperparameters=dict(
            lr=lr,
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            weight_decay=weight_decay,
            eps=eps,
            init=init,
            maximize=maximize,
        ),
    )
