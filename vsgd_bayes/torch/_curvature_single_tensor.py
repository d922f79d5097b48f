r"""The single-tensor path of ``CurvatureKalmanVSGD``: a port of :mod:`vsgd_bayes.rules.curvature`.

Each function of the JAX rule has its counterpart here with the same name and the same
arithmetic in the same order, so that this path agrees with the rule to float64 rounding
(``tests/test_torch_curvature.py``). The functions are written with operators and the methods
that :class:`~vsgd_bayes.torch._tensor_list.TensorList` also has, so the foreach path
(``_curvature_foreach.py``) runs the very same functions on lists. Two departures from the
rule's layout, neither changing a value: the two rows of the tangents (d/d phi_g, d/d phi_h)
are advanced one after the other instead of stacked, and the Kalman gains are computed once
(:func:`gains`) and handed to both the filter's and the tangents' update (the rule recomputes
them inside ``update_sensitivities``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._kalman_single_tensor import kalman_step_scalars
from vsgd_bayes.torch._tensor_list import TensorList, minimum, where

__all__ = [
    "Moments",
    "CurvatureState",
    "single_tensor_curvature_kalman_vsgd",
    "posterior_update",
    "new_point",
    "record_point_",
]

_DEFAULTS = hp.CURVATURE_DEFAULTS


class Moments(NamedTuple):
    """m_g, m_h, P_gg, P_gh, P_hh (covariances in units of r), or their tangents."""

    gradient_mean: Any
    curvature_mean: Any
    gradient_variance: Any
    cross_covariance: Any
    curvature_variance: Any


class CurvatureState(NamedTuple):
    """One parameter's state (tensors), or a list's (TensorLists), the tangents by row."""

    moments: Moments
    noise_variance: Any
    log_drift_to_noise: Any
    log_curvature_drift_to_noise: Any
    #: (d moments / d phi_g, d moments / d phi_h)
    ratio_sensitivities: tuple[Moments, Moments]
    #: (R_g, R_h)
    ratio_information: tuple[Any, Any]
    previous_point: Any


def _tiny(x: Any) -> float:
    return torch.finfo(x.dtype).tiny


def predict(moments: Moments, displacement, drift_to_noise, curvature_drift_to_noise) -> Moments:
    """(m^-, P^-) [curvature-predict]; a drift ratio of 0.0 adds nothing (the tangents' rows)."""
    g, h, p_gg, p_gh, p_hh = moments
    return Moments(
        gradient_mean=g + h * displacement,
        curvature_mean=h,
        gradient_variance=p_gg + 2.0 * displacement * p_gh + displacement * displacement * p_hh
        + drift_to_noise,
        cross_covariance=p_gh + displacement * p_hh,
        curvature_variance=p_hh + curvature_drift_to_noise,
    )


def innovation(gradient, predicted: Moments):
    """(v_t, S~_t) [curvature-innovation]."""
    return gradient - predicted.gradient_mean, predicted.gradient_variance + 1.0


def gains(predicted: Moments, relative_innovation_variance):
    """(K_g, K_h) = P^-[:, g] / S~ [curvature-update], and whether the floor of P_hh acts."""
    gain_gradient = predicted.gradient_variance / relative_innovation_variance
    gain_curvature = predicted.cross_covariance / relative_innovation_variance
    curvature_variance = predicted.curvature_variance - gain_curvature * predicted.cross_covariance
    return gain_gradient, gain_curvature, curvature_variance


def filter_update(predicted: Moments, innovation_t, gain_gradient, gain_curvature,
                  unfloored_curvature_variance) -> Moments:
    """(m_t, P_t) [curvature-update], P_hh floored at 0."""
    return Moments(
        gradient_mean=predicted.gradient_mean + gain_gradient * innovation_t,
        curvature_mean=predicted.curvature_mean + gain_curvature * innovation_t,
        gradient_variance=gain_gradient,
        cross_covariance=gain_curvature,
        curvature_variance=unfloored_curvature_variance.clamp_min(0.0),
    )


def noise_variance_update(noise_variance_prev, innovation_t, relative_innovation_variance,
                          weight):
    """r_t [curvature-noise-variance]."""
    return noise_variance_prev + weight * (
        innovation_t * innovation_t / relative_innovation_variance - noise_variance_prev
    )


def update_sensitivities(predicted_tangents: Moments, predicted: Moments, innovation_t,
                         relative_innovation_variance, gain_gradient, gain_curvature,
                         unfloored_curvature_variance) -> Moments:
    """Tangents of [curvature-update] along one ratio [curvature-sensitivity]."""
    s = relative_innovation_variance
    d_gain_gradient = predicted_tangents.gradient_variance / (s * s)
    d_gain_curvature = (
        predicted_tangents.cross_covariance - gain_curvature * predicted_tangents.gradient_variance
    ) / s
    d_curvature_variance = (
        predicted_tangents.curvature_variance
        - d_gain_curvature * predicted.cross_covariance
        - gain_curvature * predicted_tangents.cross_covariance
    )
    return Moments(
        gradient_mean=(1.0 - gain_gradient) * predicted_tangents.gradient_mean
        + d_gain_gradient * innovation_t,
        curvature_mean=predicted_tangents.curvature_mean
        - gain_curvature * predicted_tangents.gradient_mean
        + d_gain_curvature * innovation_t,
        gradient_variance=d_gain_gradient,
        cross_covariance=d_gain_curvature,
        curvature_variance=where(unfloored_curvature_variance < 0.0, 0.0, d_curvature_variance),
    )


def ratio_score(predicted_tangents: Moments, innovation_t, relative_innovation_variance,
                noise_variance):
    """(score, information) along one ratio [curvature-ratio-score]."""
    scaled = (noise_variance * relative_innovation_variance).clamp_min(_tiny(noise_variance))
    mean_tangent = predicted_tangents.gradient_mean
    return innovation_t * mean_tangent / scaled, mean_tangent * mean_tangent / scaled


def information_update(information_prev, information_t, weight):
    """R_t [curvature-ratio-step]."""
    return information_prev + weight * (information_t - information_prev)


def ratio_step(log_ratio, score, information, step_size, max_ratio_change):
    """phi_j + clip(rho score_j / max(R_j, tiny)), within +-the bound [curvature-ratio-step]."""
    change = step_size * score / information.clamp_min(_tiny(information))
    change = change.clamp(-max_ratio_change, max_ratio_change)
    bound = hp.curvature.CURVATURE_LOG_RATIO_BOUND
    return (log_ratio + change).clamp(-bound, bound)


def step_variance_of(noise_variance, gradient_variance, drift_to_noise, step_variance: str):
    """[curvature-step-variance]: r (P_gg + lambda_g + 1) or r P_gg."""
    if step_variance == "predictive":
        return noise_variance * (gradient_variance + drift_to_noise + 1.0)
    return noise_variance * gradient_variance


def rate_of(gradient_mean, curvature_mean, lr, curvature_step: str):
    """[curvature-trust-region]: lr, or min(lr, abs(m_g) / m_h) where m_h > 0."""
    if curvature_step == "none":
        return lr
    newton = gradient_mean.abs() / curvature_mean.clamp_min(_tiny(curvature_mean))
    return where(curvature_mean > 0.0, minimum(newton, lr), lr)


def normalized_direction(gradient_mean, gradient_variance, eps: float):
    """clip(mu / max(sqrt(mu^2 + V) + eps, tiny), -1, 1) (``kalman_rule.normalized_direction``)."""
    denominator = (gradient_mean * gradient_mean + gradient_variance).sqrt() + eps
    return (gradient_mean / denominator.clamp_min(_tiny(gradient_mean))).clamp(-1.0, 1.0)


def posterior_update(gradient, point, state: CurvatureState, *, step_size, weight,
                     max_ratio_change: float, step_variance: str):
    """One step of the filter and the estimators (``rules.curvature.posterior_update``).

    Returns:
        (step_variance, new_state), new values (nothing is written).
    """
    displacement = point - state.previous_point
    drift_to_noise = state.log_drift_to_noise.exp()
    curvature_drift_to_noise = state.log_curvature_drift_to_noise.exp()
    predicted = predict(state.moments, displacement, drift_to_noise, curvature_drift_to_noise)
    innovation_t, relative_variance = innovation(gradient, predicted)
    noise_variance = noise_variance_update(state.noise_variance, innovation_t,
                                           relative_variance, weight)
    gain_gradient, gain_curvature, unfloored = gains(predicted, relative_variance)
    # The predict map is linear, so each tangent row is the same map applied to the tangents,
    # with the source d lambda_j / d phi_j = lambda_j in place of the drift ratios.
    sources = ((drift_to_noise, 0.0), (0.0, curvature_drift_to_noise))
    log_ratios = (state.log_drift_to_noise, state.log_curvature_drift_to_noise)
    new_log_ratios, new_information, new_tangents = [], [], []
    for tangents, (source_gg, source_hh), log_ratio, information_prev in zip(
        state.ratio_sensitivities, sources, log_ratios, state.ratio_information
    ):
        predicted_tangents = predict(tangents, displacement, source_gg, source_hh)
        score, information_t = ratio_score(predicted_tangents, innovation_t, relative_variance,
                                           noise_variance)
        information = information_update(information_prev, information_t, weight)
        new_information.append(information)
        new_log_ratios.append(ratio_step(log_ratio, score, information, step_size,
                                         max_ratio_change))
        new_tangents.append(update_sensitivities(
            predicted_tangents, predicted, innovation_t, relative_variance, gain_gradient,
            gain_curvature, unfloored,
        ))
    moments = filter_update(predicted, innovation_t, gain_gradient, gain_curvature, unfloored)
    new_state = CurvatureState(
        moments=moments,
        noise_variance=noise_variance,
        log_drift_to_noise=new_log_ratios[0],
        log_curvature_drift_to_noise=new_log_ratios[1],
        ratio_sensitivities=tuple(new_tangents),
        ratio_information=tuple(new_information),
        previous_point=point,
    )
    variance = step_variance_of(noise_variance, moments.gradient_variance,
                                new_log_ratios[0].exp(), step_variance)
    return variance, new_state


def new_point(point, state: CurvatureState, variance, *, lr, weight_decay: float, eps: float,
              curvature_step: str):
    """theta (1 - lr lambda_wd) - rate direction [parameter-step], [curvature-trust-region]."""
    rate = rate_of(state.moments.gradient_mean, state.moments.curvature_mean, lr,
                   curvature_step)
    decayed = point * (1.0 - lr * weight_decay)
    return decayed - rate * normalized_direction(state.moments.gradient_mean, variance, eps)


def write_(target: CurvatureState, source: CurvatureState) -> None:
    """Copy every field of ``source`` into the tensors of ``target``, except the previous
    point, which :func:`record_point_` has already written."""
    pairs = list(zip(target.moments, source.moments))
    pairs += [(target.noise_variance, source.noise_variance),
              (target.log_drift_to_noise, source.log_drift_to_noise),
              (target.log_curvature_drift_to_noise, source.log_curvature_drift_to_noise)]
    for old, new in zip(target.ratio_sensitivities, source.ratio_sensitivities):
        pairs += list(zip(old, new))
    pairs += list(zip(target.ratio_information, source.ratio_information))
    for old, new in pairs:
        old.copy_(new)


def record_point_(previous_point, param):
    """Write the point of this gradient (the parameter, in the state dtype) into the state's
    previous point, and return (the point before it, the state tensor now holding the point).

    The single-tensor path records every point before any parameter moves, and under
    torch.compile breaks the graph there: torch 2.13's inductor (CPU) miscompiled a copy of a
    parameter into another state tensor followed by a write to the parameter (after
    ``d = p - prev``, ``prev.copy_(p)``, ``p.copy_(new)`` it left ``prev`` equal to the new
    ``p``; measured on a 3-element tensor), so the displacement of the next step was 0, and
    recording first was not enough once the lists came through ``run_path``.
    """
    before = previous_point.clone() if isinstance(previous_point, Tensor) else TensorList(
        t.clone() for t in previous_point
    )
    previous_point.copy_(param)
    return before, previous_point


def state_of(gradient_mean, curvature_mean, gradient_variance, cross_covariance,
             curvature_variance, noise_variance, log_drift_to_noise,
             log_curvature_drift_to_noise, sensitivity_rows, information_rows,
             previous_point) -> CurvatureState:
    """A :class:`CurvatureState` from its fields; ``sensitivity_rows(j, i)`` gives the tangent
    of moment i along ratio j, ``information_rows(j)`` R_j."""
    return CurvatureState(
        moments=Moments(gradient_mean, curvature_mean, gradient_variance, cross_covariance,
                        curvature_variance),
        noise_variance=noise_variance,
        log_drift_to_noise=log_drift_to_noise,
        log_curvature_drift_to_noise=log_curvature_drift_to_noise,
        ratio_sensitivities=tuple(
            Moments(*(sensitivity_rows(j, i) for i in range(5))) for j in range(2)
        ),
        ratio_information=(information_rows(0), information_rows(1)),
        previous_point=previous_point,
    )


def single_tensor_curvature_kalman_vsgd(
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
    """One Curvature Kalman VSGD step on each parameter, one tensor at a time, in place.

    The step of :func:`vsgd_bayes.rules.curvature.step` with g_hat = -grad when ``maximize``,
    taken at the parameter's current value; state lists in the order of
    :class:`vsgd_bayes.rules.curvature.CurvatureKalmanVSGDState`; step counters advanced here.
    Real tensors only; arithmetic in the state dtype; gradients never modified; no validation
    (done by the optimizer before anything changes).
    """
    # Every point is recorded before any parameter moves, and under torch.compile the graph is
    # broken there (record_point_ says why).
    recorded = [record_point_(previous, param) for previous, param in zip(previous_points, params)]
    if torch.compiler.is_compiling():
        torch._dynamo.graph_break()
    for (param, grad, g, h, p_gg, p_gh, p_hh, r, phi_g, phi_h, sensitivities, information,
         (before, point), step_t) in zip(
        params, grads, gradient_means, curvature_means, gradient_variances, cross_covariances,
        curvature_variances, noise_variances, log_drift_to_noises,
        log_curvature_drift_to_noises, ratio_sensitivities, ratio_informations,
        recorded, steps,
    ):
        dtype = g.dtype
        step_t += 1
        step_size, weight = kalman_step_scalars(step_t, ratio_step_scale, kappa, dtype)
        gradient = grad.to(dtype)
        if maximize:
            gradient = -gradient
        lr_value = lr.to(dtype) if isinstance(lr, Tensor) else lr
        state = state_of(g, h, p_gg, p_gh, p_hh, r, phi_g, phi_h,
                         lambda j, i, s=sensitivities: s[j, i],
                         lambda j, s=information: s[j], before)
        variance, new_state = posterior_update(
            gradient, point, state, step_size=step_size, weight=weight,
            max_ratio_change=max_ratio_change, step_variance=step_variance,
        )
        write_(state, new_state)
        # computed in the state dtype; a 16-bit parameter is rounded once, here
        param.copy_(new_point(point, new_state, variance, lr=lr_value,
                              weight_decay=weight_decay, eps=eps, curvature_step=curvature_step))
