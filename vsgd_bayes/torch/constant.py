r"""Constant VSGD for PyTorch: VSGD with the noise-to-drift variance ratio held at K_g.

Symbols (paper -> argument): eta = ``lr``, K_g = ``variance_ratio``, gamma = ``prior_strength``,
kappa = ``kappa``, lambda = ``weight_decay``, epsilon = ``eps``. State per parameter: ``step``,
``gradient_mean`` (mu) and ``rate`` (b, the rate of the one shared precision w), the fields of
:class:`vsgd_bayes.constant_rule.ConstantVSGDState`. This is a port of
:mod:`vsgd_bayes.constant_rule` (derivation: ``derivations/07_constant_vsgd.md``).

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

Default ``variance_ratio = 9``: Constant VSGD's momentum is fixed at K_g / (1 + K_g) (unlike
VSGD, whose momentum b_ghat / (b_g + b_ghat) adapts), so the default is the value whose
momentum is Adam's and SGD-momentum's well-tried beta_1 = 0.9; VSGD's prior ratio 30 would
freeze a heavier 0.968.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._foreach import increment_steps
from vsgd_bayes.torch._functional import _as_real, _local, default_foreach
from vsgd_bayes.torch._single_tensor import parameter_step_, svi_blend_
from vsgd_bayes.torch.vsgd import (
    _check_flag,
    _filled_like,
    _PromotedStateOptimizer,
    state_dtype,
)

__all__ = ["ConstantVSGD", "constant_vsgd", "DEFAULT_VARIANCE_RATIO"]

#: K_g = 9 <-> momentum beta = K_g / (1 + K_g) = 0.9, Adam's default beta_1 (see module doc).
DEFAULT_VARIANCE_RATIO = 9.0

_VALIDATED = ("lr", "variance_ratio", "prior_strength", "weight_decay", "eps", "init")


def _validate_group(group: Dict[str, Any]) -> None:
    hp.validate_hyperparameters(**{name: group[name] for name in _VALIDATED})
    hp.check_hyperparameter("kappa", group["kappa"])
    _check_flag("maximize", group["maximize"], allow_none=False)
    _check_flag("foreach", group["foreach"], allow_none=True)


def posterior_shape(prior_strength: float, init: str) -> float:
    """a = a_0 + 1: the shared precision sees two Gaussian factors per step."""
    return hp.prior_shape(prior_strength, init) + 1.0


def _step_scalars(step_t: Tensor, prior_strength: float, kappa: float, init: str, dtype):
    # (shape a, rho_t = t^-kappa); Python float64 eagerly, 0-dim tensors under torch.compile.
    if torch.compiler.is_compiling():
        step = step_t.to(dtype)
        shape = torch.where(
            step <= 1,
            torch.scalar_tensor(hp.prior_shape(prior_strength, init), dtype=dtype),
            torch.scalar_tensor(posterior_shape(prior_strength, init), dtype=dtype),
        )
    else:
        step = step_t.item()
        shape = (
            hp.prior_shape(prior_strength, init)
            if step <= 1
            else posterior_shape(prior_strength, init)
        )
    return shape, step ** (-kappa)


def _single_tensor_constant_vsgd(
    params, grads, gradient_means, rates, steps, *, lr, variance_ratio, prior_strength, kappa,
    weight_decay, eps, init, maximize,
) -> None:
    gain = 1.0 / (1.0 + variance_ratio)  # k = 1 / (1 + K_g)
    precision_factor = 1.0 + 1.0 / variance_ratio
    for param, grad, gradient_mean, rate, step_t in zip(
        params, grads, gradient_means, rates, steps
    ):
        dtype = gradient_mean.dtype
        step_t += 1
        shape, step_size = _step_scalars(step_t, prior_strength, kappa, init, dtype)
        gradient = grad.to(dtype)
        if maximize:
            gradient = -gradient
        gradient_mean_prev = gradient_mean.clone()
        # [constant-mean], [constant-variance]: precision E[w] (1 + 1/K_g), gain k.
        gradient_variance = (shape / rate).mul_(precision_factor).reciprocal_()
        new_gradient_mean = gradient_mean_prev + (gradient - gradient_mean_prev).mul_(gain)
        # [constant-target]: gamma + drift residual / 2 + noise residual / (2 K_g).
        drift_residual = (new_gradient_mean - gradient_mean_prev).square_().add_(gradient_variance)
        noise_residual = (new_gradient_mean - gradient).square_().add_(gradient_variance)
        rate_target = drift_residual.mul_(0.5).add_(prior_strength).add_(
            noise_residual.mul_(0.5).div_(variance_ratio)
        )
        svi_blend_(rate, rate_target, step_size)
        gradient_mean.copy_(new_gradient_mean)
        if param.dtype == dtype:
            parameter_step_(param, gradient_mean, gradient_variance, lr, weight_decay, eps)
        else:
            param_in_state_dtype = param.to(dtype)
            parameter_step_(
                param_in_state_dtype, gradient_mean, gradient_variance, lr, weight_decay, eps
            )
            param.copy_(param_in_state_dtype)


def _foreach_constant_vsgd(
    params, grads, gradient_means, rates, steps, *, lr, variance_ratio, prior_strength, kappa,
    weight_decay, eps, init, maximize,
) -> None:
    # The single-tensor arithmetic, operation for operation, on lists grouped by
    # (device, state dtype, parameter dtype) with torch._foreach_* kernels.
    groups = defaultdict(lambda: [[] for _ in range(5)])
    for tensors in zip(params, grads, gradient_means, rates, steps):
        key = (tensors[0].device, tensors[2].dtype, tensors[0].dtype)
        for column, tensor in zip(groups[key], tensors):
            column.append(tensor)
    gain = 1.0 / (1.0 + variance_ratio)
    precision_factor = 1.0 + 1.0 / variance_ratio
    for (_, dtype, param_dtype), (ps, gs, means, rts, sts) in groups.items():
        increment_steps(sts)
        scalars = [_step_scalars(s, prior_strength, kappa, init, dtype) for s in sts]
        shapes = [shape for shape, _ in scalars]
        step_sizes = [step_size for _, step_size in scalars]
        gradients = [g.to(dtype) for g in gs]
        if maximize:
            gradients = torch._foreach_neg(gradients)
        means_prev = torch._foreach_mul(means, 1.0)  # a copy of mu_{t-1}
        variances = torch._foreach_reciprocal(rts)
        torch._foreach_mul_(variances, shapes)
        torch._foreach_mul_(variances, precision_factor)
        torch._foreach_reciprocal_(variances)
        innovations = torch._foreach_sub(gradients, means_prev)
        torch._foreach_mul_(innovations, gain)
        new_means = torch._foreach_add(means_prev, innovations)
        drift_residuals = torch._foreach_sub(new_means, means_prev)
        torch._foreach_mul_(drift_residuals, drift_residuals)
        torch._foreach_add_(drift_residuals, variances)
        noise_residuals = torch._foreach_sub(new_means, gradients)
        torch._foreach_mul_(noise_residuals, noise_residuals)
        torch._foreach_add_(noise_residuals, variances)
        torch._foreach_mul_(drift_residuals, 0.5)
        torch._foreach_add_(drift_residuals, prior_strength)
        torch._foreach_mul_(noise_residuals, 0.5)
        torch._foreach_div_(noise_residuals, variance_ratio)
        targets = torch._foreach_add(drift_residuals, noise_residuals)
        torch._foreach_mul_(rts, [1.0 - r for r in step_sizes])
        torch._foreach_mul_(targets, step_sizes)
        torch._foreach_add_(rts, targets)
        torch._foreach_copy_(means, new_means)
        # parameter step: theta (1 - eta lambda) - eta mu / (sqrt(mu^2 + sigma^2) + eps)
        denominators = torch._foreach_mul(means, means)
        torch._foreach_add_(denominators, variances)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, eps)
        directions = torch._foreach_div(means, denominators)
        torch._foreach_mul_(directions, lr)
        work = ps if param_dtype == dtype else [p.to(dtype) for p in ps]
        if weight_decay != 0.0:
            torch._foreach_mul_(work, 1.0 - lr * weight_decay)
        torch._foreach_sub_(work, directions)
        if work is not ps:
            torch._foreach_copy_(ps, work)


def constant_vsgd(
    params: List[Tensor],
    grads: List[Tensor],
    gradient_means: List[Tensor],
    rates: List[Tensor],
    steps: List[Tensor],
    *,
    foreach: Optional[bool] = None,
    lr: Union[float, Tensor],
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
    if foreach is None:
        foreach = default_foreach(params) if not torch.jit.is_scripting() else False
    params, grads, gradient_means, rates = (
        _local(params), _local(grads), _local(gradient_means), _local(rates)
    )
    tensors = [_as_real(list(ts)) for ts in (params, grads, gradient_means, rates)]
    path = _foreach_constant_vsgd if foreach else _single_tensor_constant_vsgd
    path(
        *tensors,
        list(steps),
        lr=lr,
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa=kappa,
        weight_decay=weight_decay,
        eps=eps,
        init=init,
        maximize=maximize,
    )


class ConstantVSGD(_PromotedStateOptimizer):
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

    _validate_group = staticmethod(_validate_group)

    def __init__(
        self,
        params: Iterable[Union[Tensor, Dict[str, Any]]],
        lr: Union[float, Tensor] = hp.DEFAULTS["lr"],
        *,
        variance_ratio: float = DEFAULT_VARIANCE_RATIO,
        prior_strength: float = hp.DEFAULTS["prior_strength"],
        kappa: float = hp.DEFAULTS["kappa1"],
        weight_decay: float = hp.DEFAULTS["weight_decay"],
        eps: float = hp.DEFAULTS["eps"],
        init: str = hp.DEFAULTS["init"],
        maximize: bool = False,
        foreach: Optional[bool] = None,
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
        )
        _validate_group(defaults)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Take one Constant VSGD step on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group_index, group in enumerate(self.param_groups):  # check all before any change
            _validate_group(group)
            for param_index, param in enumerate(group["params"]):
                if param.grad is not None and param.grad.is_sparse:
                    raise TypeError(
                        f"ConstantVSGD does not support sparse gradients: parameter "
                        f"{param_index} of param group {group_index} has layout "
                        f"{param.grad.layout}"
                    )
        for group in self.param_groups:
            params, grads, gradient_means, rates, steps = [], [], [], [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if len(state) == 0:
                    dtype = state_dtype(param.dtype)
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["gradient_mean"] = torch.zeros_like(
                        param, dtype=dtype, memory_format=torch.preserve_format
                    )
                    state["rate"] = _filled_like(param, float(group["prior_strength"]), dtype)
                params.append(param)
                grads.append(param.grad)
                gradient_means.append(state["gradient_mean"])
                rates.append(state["rate"])
                steps.append(state["step"])
            if not params:
                continue
            constant_vsgd(
                params,
                grads,
                gradient_means,
                rates,
                steps,
                foreach=group["foreach"],
                lr=group["lr"],
                variance_ratio=group["variance_ratio"],
                prior_strength=group["prior_strength"],
                kappa=group["kappa"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                init=group["init"],
                maximize=group["maximize"],
            )
        return loss
