r"""Constant VSGD for PyTorch: VSGD with the noise-to-drift variance ratio held at K_g.

Symbols (paper -> argument): eta = ``lr``, K_g = ``variance_ratio``, gamma = ``prior_strength``,
kappa = ``kappa``, lambda = ``weight_decay``, epsilon = ``eps``. State per parameter: ``step``,
``gradient_mean`` (mu) and ``rate`` (b, the rate of the one shared precision w), the fields of
:class:`vsgd_bayes.rules.constant.ConstantVSGDState`. This is a port of
:mod:`vsgd_bayes.rules.constant` (derivation: ``derivations/07_constant_vsgd.md``).

Relations to Adam, SGD with momentum, AdamNC and AMSGrad (derived; tested in
``tests/test_torch_constant.py``). With beta = K_g / (1 + K_g) and k = 1 - beta:

* mu_t = beta mu_{t-1} + (1 - beta) g_hat_t, mu_0 = 0: exactly Adam's first moment m_t with
  beta_1 = beta (no bias correction), whatever the rates do. K_g = 9 <-> beta_1 = 0.9;
  VSGD's default K_g = 30 <-> beta_1 ~= 0.968.
* SGD with momentum and dampening d = beta keeps buf_t = beta buf_{t-1} + (1 - beta) g_hat_t,
  the same recursion, so buf_t = mu_t whenever the two start equal. torch initialises the
  buffer with buf_1 = g_hat_1 (no damping at the first step) while mu_1 = (1 - beta) g_hat_1;
  the two agree from the first step on iff g_hat_1 = 0, and otherwise differ by
  beta^(t-1) beta g_hat_1 at step t.
* The step divides mu_t by sqrt(mu_t^2 + sigma_t^2): mu^2 + sigma^2 = E[g_t^2] is the
  posterior second moment of the gradient, VSGD's counterpart of Adam's v_t; b is an average
  of squared residuals blended with rho_t = t^(-kappa), which plays 1 - beta_{2,t}: a
  time-varying beta_{2,t} = 1 - t^(-kappa) -> 1, the AdamNC / AMSGrad-style schedule
  (Reddi, Kale & Kumar 2018) under which such averages converge.

Default ``variance_ratio = 9`` (:data:`vsgd_bayes.hyperparameters.CONSTANT_DEFAULTS`, shared
with :func:`vsgd_bayes.rules.constant.step`): Constant VSGD's momentum is fixed at
K_g / (1 + K_g) (unlike VSGD, whose momentum b_ghat / (b_g + b_ghat) adapts), so the default
is the value whose momentum is Adam's and SGD-momentum's well-tried beta_1 = 0.9; VSGD's
prior ratio 30 would freeze a heavier 0.968.

Paths: ``_constant_single_tensor.py`` (a port of the rule) and ``_constant_foreach.py``, picked
by :func:`vsgd_bayes.torch._functional.run_path`; there is no fused kernel.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._base import VSGDFamilyOptimizer
from vsgd_bayes.torch._common import filled_like
from vsgd_bayes.torch._constant_foreach import foreach_constant_vsgd
from vsgd_bayes.torch._constant_single_tensor import single_tensor_constant_vsgd
from vsgd_bayes.torch._functional import run_path

__all__ = ["ConstantVSGD", "constant_vsgd", "DEFAULT_VARIANCE_RATIO"]

#: K_g = 9 <-> momentum beta = K_g / (1 + K_g) = 0.9, Adam's default beta_1 (see module doc).
DEFAULT_VARIANCE_RATIO = hp.CONSTANT_DEFAULTS["variance_ratio"]

_PATHS = {"single_tensor": single_tensor_constant_vsgd, "foreach": foreach_constant_vsgd}


def constant_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    rates: list[Tensor],
    steps: list[Tensor],
    *,
    foreach: bool | None = None,
    lr: float | Tensor,
    variance_ratio: float,
    prior_strength: float,
    kappa: float,
    weight_decay: float,
    eps: float,
    init: str,
    maximize: bool,
) -> None:
    """Functional Constant VSGD: one step on every parameter of the lists, in place.

    Complex tensors are viewed as real; ``foreach=None`` uses the foreach path when every
    parameter is a plain tensor or DTensor (see :class:`ConstantVSGD` for the arguments).
    """
    run_path(
        _PATHS,
        [params, grads, gradient_means, rates],
        steps,
        foreach=foreach,
        hyperparameters=dict(
            lr=lr,
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa=kappa,
            weight_decay=weight_decay,
            eps=eps,
            init=init,
            maximize=maximize,
        ),
    )


class ConstantVSGD(VSGDFamilyOptimizer):
    r"""Constant VSGD: VSGD with one precision per coordinate and a fixed variance ratio K_g.

    The mini-batch noise precision is tied to the drift precision, w_ghat = w / K_g, so the
    posterior mean is an exponential moving average with the constant momentum
    beta = K_g / (1 + K_g), and one Gamma rate b per coordinate tracks the gradient's scale.
    Symbols: eta = ``lr``, K_g = ``variance_ratio``, gamma = ``prior_strength``, kappa =
    ``kappa`` (rho_t = t^(-kappa)), lambda = ``weight_decay``, epsilon = ``eps``; shape a = a_0 at
    t = 1 and a_0 + 1 afterwards (a_0 as in :class:`~vsgd_bayes.torch.VSGD`).

    .. math::

        \mu_t = \beta\mu_{t-1} + (1-\beta)\hat g_t,\qquad
        \sigma_t^2 = \left(\tfrac{a}{b}(1 + 1/K_g)\right)^{-1} \\
        b' = \gamma + \tfrac12(\sigma_t^2 + (\mu_t-\mu_{t-1})^2)
            + \tfrac{1}{2K_g}(\sigma_t^2 + (\mu_t-\hat g_t)^2),\qquad
        b \leftarrow (1-\rho_t)b + \rho_t b' \\
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,\mu_t/(\sqrt{\mu_t^2+\sigma_t^2}+\epsilon)

    Relations (derived, see the module docstring): mu_t is Adam's m_t with beta_1 = beta and
    SGD-momentum's buffer with dampening beta; mu^2 + sigma^2 plays Adam's v_t and rho_t plays
    1 - beta_{2,t} with beta_{2,t} = 1 - t^(-kappa) -> 1 (AdamNC / AMSGrad-style).

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate eta (float or 0-dim tensor). Default 0.1.
        variance_ratio: K_g > 0. Default 9 (momentum 0.9, Adam's beta_1: the module docstring
            explains the choice).
        prior_strength: gamma > 0. Default 1e-8.
        kappa: exponent of rho_t in (0.5, 1]. Default 0.81.
        weight_decay: decoupled weight decay >= 0. Default 0.
        eps: epsilon >= 0. Default 1e-8.
        init: ``"reference"`` (a_0 = gamma + 5e-5, default) or ``"paper"`` (a_0 = gamma).
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
        >>> from vsgd_bayes.torch import ConstantVSGD
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = ConstantVSGD([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, -1.0])
        >>> opt.step()
        >>> opt.state[w]["gradient_mean"]  # (1 - 0.9) * g_hat_1
        tensor([ 0.1000, -0.1000])

    References:
        Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep
        Neural Networks", arXiv 2404.06549 (2024). Reddi, Kale & Kumar, "On the Convergence
        of Adam and Beyond", ICLR 2018 (AMSGrad, AdamNC).
    """

    state_fields = {
        "gradient_mean": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        # b_0 = gamma, the prior rate of the one precision w
        "rate": lambda param, group, dtype: filled_like(
            param, float(group["prior_strength"]), dtype
        ),
    }
    hyperparameters = (
        "lr", "variance_ratio", "prior_strength", "kappa", "weight_decay", "eps", "init"
    )
    paths = ("single_tensor", "foreach")
    functional = staticmethod(constant_vsgd)

    def __init__(
        self,
        params: Iterable[Tensor | dict[str, Any]],
        lr: float | Tensor = hp.CONSTANT_DEFAULTS["lr"],
        *,
        variance_ratio: float = hp.CONSTANT_DEFAULTS["variance_ratio"],
        prior_strength: float = hp.CONSTANT_DEFAULTS["prior_strength"],
        kappa: float = hp.CONSTANT_DEFAULTS["kappa"],
        weight_decay: float = hp.CONSTANT_DEFAULTS["weight_decay"],
        eps: float = hp.CONSTANT_DEFAULTS["eps"],
        init: str = hp.CONSTANT_DEFAULTS["init"],
        maximize: bool = False,
        foreach: bool | None = None,
        schedule_free_momentum: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa=kappa,
            weight_decay=weight_decay,
            eps=eps,
            init=init,
            maximize=maximize,
            foreach=foreach,
            schedule_free_momentum=schedule_free_momentum,
        )
        super().__init__(params, defaults)
