r"""The production PyTorch VSGD optimizer.

Symbols (paper -> argument): eta = ``lr``, K_g = ``variance_ratio``, gamma = ``prior_strength``,
kappa_1, kappa_2 = ``kappa1``, ``kappa2``, lambda = ``weight_decay``, epsilon = ``eps``. The
per-parameter state holds ``step`` (t), ``gradient_mean`` (mu), ``drift_rate`` (b_g) and
``noise_rate`` (b_ghat): the field names of :class:`vsgd_bayes.rules.vsgd.VSGDState`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._base import VSGDFamilyOptimizer
from vsgd_bayes.torch._common import filled_like, state_dtype
from vsgd_bayes.torch._functional import vsgd

__all__ = ["VSGD", "GradientPosterior", "state_dtype"]


class GradientPosterior(NamedTuple):
    """The posterior over one parameter's true gradient, after its latest step.

    Attributes:
        mean: mu_t, the posterior mean of the true gradient.
        drift_variance: b_g / a, the expected variance 1/E[w_g] of the true gradient's drift.
        noise_variance: b_ghat / a, the expected variance 1/E[w_ghat] of the mini-batch noise.
        momentum: beta_1 = b_ghat / (b_g + b_ghat), the weight mu_t gets at the next step.
    """

    mean: Tensor
    drift_variance: Tensor
    noise_variance: Tensor
    momentum: Tensor


def _prior_rate(index: int):
    # b_{0,g} = gamma (index 0) or b_{0,g_hat} = K_g gamma (index 1), from hp.prior_rates
    def init(param: Tensor, group: dict[str, Any], dtype: torch.dtype) -> Tensor:
        rates = hp.prior_rates(group["prior_strength"], group["variance_ratio"], group["init"])
        return filled_like(param, rates[index], dtype)

    return init


class VSGD(VSGDFamilyOptimizer):
    r"""Variational Stochastic Gradient Descent (Chen, Kuzina, Esmaeili & Tomczak, 2024).

    Each coordinate's mini-batch gradient g_hat_t is treated as a noisy observation of the true
    gradient g_t; VSGD keeps a Gaussian posterior N(mu_t, sigma_t^2) over g_t and Gamma
    posteriors over the precisions of its drift (rate b_g) and of the mini-batch noise (rate
    b_ghat), updates them by stochastic variational inference, and steps with the posterior
    mean over its root second moment. Symbols: eta = ``lr``, K_g = ``variance_ratio`` (the prior
    ratio of noise to drift variance), gamma = ``prior_strength``, kappa_i = ``kappa1``,
    ``kappa2`` (rho_{t,i} = t^(-kappa_i)), lambda = ``weight_decay``, epsilon = ``eps``; a is the
    Gamma shape (a_0 at t = 1, a_0 + 1/2 afterwards; a_0 = gamma for ``init="paper"``,
    gamma + 5e-5 for ``init="reference"``, the authors' code, whose constants 2a_0, 2 gamma and
    2 K_g gamma are rounded to float32 as that code does).

    .. math::

        \textbf{input}: \theta_0, \text{ state } \mu_0 = 0,\ b_g = \gamma,\ b_{\hat g} = K_g\gamma,
            \text{ per parameter its own step count } t \\
        \sigma_t^2 = (a/b_g + a/b_{\hat g})^{-1},\quad
        \mu_t = \sigma_t^2\,(a\,\mu_{t-1}/b_g + a\,\hat g_t/b_{\hat g}) \\
        b'_g = \gamma + \tfrac12(\sigma_t^2 + (\mu_t-\mu_{t-1})^2),\quad
        b'_{\hat g} = K_g\gamma + \tfrac12(\sigma_t^2 + (\mu_t-\hat g_t)^2) \\
        b_g \leftarrow (1-\rho_{t,1})b_g + \rho_{t,1}b'_g,\quad
        b_{\hat g} \leftarrow (1-\rho_{t,2})b_{\hat g} + \rho_{t,2}b'_{\hat g} \\
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,\mu_t / (\sqrt{\mu_t^2+\sigma_t^2}+\epsilon)

    Weight decay is decoupled (AdamW-style); ``maximize`` uses g_hat = -grad. A parameter whose
    gradient is ``None`` is skipped (its step count does not advance), so a parameter that first
    gets a gradient late starts at t = 1. Complex parameters are treated as independent real
    and imaginary coordinates. State dtype = promote(param dtype, float32).

    Args:
        params: iterable of parameters or of param-group dicts (every hyperparameter below may
            be set per group).
        lr: learning rate eta (float or 0-dim tensor), read at every step. Default 0.1, the
            authors' code's, kept for fidelity; it is large for many problems. On the
            package's CPU benchmarks (``benchmarks/tasks_cpu/results.json``) the rates chosen
            on validation from {0.003, 0.01, 0.03, 0.1} were 0.003 (digits CNN and VAE) and
            0.03 (character LM); at 0.1 the VAE and the LM diverged. On a noiseless problem
            lr = 0.1 can overshoot and stay high (``tests/test_torch_vsgd.py``, the toy);
            start near AdamW's rate, e.g. 0.01.
        variance_ratio: K_g > 0. Default 30.
        prior_strength: gamma > 0. Default 1e-8.
        kappa1, kappa2: exponents in (0.5, 1]. Defaults 0.81, 0.9.
        weight_decay: decoupled weight decay lambda >= 0. Default 0.
        eps: epsilon >= 0 in the denominator. Default 1e-8.
        init: ``"reference"`` (the authors' code, default) or ``"paper"`` (Algorithm 1).
        maximize: maximise the objective instead. Default False.
        foreach: use the ``torch._foreach`` path; None picks it when possible.
        fused: use the fused kernel (C++ on CPU, Triton on CUDA). With
            ``foreach=None, fused=None`` the fused path is picked on CUDA when Triton is
            importable, and on CPU when the C++ kernel has been built: ``make setup`` builds
            it, or ``python -m vsgd_bayes.torch.build`` (once per machine, tens of seconds;
            about 4x faster steps than foreach on CPU). A default never compiles; an explicit
            ``fused=True`` builds the kernel at the first step if needed. ``foreach=True``
            with ``fused=True`` is a ValueError.
        schedule_free_momentum: beta in (0, 1): Schedule-Free averaging, with ``eval()`` and
            ``train()`` (see :class:`~vsgd_bayes.torch._base.VSGDFamilyOptimizer`). Default
            None: off.

    Raises:
        ValueError: an invalid hyperparameter (named, with its value), at construction, at
            ``add_param_group`` and at every step (before anything is modified).
        TypeError: a non-bool ``maximize``/``foreach``/``fused``.
        RuntimeError: at a step in eval mode (with ``schedule_free_momentum``),
            a sparse gradient, or ``fused=True`` on a device without the
            fused kernel (nothing is modified).

    Example:
        >>> import torch
        >>> from vsgd_bayes.torch import VSGD
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = VSGD(model.parameters(), lr=0.01)
        >>> loss = model(torch.ones(2, 3)).pow(2).mean()
        >>> loss.backward()
        >>> opt.step()
        >>> sorted(opt.state[model.weight])
        ['drift_rate', 'gradient_mean', 'noise_rate', 'step']

    References:
        Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep
        Neural Networks", arXiv 2404.06549 (2024); TMLR (2025).
    """

    state_fields = {
        "gradient_mean": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "drift_rate": _prior_rate(0),
        "noise_rate": _prior_rate(1),
    }
    hyperparameters = (
        "lr", "variance_ratio", "prior_strength", "kappa1", "kappa2", "weight_decay", "eps",
        "init",
    )
    paths = ("single_tensor", "foreach", "fused")
    functional = staticmethod(vsgd)

    def __init__(
        self,
        params: Iterable[Tensor | dict[str, Any]],
        lr: float | Tensor = hp.DEFAULTS["lr"],
        *,
        variance_ratio: float = hp.DEFAULTS["variance_ratio"],
        prior_strength: float = hp.DEFAULTS["prior_strength"],
        kappa1: float = hp.DEFAULTS["kappa1"],
        kappa2: float = hp.DEFAULTS["kappa2"],
        weight_decay: float = hp.DEFAULTS["weight_decay"],
        eps: float = hp.DEFAULTS["eps"],
        init: str = hp.DEFAULTS["init"],
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        schedule_free_momentum: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            weight_decay=weight_decay,
            eps=eps,
            init=init,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            schedule_free_momentum=schedule_free_momentum,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def gradient_posterior(self, param: Tensor) -> GradientPosterior:
        """The posterior over ``param``'s true gradient after its latest step.

        Returns:
            :class:`GradientPosterior` (mu_t, b_g/a, b_ghat/a, b_ghat/(b_g + b_ghat)), new
            tensors in the state dtype, with a = a_0 + 1/2 the posterior shape of ``param``'s
            group. For a complex parameter each field is complex, its real and imaginary parts
            being those of the real and imaginary coordinates.

        Raises:
            ValueError: ``param`` is not in this optimizer, or has not been stepped yet.
        """
        group = self._group_of(param, "gradient_posterior")
        state = self._stepped_state(param, "gradient_posterior")
        shape = hp.posterior_shape(group["prior_strength"], group["init"])

        def real(t: Tensor) -> Tensor:
            return torch.view_as_real(t) if torch.is_complex(t) else t

        def back(t: Tensor) -> Tensor:
            return torch.view_as_complex(t) if torch.is_complex(param) else t

        drift_rate, noise_rate = real(state["drift_rate"]), real(state["noise_rate"])
        return GradientPosterior(
            mean=state["gradient_mean"].clone(),
            drift_variance=back(drift_rate / shape),
            noise_variance=back(noise_rate / shape),
            momentum=back(noise_rate / (drift_rate + noise_rate)),
        )
