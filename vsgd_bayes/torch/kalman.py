r"""Kalman VSGD for PyTorch: VSGD's model, exact filtering of the true gradient, and recursive
maximum likelihood of its drift and noise variances (``derivations/11_kalman_vsgd.md``).

Symbols -> arguments: eta = ``lr``, lambda_0 = ``initial_drift_to_noise``, c =
``ratio_step_scale``, Delta = ``max_ratio_change``, kappa = ``kappa``, lambda_wd =
``weight_decay``, epsilon = ``eps``. State per parameter: ``step``, ``gradient_mean`` (mu),
``innovation_variance`` (S), ``log_drift_to_noise`` (phi = ln q/r), ``gain_sensitivity``
(s = d mu / dk): the fields of :class:`vsgd_bayes.rules.kalman.KalmanVSGDState`. A port of
:mod:`vsgd_bayes.rules.kalman` (``_kalman_single_tensor.py``) and a foreach path
(``_kalman_foreach.py``), picked by :func:`vsgd_bayes.torch._functional.run_path`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._base import VSGDFamilyOptimizer
from vsgd_bayes.torch._common import filled_like
from vsgd_bayes.torch._functional import run_path
from vsgd_bayes.torch._kalman_foreach import foreach_kalman_vsgd
from vsgd_bayes.torch._kalman_single_tensor import single_tensor_kalman_vsgd, steady_state_gain
from vsgd_bayes.torch.vsgd import GradientPosterior

__all__ = ["KalmanVSGD", "kalman_vsgd"]

_PATHS = {"single_tensor": single_tensor_kalman_vsgd, "foreach": foreach_kalman_vsgd}
_DEFAULTS = hp.KALMAN_DEFAULTS


def kalman_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    innovation_variances: list[Tensor],
    log_drift_to_noises: list[Tensor],
    gain_sensitivities: list[Tensor],
    steps: list[Tensor],
    *,
    foreach: bool | None = None,
    lr: float | Tensor,
    ratio_step_scale: float,
    max_ratio_change: float,
    kappa: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    step_variance: str = _DEFAULTS["step_variance"],
) -> None:
    """Functional Kalman VSGD: one step on every parameter of the lists, in place.

    Complex tensors are viewed as real; ``foreach=None`` uses the foreach path when every
    parameter is a plain tensor or DTensor (see :class:`KalmanVSGD` for the arguments).
    """
    run_path(
        _PATHS,
        [params, grads, gradient_means, innovation_variances, log_drift_to_noises,
         gain_sensitivities],
        steps,
        foreach=foreach,
        hyperparameters=dict(
            lr=lr,
            ratio_step_scale=ratio_step_scale,
            max_ratio_change=max_ratio_change,
            kappa=kappa,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
            step_variance=step_variance,
        ),
    )


def _step_group(*lists: list[Tensor], initial_drift_to_noise: float, **kwargs: Any) -> None:
    """:func:`kalman_vsgd` called by the base class with every group hyperparameter;
    lambda_0 only starts the state (``state_fields``), so it is not passed on."""
    del initial_drift_to_noise
    kalman_vsgd(*lists, **kwargs)


class KalmanVSGD(VSGDFamilyOptimizer):
    r"""Kalman VSGD: the Kalman filter of the true gradient with its drift-to-noise ratio
    learned by recursive maximum likelihood, and VSGD's step.

    Per coordinate the mini-batch gradient g_hat_t observes the true gradient g_t of a random
    walk (drift variance q) with noise (variance r). The filter runs at the steady-state
    Kalman gain k(lambda) of lambda = q / r; ln lambda follows Robbins-Monro natural-gradient
    steps on the innovations' likelihood (the prediction-error method) and S, the innovation
    variance, their running mean. Nothing depends on the gradients' absolute scale (with
    ``eps = 0``, the default, a loss scaled by any c > 0 gives the same trajectory).

    .. math::

        k = 2/(1 + \sqrt{1 + 4/\lambda}),\quad v_t = \hat g_t - \mu_{t-1} \\
        \ln\lambda \leftarrow \ln\lambda + \mathrm{clip}_{\pm\Delta}\big(\tfrac{c}{t}
            \tfrac{(2-k)^2}{1-k}\, v_t s_{t-1}/S_{t-1}\big) \\
        \mu_t = \mu_{t-1} + k v_t,\quad s_t = (1-k)s_{t-1} + v_t,\quad
        S_t = S_{t-1} + t^{-\kappa}(v_t^2 - S_{t-1}) \\
        \sigma_t^2 = S_t k (1-k),\quad
        \theta_t = \theta_{t-1}(1 - \eta\lambda_{wd})
            - \eta\,\mu_t / \max(\sqrt{\mu_t^2 + \sigma_t^2} + \epsilon, \mathrm{tiny})

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate eta (float or 0-dim tensor). Default 0.1.
        initial_drift_to_noise: lambda_0 in [1e-12, 1e12] (a ratio: no absolute scale).
            Default 1.
        ratio_step_scale: c >= 0 of the steps c / t on ln lambda. Default 2.
        max_ratio_change: Delta > 0, the largest change of ln lambda in a step. Default 1.
        kappa: exponent in (0.5, 1] of the innovation variance's weight t^-kappa. Default 0.8.
        weight_decay: decoupled weight decay >= 0. Default 0.
        eps: epsilon >= 0. Default 0 (any eps > 0 breaks the scale invariance).
        step_variance: the variance v in the step mu / sqrt(mu^2 + v): ``"predictive"``
            (S, the predictive variance of the next mini-batch gradient, as Adam's
            denominator; the default since 0.3.0) or ``"posterior"`` (sigma^2 = S k (1 - k),
            VSGD's choice and the default until 0.3.0). With ``"posterior"`` a gradient known
            precisely but small against its noise steps at almost lr: on 24,000 digits-vae
            steps at lr 0.001 the largest weight marched to 23 and the validation -ELBO to
            457, where ``"predictive"`` ended at its best, 23.87
            (``derivations/11_kalman_vsgd.md``, "Which variance belongs in the step").
        maximize: maximise instead. Default False.
        foreach: use the ``torch._foreach`` path; None picks it when possible.
        schedule_free_momentum: beta in (0, 1): Schedule-Free averaging, with ``eval()`` and
            ``train()`` (see :class:`~vsgd_bayes.torch._base.VSGDFamilyOptimizer`). Default
            None: off.

    Raises:
        ValueError: an invalid hyperparameter (named, with its value), at construction, at
            ``add_param_group`` and at every step (before anything is modified).
        TypeError: a non-bool ``maximize``/``foreach``.
        RuntimeError: at a step in eval mode (with ``schedule_free_momentum``),
            a sparse gradient (nothing is modified).

    Example:
        >>> import torch
        >>> from vsgd_bayes.torch import KalmanVSGD
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = KalmanVSGD([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, -1.0])
        >>> opt.step()
        >>> sorted(opt.state[w])
        ['gain_sensitivity', 'gradient_mean', 'innovation_variance', 'log_drift_to_noise', 'step']

    References:
        Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep
        Neural Networks", arXiv 2404.06549 (2024) (the model and the step). Ljung, "Analysis
        of recursive stochastic algorithms", IEEE TAC 22(4), 1977 (recursive prediction-error
        estimation).
    """

    state_fields = {
        "gradient_mean": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "innovation_variance": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "log_drift_to_noise": lambda param, group, dtype: filled_like(
            param, math.log(float(group["initial_drift_to_noise"])), dtype
        ),
        "gain_sensitivity": lambda param, group, dtype: filled_like(param, 0.0, dtype),
    }
    hyperparameters = (
        "lr", "initial_drift_to_noise", "ratio_step_scale", "max_ratio_change", "kappa",
        "weight_decay", "eps", "step_variance",
    )
    paths = ("single_tensor", "foreach")
    functional = staticmethod(_step_group)

    def __init__(
        self,
        params: Iterable[Tensor | dict[str, Any]],
        lr: float | Tensor = _DEFAULTS["lr"],
        *,
        initial_drift_to_noise: float = _DEFAULTS["initial_drift_to_noise"],
        ratio_step_scale: float = _DEFAULTS["ratio_step_scale"],
        max_ratio_change: float = _DEFAULTS["max_ratio_change"],
        kappa: float = _DEFAULTS["kappa"],
        weight_decay: float = _DEFAULTS["weight_decay"],
        eps: float = _DEFAULTS["eps"],
        step_variance: str = _DEFAULTS["step_variance"],
        maximize: bool = False,
        foreach: bool | None = None,
        schedule_free_momentum: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            initial_drift_to_noise=initial_drift_to_noise,
            ratio_step_scale=ratio_step_scale,
            max_ratio_change=max_ratio_change,
            kappa=kappa,
            weight_decay=weight_decay,
            eps=eps,
            step_variance=step_variance,
            maximize=maximize,
            foreach=foreach,
            schedule_free_momentum=schedule_free_momentum,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def gradient_posterior(self, param: Tensor) -> GradientPosterior:
        """The posterior over ``param``'s true gradient after its latest step.

        Returns:
            :class:`~vsgd_bayes.torch.GradientPosterior` with ``mean`` mu_t, ``drift_variance``
            q = S k^2, ``noise_variance`` r = S (1 - k) (the maximum-likelihood plug-in
            estimates) and ``momentum`` 1 - k, the weight mu_t gets at the next step, at the
            current lambda; new tensors in the state dtype (complex for a complex parameter).

        Raises:
            ValueError: ``param`` is not in this optimizer, or has not been stepped yet.
        """
        self._group_of(param, "gradient_posterior")
        state = self._stepped_state(param, "gradient_posterior")

        def real(t: Tensor) -> Tensor:
            return torch.view_as_real(t) if torch.is_complex(t) else t

        def back(t: Tensor) -> Tensor:
            return torch.view_as_complex(t) if torch.is_complex(param) else t

        gain, complement = steady_state_gain(real(state["log_drift_to_noise"]))
        variance = real(state["innovation_variance"])
        return GradientPosterior(
            mean=state["gradient_mean"].clone(),
            drift_variance=back(variance * gain * gain),
            noise_variance=back(variance * complement),
            momentum=back(complement.contiguous()),
        )
