r"""The single-tensor path of ``KalmanVSGD``: a line-by-line port of :mod:`vsgd_bayes.rules.kalman`.

Each function of the JAX rule has its counterpart here with the same name and the same
arithmetic in the same order, so that this path agrees with the rule to float64 rounding
(``tests/test_torch_kalman.py``); the foreach path (``_kalman_foreach.py``) is tested against
this one. The scalars of a step (c / t, t^-kappa) are Python float64 numbers, except under
``torch.compile``, where they are computed from the step tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._common import step_in_state_dtype_

__all__ = ["single_tensor_kalman_vsgd", "kalman_step_scalars"]


def kalman_step_scalars(
    step_t: Tensor, ratio_step_scale: float, kappa: float, dtype: torch.dtype
) -> tuple[Any, Any]:
    """(c / t, t^-kappa) for the step count in ``step_t`` (already advanced)."""
    step = step_t.to(dtype) if torch.compiler.is_compiling() else step_t.item()
    return hp.ratio_step_size(step, ratio_step_scale), hp.averaging_weight(step, kappa)


def steady_state_gain(log_drift_to_noise: Tensor) -> tuple[Tensor, Tensor]:
    """(k, 1 - k) [kalman-steady-gain]: k = 2 / (1 + sqrt(1 + 4/lambda)), 1 - k = k^2/lambda."""
    inverse_ratio = torch.exp(-log_drift_to_noise)
    gain = 2.0 / (1.0 + torch.sqrt(1.0 + 4.0 * inverse_ratio))
    return gain, gain * gain * inverse_ratio


def ratio_score(innovation: Tensor, gain_sensitivity: Tensor, innovation_variance: Tensor):
    """v_t s_{t-1} / max(S_{t-1}, tiny) [kalman-ratio-score]."""
    tiny = torch.finfo(innovation_variance.dtype).tiny
    return innovation * gain_sensitivity / innovation_variance.clamp_min(tiny)


def ratio_step(
    log_drift_to_noise: Tensor,
    score: Tensor,
    gain: Tensor,
    complement: Tensor,
    step_size: Any,
    max_ratio_change: float,
) -> Tensor:
    """phi + clip(rho (2 - k)^2 / (1 - k) score), kept in +-LOG_RATIO_BOUND [kalman-ratio-step]."""
    change = step_size * (1.0 + complement) ** 2 / complement * score
    change = change.clamp(-max_ratio_change, max_ratio_change)
    return (log_drift_to_noise + change).clamp(-hp.LOG_RATIO_BOUND, hp.LOG_RATIO_BOUND)


def normalized_direction(gradient_mean: Tensor, gradient_variance: Tensor, eps: float):
    """clip(mu / max(sqrt(mu^2 + sigma^2) + eps, tiny), -1, 1) (0/0 read as 0; the clip
    bounds the step where mu^2 underflows: ``kalman_rule.normalized_direction``)."""
    tiny = torch.finfo(gradient_mean.dtype).tiny
    denominator = torch.sqrt(gradient_mean**2 + gradient_variance) + eps
    return (gradient_mean / denominator.clamp_min(tiny)).clamp_(-1.0, 1.0)


def parameter_step_(
    param: Tensor,
    gradient_mean: Tensor,
    gradient_variance: Tensor,
    lr: float | Tensor,
    weight_decay: float,
    eps: float,
) -> None:
    """In place theta <- theta (1 - eta lambda) - eta direction [parameter-step]."""
    if weight_decay != 0.0:  # multiplying by exactly 1.0 would change nothing
        param.mul_(1.0 - lr * weight_decay)
    param.sub_(normalized_direction(gradient_mean, gradient_variance, eps).mul_(lr))


def single_tensor_kalman_vsgd(
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
    """One Kalman VSGD step on each parameter, one tensor at a time, in place.

    The step of :func:`vsgd_bayes.rules.kalman.step` with g_hat = -grad when ``maximize``;
    state lists in the order of :class:`vsgd_bayes.rules.kalman.KalmanVSGDState`; step counters
    advanced here. Real tensors only; arithmetic in the state dtype; gradients never modified;
    no validation (done by the optimizer before anything changes).
    """
    for param, grad, mean, variance, log_ratio, sensitivity, step_t in zip(
        params, grads, gradient_means, innovation_variances, log_drift_to_noises,
        gain_sensitivities, steps,
    ):
        dtype = mean.dtype
        step_t += 1
        step_size, weight = kalman_step_scalars(step_t, ratio_step_scale, kappa, dtype)
        gradient = grad.to(dtype)
        if maximize:
            gradient = -gradient
        gain, complement = steady_state_gain(log_ratio)
        innovation = gradient - mean  # [kalman-innovation]
        score = ratio_score(innovation, sensitivity, variance)
        log_ratio.copy_(
            ratio_step(log_ratio, score, gain, complement, step_size, max_ratio_change)
        )
        mean.add_(gain * innovation)  # [kalman-mean]
        sensitivity.copy_(complement * sensitivity + innovation)  # [kalman-sensitivity]
        variance.add_(weight * (innovation**2 - variance))  # [kalman-innovation-variance]
        if step_variance == "predictive":  # [kalman-step-variance]: S
            gradient_variance = variance
        else:  # sigma^2 = S (1 - k) k [kalman-variances]
            gradient_variance = variance * complement * gain
        step_in_state_dtype_(
            param,
            dtype,
            lambda p: parameter_step_(p, mean, gradient_variance, lr, weight_decay, eps),
        )
