r"""Curvature Kalman VSGD for PyTorch: the true gradient follows the step through a learned
curvature, filtered exactly (``derivations/15_curvature_kalman_vsgd.md``).

Symbols -> arguments: eta = ``lr``, lambda_g,0 = ``initial_drift_to_noise``, lambda_h,0 eta^2 =
``initial_curvature_drift_to_noise``, c = ``ratio_step_scale``, Delta_phi =
``max_ratio_change``, kappa = ``kappa``, lambda_wd = ``weight_decay``, epsilon = ``eps``. State
per parameter: the fields of :class:`vsgd_bayes.rules.curvature.CurvatureKalmanVSGDState`
(21 numbers per coordinate and the step count). A port of :mod:`vsgd_bayes.rules.curvature`
(``_curvature_single_tensor.py``), a foreach path (``_curvature_foreach.py``, the same
functions on lists) and a fused CPU kernel (``_curvature_fused.py``, one pass per element),
picked by :func:`vsgd_bayes.torch._functional.run_path`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._base import VSGDFamilyOptimizer
from vsgd_bayes.torch._common import filled_like
from vsgd_bayes.torch._curvature_foreach import foreach_curvature_kalman_vsgd
from vsgd_bayes.torch._curvature_single_tensor import single_tensor_curvature_kalman_vsgd
from vsgd_bayes.torch._functional import run_path

__all__ = ["CurvatureKalmanVSGD", "CurvaturePosterior", "curvature_kalman_vsgd"]

#: the fused path's module, imported at its first use (it builds or loads a C++ extension)
_FUSED_MODULE = "vsgd_bayes.torch._curvature_fused"


def _fused_curvature_kalman_vsgd(*args: Any, **kwargs: Any) -> None:
    importlib.import_module(_FUSED_MODULE).fused_curvature_kalman_vsgd(*args, **kwargs)


_PATHS = {
    "single_tensor": single_tensor_curvature_kalman_vsgd,
    "foreach": foreach_curvature_kalman_vsgd,
    "fused": _fused_curvature_kalman_vsgd,
}
_DEFAULTS = hp.CURVATURE_DEFAULTS


class CurvaturePosterior(NamedTuple):
    """The posterior over one parameter's true gradient g_t and curvature h_t after its latest
    step, and the plug-in variances of the model, in the gradient's units.

    Attributes:
        mean: m_g, the posterior mean of g_t.
        variance: r P_gg, the posterior variance of g_t.
        curvature_mean: m_h, the posterior mean of h_t (gradient per unit of parameter).
        curvature_variance: r P_hh, the posterior variance of h_t.
        cross_covariance: r P_gh, the posterior covariance of g_t and h_t.
        drift_variance: q_g = lambda_g r.
        curvature_drift_variance: q_h = lambda_h r.
        noise_variance: r, the mini-batch noise variance.
    """

    mean: Tensor
    variance: Tensor
    curvature_mean: Tensor
    curvature_variance: Tensor
    cross_covariance: Tensor
    drift_variance: Tensor
    curvature_drift_variance: Tensor
    noise_variance: Tensor

    def predictive(self, displacement: Tensor | float) -> tuple[Tensor, Tensor]:
        """(mean, variance) of the next mini-batch gradient if the parameter moves by
        ``displacement`` [curvature-predict], [curvature-innovation]: m_g + m_h Delta and
        r P^-_gg + r with P^-_gg = P_gg + 2 Delta P_gh + Delta^2 P_hh + lambda_g."""
        mean = self.mean + self.curvature_mean * displacement
        variance = (self.variance + 2.0 * displacement * self.cross_covariance
                    + displacement * displacement * self.curvature_variance
                    + self.drift_variance + self.noise_variance)
        return mean, variance


def curvature_kalman_vsgd(
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
    foreach: bool | None = None,
    fused: bool | None = None,
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
    """Functional Curvature Kalman VSGD: one step on every parameter of the lists, in place,
    each gradient taken at its parameter's current value.

    Complex tensors are viewed as real; ``foreach=None, fused=None`` uses the fused path on
    CPU when its kernel is built, else the foreach path when every parameter is a plain
    tensor or DTensor (see :class:`CurvatureKalmanVSGD` for the arguments, and
    :func:`~vsgd_bayes.torch._functional.run_path` for the choice of path and the errors).
    """
    run_path(
        _PATHS,
        [params, grads, gradient_means, curvature_means, gradient_variances, cross_covariances,
         curvature_variances, noise_variances, log_drift_to_noises,
         log_curvature_drift_to_noises, ratio_sensitivities, ratio_informations,
         previous_points],
        steps,
        foreach=foreach,
        fused=fused,
        fused_module_name=_FUSED_MODULE,
        hyperparameters=dict(
            lr=lr,
            ratio_step_scale=ratio_step_scale,
            max_ratio_change=max_ratio_change,
            kappa=kappa,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
            step_variance=step_variance,
            curvature_step=curvature_step,
        ),
    )


def _step_group(*lists: list[Tensor], initial_drift_to_noise: float,
                initial_curvature_drift_to_noise: float, **kwargs: Any) -> None:
    """:func:`curvature_kalman_vsgd` called by the base class with every group
    hyperparameter; the initial ratios only start the state (``state_fields``)."""
    del initial_drift_to_noise, initial_curvature_drift_to_noise
    curvature_kalman_vsgd(*lists, **kwargs)


def _zeros(*leading: int):
    def init(param: Tensor, group: dict[str, Any], dtype: torch.dtype) -> Tensor:
        return torch.zeros(leading + tuple(param.shape), dtype=dtype, device=param.device)

    return init


def _log_curvature_start(param: Tensor, group: dict[str, Any], dtype: torch.dtype) -> Tensor:
    # lambda_h,0 = initial_curvature_drift_to_noise / lr^2 (rules.curvature.init_state), with
    # the group's base rate: ``initial_lr`` where a scheduler (torch.optim.lr_scheduler, or the
    # bench's) has recorded it, so that a warm-up's small first rate does not inflate it
    lr = float(group.get("initial_lr", group["lr"]))
    value = hp.curvature.initial_log_curvature_drift_to_noise(
        group["initial_curvature_drift_to_noise"], lr
    )
    return filled_like(param, value, dtype)


def _copy_of_point(param: Tensor, group: dict[str, Any], dtype: torch.dtype) -> Tensor:
    # clone, not .to(dtype, copy=True), which torch.compile (2.13) traces as an alias of the
    # parameter when the dtype does not change
    point = param.detach().clone(memory_format=torch.preserve_format)
    return point if point.dtype == dtype else point.to(dtype)


class CurvatureKalmanVSGD(VSGDFamilyOptimizer):
    r"""Curvature Kalman VSGD: the true gradient follows the parameter step through a learned
    per-coordinate curvature; an exact 2 x 2 Kalman filter of (gradient, curvature), its
    variance ratios learned by recursive maximum likelihood, and VSGD's step.

    Per coordinate the model is g_t = g_{t-1} + h_{t-1} Delta_t + w_g, h_t = h_{t-1} + w_h,
    g_hat_t = g_t + v, with Delta_t the parameter's move since its previous gradient (known:
    the state keeps the previous point), w_g ~ N(0, lambda_g r), w_h ~ N(0, lambda_h r),
    v ~ N(0, r). Nothing depends on the gradients' absolute scale (with ``eps = 0``).

    .. math::

        m^- = (m_g + m_h\Delta,\ m_h),\quad
        P^- = F P F^\top + \mathrm{diag}(\lambda_g, \lambda_h),\quad
        v = \hat g - m^-_g,\quad \tilde S = P^-_{gg} + 1 \\
        m = m^- + P^-_{\cdot g} v / \tilde S,\quad
        r_t = r_{t-1} + t^{-\kappa}(v^2/\tilde S - r_{t-1}),\quad
        \ln\lambda_j \leftarrow \ln\lambda_j + \mathrm{clip}_{\pm\Delta_\phi}
            \big(\tfrac{c}{t}\, u_j / R_j\big) \\
        V = r(P_{gg} + \lambda_g + 1),\quad
        \theta_t = \theta_{t-1}(1 - \eta\lambda_{wd})
            - \rho\, m_g / \max(\sqrt{m_g^2 + V} + \epsilon, \mathrm{tiny})

    with rho = eta (``curvature_step="none"``) or min(eta, abs(m_g) / m_h) where m_h > 0
    (``"trust_region"``), u_j the score and R_j the running information of ln lambda_j
    (``derivations/15_curvature_kalman_vsgd.md``).

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate eta (float or 0-dim tensor). Default 0.1.
        initial_drift_to_noise: lambda_g,0 in [1e-12, 1e12]. Default 1.
        initial_curvature_drift_to_noise: lambda_h,0 eta^2 in [1e-12, 1e12] (the curvature's
            drift against the noise, per unit of the first step's squared lr). Default 1e-2.
        ratio_step_scale: c >= 0 of the steps c / t on ln lambda_g, ln lambda_h. Default 2.
        max_ratio_change: Delta_phi > 0, the largest change of a ln lambda in a step.
            Default 1.
        kappa: exponent in (0.5, 1] of the averaging weight t^-kappa. Default 0.8.
        weight_decay: decoupled weight decay >= 0. Default 0.
        eps: epsilon >= 0. Default 0 (any eps > 0 breaks the scale invariance).
        step_variance: V in the step: ``"predictive"`` (r (P_gg + lambda_g + 1), the
            predictive variance of the next mini-batch gradient; default) or ``"posterior"``
            (r P_gg).
        curvature_step: ``"none"`` (rate eta; default) or ``"trust_region"`` (rate
            min(eta, abs(m_g) / m_h) where the posterior curvature m_h > 0).
        maximize: maximise instead. Default False.
        foreach: use the ``torch._foreach`` path; None picks it when possible.
        fused: use the fused C++ kernel (CPU only; float32, float64, bfloat16 and float16
            parameters). With ``foreach=None, fused=None`` it is picked on CPU when the
            kernel has been built (``make setup`` or ``python -m vsgd_bayes.torch.build``);
            a default never compiles, an explicit ``fused=True`` builds it at the first step
            if needed. ``foreach=True`` with ``fused=True`` is a ValueError. The state is the
            same on every path (a state dict moves between them).
        schedule_free_momentum: beta in (0, 1): Schedule-Free averaging, with ``eval()`` and
            ``train()`` (see :class:`~vsgd_bayes.torch._base.VSGDFamilyOptimizer`). Default
            None: off.

    Raises:
        ValueError: an invalid hyperparameter (named, with its value), at construction, at
            ``add_param_group`` and at every step (before anything is modified).
        TypeError: a non-bool ``maximize``/``foreach``/``fused``.
        RuntimeError: at a step in eval mode (with ``schedule_free_momentum``), a sparse
            gradient, or ``fused=True`` on a device without the fused kernel (nothing is
            modified).

    Example:
        >>> import torch
        >>> from vsgd_bayes.torch import CurvatureKalmanVSGD
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = CurvatureKalmanVSGD([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, -1.0])
        >>> opt.step()
        >>> opt.gradient_posterior(w).mean
        tensor([ 0.5000, -0.5000])
    """

    state_fields = {
        "gradient_mean": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "curvature_mean": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "gradient_variance": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "cross_covariance": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "curvature_variance": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "noise_variance": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "log_drift_to_noise": lambda param, group, dtype: filled_like(
            param, math.log(float(group["initial_drift_to_noise"])), dtype
        ),
        "log_curvature_drift_to_noise": _log_curvature_start,
        "ratio_sensitivities": _zeros(2, 5),
        "ratio_information": _zeros(2),
        "previous_point": _copy_of_point,
    }
    hyperparameters = (
        "lr", "initial_drift_to_noise", "initial_curvature_drift_to_noise", "ratio_step_scale",
        "max_ratio_change", "kappa", "weight_decay", "eps", "step_variance", "curvature_step",
    )
    paths = ("single_tensor", "foreach", "fused")
    functional = staticmethod(_step_group)
    fused_module_name = _FUSED_MODULE

    def __init__(
        self,
        params: Iterable[Tensor | dict[str, Any]],
        lr: float | Tensor = _DEFAULTS["lr"],
        *,
        initial_drift_to_noise: float = _DEFAULTS["initial_drift_to_noise"],
        initial_curvature_drift_to_noise: float = _DEFAULTS["initial_curvature_drift_to_noise"],
        ratio_step_scale: float = _DEFAULTS["ratio_step_scale"],
        max_ratio_change: float = _DEFAULTS["max_ratio_change"],
        kappa: float = _DEFAULTS["kappa"],
        weight_decay: float = _DEFAULTS["weight_decay"],
        eps: float = _DEFAULTS["eps"],
        step_variance: str = _DEFAULTS["step_variance"],
        curvature_step: str = _DEFAULTS["curvature_step"],
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        schedule_free_momentum: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            initial_drift_to_noise=initial_drift_to_noise,
            initial_curvature_drift_to_noise=initial_curvature_drift_to_noise,
            ratio_step_scale=ratio_step_scale,
            max_ratio_change=max_ratio_change,
            kappa=kappa,
            weight_decay=weight_decay,
            eps=eps,
            step_variance=step_variance,
            curvature_step=curvature_step,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            schedule_free_momentum=schedule_free_momentum,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def gradient_posterior(self, param: Tensor) -> CurvaturePosterior:
        """The posterior over ``param``'s true gradient and curvature after its latest step.

        Returns:
            :class:`CurvaturePosterior` (the plug-in variances at the current estimates),
            new tensors in the state dtype (complex for a complex parameter: real and
            imaginary parts are independent coordinates).

        Raises:
            ValueError: ``param`` is not in this optimizer, or has not been stepped yet.
        """
        self._group_of(param, "gradient_posterior")
        state = self._stepped_state(param, "gradient_posterior")

        def real(t: Tensor) -> Tensor:
            return torch.view_as_real(t) if torch.is_complex(t) else t

        def back(t: Tensor) -> Tensor:
            return torch.view_as_complex(t.contiguous()) if torch.is_complex(param) else t

        r = real(state["noise_variance"])
        return CurvaturePosterior(
            mean=state["gradient_mean"].clone(),
            variance=back(r * real(state["gradient_variance"])),
            curvature_mean=state["curvature_mean"].clone(),
            curvature_variance=back(r * real(state["curvature_variance"])),
            cross_covariance=back(r * real(state["cross_covariance"])),
            drift_variance=back(torch.exp(real(state["log_drift_to_noise"])) * r),
            curvature_drift_variance=back(
                torch.exp(real(state["log_curvature_drift_to_noise"])) * r
            ),
            noise_variance=back(r.clone()),
        )
