r"""The production PyTorch VSGD optimizer.

Symbols (paper -> argument): eta = ``lr``, K_g = ``variance_ratio``, gamma = ``prior_strength``,
kappa_1, kappa_2 = ``kappa1``, ``kappa2``, lambda = ``weight_decay``, epsilon = ``eps``. The
per-parameter state holds ``step`` (t), ``gradient_mean`` (mu), ``drift_rate`` (b_g) and
``noise_rate`` (b_ghat): the field names of :class:`vsgd_bayes.rule.VSGDState`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._functional import _fused_module, vsgd

__all__ = ["VSGD", "GradientPosterior", "state_dtype"]

#: Hyperparameters of a VSGD param group that :func:`validate_hyperparameters` checks.
_VALIDATED = (
    "lr", "variance_ratio", "prior_strength", "kappa1", "kappa2", "weight_decay", "eps", "init"
)


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """State and arithmetic dtype: the parameter's, but at least float32 (``rule.state_dtype``).

    The prior rates gamma ~ 1e-8 must not be rounded to 16-bit floats (float16 flushes them to
    zero, making the first step 0/0). Complex parameters keep a complex state of at least
    complex64 (its real and imaginary parts are independent coordinates).
    """
    return torch.promote_types(param_dtype, torch.float32)


def _filled_like(param: Tensor, value: float, dtype: torch.dtype) -> Tensor:
    """A state tensor like ``param`` filled with ``value``; for a complex parameter both the
    real and the imaginary coordinates get ``value`` (they are independent coordinates)."""
    tensor = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
    (torch.view_as_real(tensor) if tensor.is_complex() else tensor).fill_(value)
    return tensor


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


def _check_flag(name: str, value: Any, allow_none: bool) -> None:
    ok = isinstance(value, bool) or (allow_none and value is None)
    if not ok:
        kinds = "a bool or None" if allow_none else "a bool"
        raise TypeError(f"Invalid {name}: {value!r} (must be {kinds})")


def _validate_group(group: Dict[str, Any]) -> None:
    hp.validate_hyperparameters(**{name: group[name] for name in _VALIDATED})
    _check_flag("maximize", group["maximize"], allow_none=False)
    _check_flag("foreach", group["foreach"], allow_none=True)
    _check_flag("fused", group["fused"], allow_none=True)
    if group["foreach"] and group["fused"]:
        raise ValueError("foreach=True and fused=True are mutually exclusive; choose one path")


class _PromotedStateOptimizer(Optimizer):
    """What VSGD and ConstantVSGD share as torch optimizers: every param group is validated
    when it is added, and loaded state stays in promote(param dtype, float32).

    Subclasses set ``_validate_group`` (a function of a group dict that raises on bad values).
    """

    _validate_group: Callable[[Dict[str, Any]], None]

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a param group after validating its hyperparameters (merged with the defaults)."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        type(self)._validate_group(merged)
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict, keeping the state in promote(param dtype, float32).

        ``torch.optim.Optimizer.load_state_dict`` casts floating state to the parameter's
        dtype, which would round the float32 state of 16-bit parameters to 16 bits (and
        gamma ~ 1e-8 to zero in float16). The saved tensors are re-read here in the state dtype.
        """
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, param in zip(saved_ids, params):
            dtype = state_dtype(param.dtype)
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if key != "step" and torch.is_tensor(value):
                    self.state[param][key] = value.to(device=param.device, dtype=dtype, copy=True)


class VSGD(_PromotedStateOptimizer):
    r"""Variational Stochastic Gradient Descent (Chen, Kuzina, Esmaeili & Tomczak, 2024).

    Each coordinate's mini-batch gradient g_hat_t is treated as a noisy observation of the true
    gradient g_t; VSGD keeps a Gaussian posterior N(mu_t, sigma_t^2) over g_t and Gamma
    posteriors over the precisions of its drift (rate b_g) and of the mini-batch noise (rate
    b_ghat), updates them by stochastic variational inference, and steps with the posterior
    mean over its root second moment. Symbols: eta = ``lr``, K_g = ``variance_ratio`` (the prior
    ratio of noise to drift variance), gamma = ``prior_strength``, kappa_i = ``kappa1``,
    ``kappa2`` (rho_{t,i} = t^(-kappa_i)), lambda = ``weight_decay``, epsilon = ``eps``; a is the
    Gamma shape (a_0 at t = 1, a_0 + 1/2 afterwards; a_0 = gamma for ``init="paper"``,
    gamma + 5e-5 for ``init="reference"``, the authors' code, with its constants rounded to
    float32 as there: see :mod:`vsgd_bayes.hyperparameters`).

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
        lr: learning rate eta (float or 0-dim tensor), read at every step. Default 0.1.
        variance_ratio: K_g > 0. Default 30.
        prior_strength: gamma > 0. Default 1e-8.
        kappa1, kappa2: exponents in (0.5, 1]. Defaults 0.81, 0.9.
        weight_decay: decoupled weight decay lambda >= 0. Default 0.
        eps: epsilon >= 0 in the denominator. Default 1e-8.
        init: ``"reference"`` (the authors' code, default) or ``"paper"`` (Algorithm 1).
        maximize: maximise the objective instead. Default False.
        foreach: use the ``torch._foreach`` path; None picks it when possible.
        fused: use the fused kernel; None never picks it unless the fused path is declared safe
            (``vsgd_bayes.torch._functional.FUSED_BY_DEFAULT``). ``foreach=True`` with
            ``fused=True`` is a ValueError.

    Raises:
        ValueError: an invalid hyperparameter (named, with its value), at construction, at
            ``add_param_group`` and at every step (before anything is modified).
        TypeError: a sparse gradient, or a non-bool ``maximize``/``foreach``/``fused``.

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

    _validate_group = staticmethod(_validate_group)

    def __init__(
        self,
        params: Iterable[Union[Tensor, Dict[str, Any]]],
        lr: Union[float, Tensor] = hp.DEFAULTS["lr"],
        *,
        variance_ratio: float = hp.DEFAULTS["variance_ratio"],
        prior_strength: float = hp.DEFAULTS["prior_strength"],
        kappa1: float = hp.DEFAULTS["kappa1"],
        kappa2: float = hp.DEFAULTS["kappa2"],
        weight_decay: float = hp.DEFAULTS["weight_decay"],
        eps: float = hp.DEFAULTS["eps"],
        init: str = hp.DEFAULTS["init"],
        maximize: bool = False,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
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
        )
        _validate_group(defaults)
        super().__init__(params, defaults)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)

    def _check_before_step(self) -> None:
        # Everything that can fail is checked here, before any parameter or state is touched.
        for group_index, group in enumerate(self.param_groups):
            _validate_group(group)
            for param_index, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise TypeError(
                        f"VSGD does not support sparse gradients: parameter {param_index} of "
                        f"param group {group_index} has a gradient with layout {grad.layout}"
                    )
                if group["fused"] and not _fused_module().fused_is_available(param.device):
                    raise RuntimeError(
                        f"fused=True: the fused VSGD kernel is not available on {param.device}"
                    )

    def _init_group(
        self,
        group: Dict[str, Any],
        params: List[Tensor],
        grads: List[Tensor],
        gradient_means: List[Tensor],
        drift_rates: List[Tensor],
        noise_rates: List[Tensor],
        steps: List[Tensor],
    ) -> None:
        """Collect the parameters with a gradient and create their state lazily (step 0)."""
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if len(state) == 0:
                dtype = state_dtype(param.dtype)
                drift_prior_rate, noise_prior_rate = hp.prior_rates(
                    group["prior_strength"], group["variance_ratio"], group["init"]
                )
                # step is a float32 CPU scalar, like torch Adam's: reading it costs no sync.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["gradient_mean"] = torch.zeros_like(
                    param, dtype=dtype, memory_format=torch.preserve_format
                )
                state["drift_rate"] = _filled_like(param, drift_prior_rate, dtype)
                state["noise_rate"] = _filled_like(param, noise_prior_rate, dtype)
            params.append(param)
            grads.append(param.grad)
            gradient_means.append(state["gradient_mean"])
            drift_rates.append(state["drift_rate"])
            noise_rates.append(state["noise_rate"])
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Take one VSGD step on every parameter that has a gradient.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss (run
                with gradients enabled, before the step).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_before_step()
        for group in self.param_groups:
            params: List[Tensor] = []
            grads: List[Tensor] = []
            gradient_means: List[Tensor] = []
            drift_rates: List[Tensor] = []
            noise_rates: List[Tensor] = []
            steps: List[Tensor] = []
            self._init_group(group, params, grads, gradient_means, drift_rates, noise_rates, steps)
            if not params:
                continue
            vsgd(
                params,
                grads,
                gradient_means,
                drift_rates,
                noise_rates,
                steps,
                foreach=group["foreach"],
                fused=group["fused"],
                lr=group["lr"],
                variance_ratio=group["variance_ratio"],
                prior_strength=group["prior_strength"],
                kappa1=group["kappa1"],
                kappa2=group["kappa2"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                init=group["init"],
                maximize=group["maximize"],
            )
        return loss

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
        group = next(
            (g for g in self.param_groups if any(p is param for p in g["params"])), None
        )
        if group is None:
            raise ValueError(
                f"gradient_posterior: the parameter (shape {tuple(param.shape)}) is not in this "
                "optimizer's param groups"
            )
        state = self.state.get(param, {})
        if "gradient_mean" not in state or float(state["step"]) < 1:
            raise ValueError(
                f"gradient_posterior: the parameter (shape {tuple(param.shape)}) has no VSGD "
                "state yet: it has not taken a step with a gradient"
            )
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
