"""The optimizers under study, one declaration row each, with their posterior providers.

A row says how to build the optimizer, which learning rate it runs at on each task, and how to
read, per parameter, its *gradient posterior* (``posterior``: the four fields of
``vsgd_bayes.torch.GradientPosterior``: mean, drift_variance, noise_variance, momentum) and/or
its *gradient estimate* (``estimate``: the vector its step is built from, for the estimation-
error metric). A new optimizer with a ``gradient_posterior(p)`` method, e.g. a Kalman VSGD,
costs one row::

    CalibratedOptimizer("kalman-vsgd", "KalmanVSGD", lambda params, lr: KalmanVSGD(params, lr=lr),
                        VSGD_RATES, posterior=gradient_posterior_method)

Learning rates: on digits-cnn and char-lm the rates ``vsgd-bayes bench`` chose on validation
(benchmarks/RESULTS.md; the paper start runs at the reference start's rate); on digits-mlp
lr 0.01 for the VSGD family (the rate of the recorded reference training run of this MLP) and
the usual 3e-3 / 0.1 for AdamW / SGD-momentum, not tuned. Kalman VSGD runs at the VSGD rates,
not tuned for it: its step is VSGD's mu/sqrt(mu^2 + sigma^2) with a different inference
(derivations/11_kalman_vsgd.md), so the same rate gives steps of the same size, and the two
inferences are compared along trajectories of the same rate. Calibration is measured along
these trajectories; it is not a contest of rates.

Kalman VSGD's posterior fits the metric's sigma as is (derived here): its ``gradient_posterior``
gives q = S k^2, r = S(1 - k) and momentum 1 - k, so the metric's sigma_t^2 = (1 - beta_t) r_t
= S k (1 - k) is the filter's posterior variance P = k r (11, eq:kalman-variances) and the
predictive variance sigma_t^2 + q_t = S k is the filter's predicted variance P^- of the next
true gradient. (k is the gain at the current lambda, the one the next step uses; mu_t was formed
with the previous lambda's gain, at most ``max_ratio_change`` away in ln lambda.)

Curvature Kalman VSGD's posterior is over (g_t, h_t) at the point where its latest mini-batch
gradient was taken, the previous point theta_(t-1); g* is taken at theta_t. Its prediction of
g* is therefore the step-following one (derived here, 15, eq:curvature-predict at the
displacement Delta = theta_t - theta_(t-1) the optimizer has just made): mean m_g + m_h Delta
and variance r (P_gg + 2 Delta P_gh + Delta^2 P_hh) + q_g. :func:`curvature_posterior` hands
the metric exactly that: mean m_g + m_h Delta, drift q_g, noise r and the momentum
1 - (P_gg + 2 Delta P_gh + Delta^2 P_hh), so that the metric's sigma^2 = (1 - beta) r is the
variance of g at theta_t before its drift and sigma^2 + q the predictive variance. (The
"momentum" of this row is not a weight of an average and may fall below 0 where the curvature
is poorly known; the drift metric compares q_g, the drift left after the curvature's share,
with the total change of g*, which the curvature's share inflates.)

Kronecker VSGD's posterior is Gaussian and diagonal in the basis Q = L (x) R (derived here, 16,
eq:kronecker-local), so each coordinate's marginal in the parameter's own coordinates is
Gaussian with the variance diag(Q diag(v~) Q^T) = (L o L) v~ (R o R)^T of the basis variance v~.
:func:`kronecker_posterior` hands the metric these exact marginals: drift and noise variances
rotated back (as ``KroneckerVSGD.gradient_posterior`` gives them) and the momentum
1 - diag(Q diag(sigma~^2) Q^T) / r, with sigma~^2 = (1 - beta~) r~ the basis posterior
variance, so that the metric's sigma^2 = (1 - beta) r is the marginal posterior variance (the
rotated-back momentum of ``gradient_posterior`` would not give it: the diagonal of a product
is not the product of the diagonals).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CalibratedOptimizer",
    "CALIBRATED_OPTIMIZERS",
    "gradient_posterior_method",
    "constant_vsgd_posterior",
    "curvature_posterior",
    "kronecker_posterior",
    "adam_first_moment",
    "sgd_normalised_buffer",
    "optimizer_row",
]


@dataclass(frozen=True)
class CalibratedOptimizer:
    """One optimizer under study.

    Attributes:
        name: the command-line name.
        label: how tables and plots name it.
        build: ``build(params, lr)`` -> a torch optimizer.
        learning_rates: task name -> lr.
        posterior: ``posterior(optimizer, param)`` -> an object with fields mean,
            drift_variance, noise_variance, momentum (tensors shaped like ``param``); None
            for optimizers without a gradient posterior.
        estimate: ``estimate(optimizer, param, step)`` -> the gradient estimate its step uses;
            None: the posterior mean.
    """

    name: str
    label: str
    build: Callable[[Iterable[Tensor], float], torch.optim.Optimizer]
    learning_rates: dict[str, float]
    posterior: Callable[[torch.optim.Optimizer, Tensor], Any] | None = None
    estimate: Callable[[torch.optim.Optimizer, Tensor, int], Tensor] | None = None


def gradient_posterior_method(optimizer: torch.optim.Optimizer, param: Tensor) -> Any:
    """The optimizer's own ``gradient_posterior(param)`` (VSGD and any optimizer like it)."""
    return optimizer.gradient_posterior(param)


def constant_vsgd_posterior(optimizer: torch.optim.Optimizer, param: Tensor) -> Any:
    """ConstantVSGD's posterior from its state (derived from its model, see ``constant.py``):
    one precision w with E[w] = a/b; drift variance b/a, noise variance K_g b/a, momentum
    K_g/(1 + K_g), with a = a_0 + 1 after the first step."""
    from vsgd_bayes.hyperparameters import constant_posterior_shape
    from vsgd_bayes.torch import GradientPosterior

    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    state = optimizer.state[param]
    ratio = float(group["variance_ratio"])
    drift_variance = state["rate"] / constant_posterior_shape(group["prior_strength"],
                                                              group["init"])
    return GradientPosterior(
        mean=state["gradient_mean"].clone(),
        drift_variance=drift_variance,
        noise_variance=ratio * drift_variance,
        momentum=torch.full_like(drift_variance, ratio / (1.0 + ratio)),
    )


def curvature_posterior(optimizer: torch.optim.Optimizer, param: Tensor) -> Any:
    """Curvature Kalman VSGD's prediction of the true gradient at ``param``'s current value
    (module docstring), as the metric's four fields."""
    from vsgd_bayes.torch import GradientPosterior

    posterior = optimizer.gradient_posterior(param)
    displacement = param.detach().to(posterior.mean.dtype) - optimizer.state[param][
        "previous_point"
    ]
    # Var(g at theta_t | g_hat_(1:t)) before the drift, in the gradient's units.
    moved_variance = (posterior.variance + 2.0 * displacement * posterior.cross_covariance
                      + displacement * displacement * posterior.curvature_variance)
    return GradientPosterior(
        mean=posterior.mean + posterior.curvature_mean * displacement,
        drift_variance=posterior.drift_variance,
        noise_variance=posterior.noise_variance,
        momentum=1.0 - moved_variance / posterior.noise_variance,
    )


def kronecker_posterior(optimizer: torch.optim.Optimizer, param: Tensor) -> Any:
    """Kronecker VSGD's marginal posterior of each coordinate of ``param`` (module docstring),
    as the metric's four fields; a real parameter."""
    from vsgd_bayes.hyperparameters import posterior_shape
    from vsgd_bayes.torch import GradientPosterior

    posterior = optimizer.gradient_posterior(param)
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    state = optimizer.state[param]
    drift_rate, noise_rate = state["drift_rate"], state["noise_rate"]
    # sigma~^2 = (1 - beta~) r~ = b~_g / (b~_g + b~_ghat) * b~_ghat / a, in the basis
    basis_variance = (drift_rate * noise_rate / (drift_rate + noise_rate)
                      / posterior_shape(group["prior_strength"], group["init"]))
    row_basis, col_basis = state["row_basis"], state["col_basis"]
    if row_basis.numel():
        basis_variance = row_basis.square() @ basis_variance
    if col_basis.numel():
        basis_variance = basis_variance @ col_basis.square().t()
    return GradientPosterior(
        mean=posterior.mean,
        drift_variance=posterior.drift_variance,
        noise_variance=posterior.noise_variance,
        momentum=1.0 - basis_variance / posterior.noise_variance,
    )


def adam_first_moment(optimizer: torch.optim.Optimizer, param: Tensor, step: int) -> Tensor:
    """Adam(W)'s bias-corrected first moment m_t / (1 - beta_1^t)."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    beta1 = group["betas"][0]
    return optimizer.state[param]["exp_avg"] / (1.0 - beta1**step)


def sgd_normalised_buffer(optimizer: torch.optim.Optimizer, param: Tensor, step: int) -> Tensor:
    """SGD-momentum's buffer divided by its weights' sum: torch keeps buf_1 = ĝ_1 and
    buf_t = m buf_{t-1} + ĝ_t (dampening 0), whose weights sum to (1 - m^t)/(1 - m)."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    momentum = group["momentum"]
    if group["dampening"] != 0 or group["nesterov"] or group["weight_decay"] != 0:
        raise ValueError("sgd_normalised_buffer: needs dampening 0, no Nesterov, no weight decay")
    return optimizer.state[param]["momentum_buffer"] * ((1.0 - momentum) / (1.0 - momentum**step))


def _vsgd(init: str, **options) -> Callable[[Iterable[Tensor], float], torch.optim.Optimizer]:
    def build(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
        from vsgd_bayes.torch import VSGD

        return VSGD(params, lr=lr, init=init, **options)

    return build


def _constant_vsgd(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    from vsgd_bayes.torch import ConstantVSGD

    return ConstantVSGD(params, lr=lr)


def _kalman_vsgd(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    from vsgd_bayes.torch import KalmanVSGD

    return KalmanVSGD(params, lr=lr)


def _curvature_kalman_vsgd(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    from vsgd_bayes.torch import CurvatureKalmanVSGD

    return CurvatureKalmanVSGD(params, lr=lr)


def _factored_vsgd(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    from vsgd_bayes.torch import FactoredVSGD

    return FactoredVSGD(params, lr=lr)


def _kronecker_vsgd(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    from vsgd_bayes.torch import KroneckerVSGD

    return KroneckerVSGD(params, lr=lr)


def _adamw(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _sgd(params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


VSGD_RATES = {"digits-mlp": 0.01, "digits-cnn": 0.003, "char-lm": 0.03}

#: The optimizers under study, in table order.
CALIBRATED_OPTIMIZERS: tuple[CalibratedOptimizer, ...] = (
    CalibratedOptimizer("vsgd", "VSGD (reference start)", _vsgd("reference"), VSGD_RATES,
                        posterior=gradient_posterior_method),
    CalibratedOptimizer("vsgd-paper", "VSGD (paper start)", _vsgd("paper"), VSGD_RATES,
                        posterior=gradient_posterior_method),
    CalibratedOptimizer("constant-vsgd", "ConstantVSGD", _constant_vsgd, VSGD_RATES,
                        posterior=constant_vsgd_posterior),
    CalibratedOptimizer("kalman-vsgd", "KalmanVSGD", _kalman_vsgd, VSGD_RATES,
                        posterior=gradient_posterior_method),
    # VSGD's step and prior with shared precisions: VSGD's rates, beside VSGD's posterior.
    CalibratedOptimizer("factored-vsgd", "FactoredVSGD", _factored_vsgd, VSGD_RATES,
                        posterior=gradient_posterior_method),
    # The step-following model (issue 19): VSGD's step and rates, a different gradient model.
    CalibratedOptimizer("curvature-kalman-vsgd", "CurvatureKalmanVSGD", _curvature_kalman_vsgd,
                        VSGD_RATES, posterior=curvature_posterior),
    # Noise diagonal in a learned Kronecker eigenbasis (issue 21): VSGD's step and rates.
    CalibratedOptimizer("kronecker-vsgd", "KroneckerVSGD", _kronecker_vsgd, VSGD_RATES,
                        posterior=kronecker_posterior),
    CalibratedOptimizer("adamw", "AdamW", _adamw,
                        {"digits-mlp": 0.003, "digits-cnn": 0.01, "char-lm": 0.01},
                        estimate=adam_first_moment),
    CalibratedOptimizer("sgd", "SGD-momentum", _sgd,
                        {"digits-mlp": 0.1, "digits-cnn": 0.1, "char-lm": 0.3},
                        estimate=sgd_normalised_buffer),
)


def optimizer_row(name: str) -> CalibratedOptimizer:
    """The row called ``name``; ``ValueError`` naming the choices otherwise."""
    for row in CALIBRATED_OPTIMIZERS:
        if row.name == name:
            return row
    names = tuple(row.name for row in CALIBRATED_OPTIMIZERS)
    raise ValueError(f"Invalid optimizer: {name!r} (must be one of {names})")
