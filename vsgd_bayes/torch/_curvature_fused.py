r"""The fused CPU path of ``CurvatureKalmanVSGD``: one pass per element, one kernel call per step.

Each element of every parameter is read once (theta, g_hat and the 21 state values: the five
moments, r, the two log ratios, the ten tangents, the two informations, the previous point)
and written once (theta and the 21), with no full-size temporaries: 43 values against fused
Adam's 7. The kernel ``csrc/curvature_cpu.cpp`` evaluates
:func:`vsgd_bayes.rules.curvature.step` (``posterior_update``, ``rate_of``,
``parameter_step``) operation for operation, in the state dtype, vectorised with
``at::vec::Vectorized`` and split over threads with ``at::parallel_for``; the per-tensor
scalars t^-kappa and c / t come from :func:`step_scalars`, computed as the single-tensor path
computes them. The state is the other paths' (same tensors, same layout), so a state dict
moves between the paths.

It is built like VSGD's fused kernel (:mod:`vsgd_bayes.torch._fused`): once, with
``torch.utils.cpp_extension.load`` for the host's instruction set, cached by torch under
``curvature_fused_cpu_<isa>_<source hash>``; ``python -m vsgd_bayes.torch.build`` builds it.
CPU only: on other devices :func:`curvature_fused_is_available` is False (the optimizer's
default then is foreach).
"""

from __future__ import annotations

import pathlib
import warnings

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._common import as_float, increment_steps
from vsgd_bayes.torch._cpu_extension import CSRC, ISA_FLAGS, extension_name, library_path, load

__all__ = [
    "fused_curvature_kalman_vsgd",
    "curvature_fused_is_available",
    "fused_is_available",
    "cpu_extension_name",
    "cpu_kernel_path",
    "cpu_kernel_is_built",
    "build_cpu_kernel",
    "step_scalars",
    "SUPPORTED_PARAM_DTYPES",
]

_SOURCE = CSRC / "curvature_cpu.cpp"
SUPPORTED_PARAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_SUPPORTED_STATE_DTYPES = (torch.float32, torch.float64)
_DEFAULTS = hp.CURVATURE_DEFAULTS

_cpu_module = None
_cpu_error: str | None = None
_cpu_tried = False


def cpu_extension_name() -> str:
    """``curvature_fused_cpu_<isa>_<first 8 hex digits of the source's SHA-256>``."""
    return extension_name("curvature_fused_cpu", _SOURCE)


def cpu_kernel_path() -> pathlib.Path:
    """Where torch's extension cache keeps the built kernel (compiles nothing)."""
    return library_path(cpu_extension_name())


def cpu_kernel_is_built() -> bool:
    """Whether the kernel of this source and instruction set is loaded or in torch's cache (a
    file check: ``fused=None`` asks it, and a default never compiles)."""
    return _cpu_module is not None or cpu_kernel_path().is_file()


def build_cpu_kernel() -> pathlib.Path:
    """Build (or load, if cached) the kernel and return the path of its library.

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
        raise RuntimeError(
            f"the fused CurvatureKalmanVSGD CPU kernel could not be built: {_cpu_error}"
        )
    return cpu_kernel_path()


def _load_cpu_module():
    """Builds (first time) or loads (from torch's extension cache) the kernel, once."""
    global _cpu_module, _cpu_error, _cpu_tried
    if _cpu_tried:
        return _cpu_module
    _cpu_tried = True
    isa = torch.backends.cpu.get_cpu_capability()
    # at::vec::Vectorized picks its implementation from CPU_CAPABILITY_<ISA>, as in torch's own
    # kernels. -ffp-contract=off: no product is fused into an addition, so the rounding is the
    # rule's operation for operation (float64 parity to 1e-11); -fno-math-errno lets the
    # scalar tail's sqrt inline; no -ffast-math.
    capability = [f"-DCPU_CAPABILITY={isa}", f"-DCPU_CAPABILITY_{isa}"] if (
        isa in ISA_FLAGS
    ) else []
    flags = (["-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"]
             + ISA_FLAGS.get(isa, []) + capability)
    _cpu_module, _cpu_error = load(cpu_extension_name(), _SOURCE, flags,
                                   "fused CurvatureKalmanVSGD CPU kernel")
    return _cpu_module


def curvature_fused_is_available(device: torch.device | str) -> bool:
    """Whether :func:`fused_curvature_kalman_vsgd` can run on ``device``: CPU only, where
    this builds the kernel the first time (tens of seconds; cached on disk afterwards) and
    warns once if that fails."""
    device = torch.device(device)
    return device.type == "cpu" and _load_cpu_module() is not None


#: The name :func:`vsgd_bayes.torch._functional.run_path` and the optimizer's base ask.
fused_is_available = curvature_fused_is_available


def step_scalars(step: float, ratio_step_scale: float, kappa: float) -> tuple[float, float]:
    """(t^-kappa, c / t) at the 1-based step ``step``: the averaging weight and the ratio
    step size, as :func:`~vsgd_bayes.torch._kalman_single_tensor.kalman_step_scalars` gives
    them to the single-tensor path."""
    return hp.averaging_weight(step, kappa), hp.ratio_step_size(step, ratio_step_scale)


def _check(params: list[Tensor], gradient_means: list[Tensor]) -> None:
    """Raise before anything changes if a tensor cannot be stepped here."""
    for param, mean in zip(params, gradient_means):
        if param.dtype not in SUPPORTED_PARAM_DTYPES:
            raise TypeError(
                "fused CurvatureKalmanVSGD supports parameters of dtypes "
                f"{SUPPORTED_PARAM_DTYPES}, got {param.dtype}"
            )
        if mean.dtype not in _SUPPORTED_STATE_DTYPES or (
            mean.dtype != torch.promote_types(param.dtype, torch.float32)
        ):
            raise TypeError(
                "fused CurvatureKalmanVSGD supports state of dtype promote(parameter dtype, "
                f"float32) in {_SUPPORTED_STATE_DTYPES}, got {mean.dtype} for a {param.dtype} "
                "parameter"
            )
        if not curvature_fused_is_available(param.device):
            reason = (f"the CPU kernel could not be built ({_cpu_error})"
                      if param.device.type == "cpu"
                      else f"no fused kernel exists for device type {param.device.type!r}")
            raise RuntimeError(
                f"fused CurvatureKalmanVSGD is unavailable on {param.device}: {reason}; "
                "use foreach=True"
            )


def fused_curvature_kalman_vsgd(
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
    """One Curvature Kalman VSGD step on lists of CPU tensors, in place, with one kernel call
    (the contract of
    :func:`~vsgd_bayes.torch._curvature_single_tensor.single_tensor_curvature_kalman_vsgd`).

    Gradients of another dtype than their parameter are cast to the state dtype (a temporary
    of that tensor's size); non-contiguous tensors are stepped through contiguous copies.

    Raises:
        RuntimeError: the kernel is not available on a parameter's device.
        TypeError: an unsupported parameter or state dtype. (Nothing is modified then.)
    """
    if not params:
        return
    _check(params, gradient_means)
    lr = as_float(lr)
    tensors = [list(column) for column in (
        params, grads, gradient_means, curvature_means, gradient_variances, cross_covariances,
        curvature_variances, noise_variances, log_drift_to_noises,
        log_curvature_drift_to_noises, ratio_sensitivities, ratio_informations,
        previous_points,
    )]
    scalars: list[float] = []
    for step in steps:
        scalars.extend(step_scalars(step.item() + 1.0, ratio_step_scale, kappa))
    copied = not all(t.is_contiguous() for column in tensors for t in column)
    work = [[t.contiguous() for t in column] for column in tensors] if copied else tensors
    work[1] = [g if g.dtype in (p.dtype, m.dtype) else g.to(m.dtype)
               for g, p, m in zip(work[1], work[0], work[2])]
    _cpu_module.curvature_step(
        *work, scalars, lr, 1.0 - lr * weight_decay, eps, max_ratio_change,
        hp.curvature.CURVATURE_LOG_RATIO_BOUND, maximize, step_variance == "predictive",
        curvature_step == "trust_region",
    )
    if copied:
        for index, (column, working) in enumerate(zip(tensors, work)):
            if index == 1:  # gradients are never modified
                continue
            for original, copy in zip(column, working):
                if copy is not original:
                    original.copy_(copy)
    increment_steps(steps)
