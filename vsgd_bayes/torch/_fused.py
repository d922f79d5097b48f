r"""The fused VSGD path: one pass per element, one kernel per step.

Each element of every parameter is read once (theta, g_hat, mu, b_g, b_ghat) and written once
(theta, mu, b_g, b_ghat), with no full-size temporaries: nine values against Adam's seven,
so the floor is about 9/7 ~= 1.29 times fused Adam's step time. The kernel evaluates the
single-pass algebraic form of the update documented in :mod:`vsgd_bayes.torch._foreach`
(the reference is :func:`vsgd_bayes.rules.vsgd.step`); the per-tensor scalars (functions of each
tensor's step count) come from :func:`vsgd_bayes.torch._foreach.step_constants`.

* CPU: the C++ kernel ``csrc/vsgd_cpu.cpp`` (``at::parallel_for`` over blocks, a vectorised
  inner loop), built once with ``torch.utils.cpp_extension.load`` for the host's instruction
  set (``torch.backends.cpu.get_cpu_capability()``) and cached by torch in
  ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions/<python>_cpu/``) under the
  name ``vsgd_fused_cpu_<isa>_<source hash>``; later processes load it in well under a second.
* CUDA: a Triton kernel (:mod:`vsgd_bayes.torch._triton`, imported at first use) launched
  once per step for all tensors of one dtype pair: a table
  of addresses and sizes, cached on the device while the tensors stay where they are, and
  the step's scalars (float64, uploaded each step); each program steps one block of one
  tensor.

When neither can be used (no compiler, no Triton), :func:`fused_is_available` returns False
after one warning and :func:`fused_vsgd` raises ``RuntimeError``; callers then choose the
foreach path.

References:
    Chen, Kuzina, Esmaeili, Tomczak. Variational Stochastic Gradient Descent for Deep Neural
    Networks. arXiv:2404.06549 (2024).
"""

from __future__ import annotations

import importlib
import pathlib
import warnings
from collections import defaultdict

import torch
from torch import Tensor

from vsgd_bayes.torch._common import as_float, increment_steps
from vsgd_bayes.torch._cpu_extension import CSRC, ISA_FLAGS, extension_name, library_path, load
from vsgd_bayes.torch._foreach import step_constants

__all__ = [
    "fused_vsgd",
    "fused_is_available",
    "cpu_extension_name",
    "cpu_kernel_path",
    "cpu_kernel_is_built",
    "build_cpu_kernel",
]

_SOURCE = CSRC / "vsgd_cpu.cpp"
SUPPORTED_PARAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_SUPPORTED_STATE_DTYPES = (torch.float32, torch.float64)

_cpu_module = None
_cpu_error: str | None = None
_cpu_tried = False


def cpu_extension_name() -> str:
    """Name of the cached CPU extension: ``vsgd_fused_cpu_<isa>_<source hash>`` (e.g.
    ``..._avx2_1a2b3c4d``; ``vsgd_bayes.torch._cpu_extension.extension_name``)."""
    return extension_name("vsgd_fused_cpu", _SOURCE)


def cpu_kernel_path() -> pathlib.Path:
    """Where torch's extension cache keeps the built CPU kernel (``<build dir>/<name>.so``,
    ``vsgd_bayes.torch._cpu_extension.library_path``; compiles nothing)."""
    return library_path(cpu_extension_name())


def cpu_kernel_is_built() -> bool:
    """Whether the CPU kernel of this source and instruction set is in torch's cache.

    A file check that never compiles: ``fused=None`` asks it to decide whether the fused
    path is the CPU default (``vsgd_bayes.torch._functional.default_fused``). Build the
    kernel once with :func:`build_cpu_kernel` (``python -m vsgd_bayes.torch.build``, which
    ``make setup`` runs).
    """
    return _cpu_module is not None or cpu_kernel_path().is_file()


def build_cpu_kernel() -> pathlib.Path:
    """Build (or load, if cached) the fused CPU kernel and return the path of its library.

    A one-off of tens of seconds with a C++ compiler and ninja (the ``fused`` extra);
    afterwards ``VSGD(..., fused=None)`` takes the fused path on CPU by default.

    Raises:
        RuntimeError: the kernel could not be built; the message gives the compiler's reason.
    """
    global _cpu_tried
    if _cpu_module is None:
        _cpu_tried = False  # an explicit request retries a build that failed earlier
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _load_cpu_module()
    if _cpu_module is None:
        raise RuntimeError(f"the fused CPU kernel could not be built: {_cpu_error}")
    return cpu_kernel_path()


def _load_cpu_module():
    """Builds (first time) or loads (from torch's extension cache) the CPU kernel, once."""
    global _cpu_module, _cpu_error, _cpu_tried
    if _cpu_tried:
        return _cpu_module
    _cpu_tried = True
    isa = torch.backends.cpu.get_cpu_capability()
    # -fno-math-errno lets sqrt vectorise; no -ffast-math (it would change the rounding
    # that the float64 parity tests check to 1e-12).
    flags = ["-O3", "-fno-math-errno", "-fopenmp"] + ISA_FLAGS.get(isa, [])
    _cpu_module, _cpu_error = load(cpu_extension_name(), _SOURCE, flags,
                                   "fused CPU kernel")
    return _cpu_module


def _triton_module():
    """The Triton kernel module :mod:`vsgd_bayes.torch._triton` (imported at first use: it
    imports Triton, which only the CUDA path needs)."""
    return importlib.import_module("vsgd_bayes.torch._triton")


_triton_importable: bool | None = None


def _triton_available() -> bool:
    """Whether the Triton kernel module imports (tried once per process: ``fused=None`` asks
    at every step on CUDA)."""
    global _triton_importable
    if _triton_importable is None:
        try:
            _triton_module()
            _triton_importable = True
        except Exception:  # no Triton, or one that cannot build for this machine
            _triton_importable = False
    return _triton_importable


def fused_is_available(device: torch.device | str) -> bool:
    """Whether :func:`fused_vsgd` can run on ``device``.

    On CPU this builds the extension the first time (a one-off of tens of seconds; cached on
    disk afterwards) and warns once if that fails; on CUDA it needs Triton.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return _load_cpu_module() is not None
    if device.type == "cuda":
        return torch.cuda.is_available() and _triton_available()
    return False


def _unavailable(device: torch.device) -> RuntimeError:
    if device.type == "cpu":
        reason = f"the CPU kernel could not be built ({_cpu_error})"
    elif device.type == "cuda":
        reason = "Triton is not installed"
    else:
        reason = f"no fused kernel exists for device type {device.type!r}"
    return RuntimeError(f"fused VSGD is unavailable on {device}: {reason}; use foreach=True")


def _check_dtypes(param_dtype: torch.dtype, state_dtype: torch.dtype) -> None:
    if param_dtype not in SUPPORTED_PARAM_DTYPES:
        raise TypeError(
            f"fused VSGD supports parameters of dtypes {SUPPORTED_PARAM_DTYPES}, "
            f"got {param_dtype}"
        )
    if state_dtype not in _SUPPORTED_STATE_DTYPES:
        raise TypeError(
            f"fused VSGD supports state of dtypes {_SUPPORTED_STATE_DTYPES}, got {state_dtype}"
        )


def fused_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    drift_rates: list[Tensor],
    noise_rates: list[Tensor],
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
    maximize: bool,
) -> None:
    """One VSGD step on a list of parameters with one fused kernel per dtype group, in place.

    Same contract and arguments as :func:`vsgd_bayes.torch._foreach.foreach_vsgd`. Gradients
    of another dtype than their parameter are cast (a temporary of that tensor's size);
    non-contiguous tensors are stepped through contiguous copies.

    Raises:
        RuntimeError: if :func:`fused_is_available` is False for the parameters' device
            (nothing is modified then).
        TypeError: for unsupported dtypes (nothing is modified then).

    Example:
        >>> import torch
        >>> p, g = torch.ones(3), torch.full((3,), 0.5)
        >>> mu, bg, bn = torch.zeros(3), torch.full((3,), 1e-8), torch.full((3,), 3e-7)
        >>> if fused_is_available(p.device):
        ...     fused_vsgd([p], [g], [mu], [bg], [bn], [torch.tensor(0.0)], lr=0.1,
        ...         variance_ratio=30.0, prior_strength=1e-8, kappa1=0.81, kappa2=0.9,
        ...         weight_decay=0.0, eps=1e-8, init="reference", maximize=False)
    """
    if not params:
        return
    lr = as_float(lr)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, (param, mean) in enumerate(zip(params, gradient_means)):
        groups[(param.device, param.dtype, mean.dtype)].append(index)
    for device, param_dtype, state_dtype in groups:
        _check_dtypes(param_dtype, state_dtype)
        if not fused_is_available(device):
            raise _unavailable(device)

    # One tuple of constants per distinct step count, shared by the tensors at that step
    # (the Triton host code recognises a uniform step by this sharing).
    next_steps = [step.item() + 1.0 for step in steps]
    constants_of_step: dict[float, tuple[float, ...]] = {}
    for step in next_steps:
        if step not in constants_of_step:
            constants_of_step[step] = step_constants(
                step,
                variance_ratio=variance_ratio,
                prior_strength=prior_strength,
                kappa1=kappa1,
                kappa2=kappa2,
                init=init,
            )

    decay = 1.0 - lr * weight_decay
    for (device, param_dtype, _), indices in groups.items():
        tensors = [
            [group[i] for i in indices]
            for group in (params, grads, gradient_means, drift_rates, noise_rates)
        ]
        constants = [constants_of_step[next_steps[i]] for i in indices]
        # Contiguous working tensors: the originals where possible, copies otherwise;
        # gradients in their parameter's dtype.
        copied = not all(t.is_contiguous() for group in tensors for t in group)
        work = [[t.contiguous() for t in group] for group in tensors] if copied else tensors
        work[1] = [g if g.dtype == param_dtype else g.to(param_dtype) for g in work[1]]
        if device.type == "cpu":
            flat_constants = [value for row in constants for value in row]
            _cpu_module.vsgd_step(*work, flat_constants, lr, decay, eps, maximize)
        else:
            _triton_module().vsgd_step(*work, constants, lr, decay, eps, maximize)
        if copied:
            for group, working in zip(tensors[:1] + tensors[2:], work[:1] + work[2:]):
                for original, copy in zip(group, working):
                    if copy is not original:
                        original.copy_(copy)
    increment_steps(steps)
