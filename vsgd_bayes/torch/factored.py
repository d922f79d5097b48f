r"""Factored VSGD for PyTorch: VSGD with row x column precisions, state about one value per
coordinate.

A port of :mod:`vsgd_bayes.rules.factored` (derivation: ``derivations/12_factored_vsgd.md``).
Each parameter is viewed as a matrix (m, n) = (shape[0], prod(shape[1:])) and each of VSGD's
per-coordinate precisions is replaced by a row factor times a column factor, w_g,ij = r_i s_j,
w_ghat,ij = p_i q_j, with conjugate Gamma updates; vectors keep one precision per coordinate
(VSGD exactly), and ``factorization="tensor"`` shares one precision per tensor.

State per parameter (the fields of :class:`vsgd_bayes.rules.factored.FactoredVSGDState`):
``step``, ``gradient_mean`` (mu, the parameter's shape), ``drift_row_rate`` (m,),
``drift_column_rate`` (n,), ``noise_row_rate`` (m,), ``noise_column_rate`` (n,); the column
rates are empty where there is no column factor. That is (mn + 2m + 2n) values for an (m, n)
matrix: about the parameters' own size (Adam keeps 2mn, VSGD 3mn).

For a complex parameter the factorisation is that of its real view (..., 2) (real and
imaginary parts are independent coordinates): ``gradient_mean`` is complex, the rates real.

The update is not elementwise (the column factors sum over rows), so a parameter sharded
across ranks (an FSDP2 DTensor) is refused with a ``RuntimeError`` before anything changes;
DDP (replicated parameters) works as on one process.

Paths: ``_factored_single_tensor.py`` (a port of the rule) and ``_factored_foreach.py``;
``foreach=None`` is single-tensor on the CPU (faster there, measured) and foreach elsewhere.
There is no fused kernel: on ResNet-18's shapes (CPU, 1 thread) a step costs 6.8x torch's
fused Adam (VSGD's fused kernel 1.3x, torch's Adafactor 33x; ``benchmarks/README.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.hyperparameters import factored as factored_hp
from vsgd_bayes.torch._base import VSGDFamilyOptimizer
from vsgd_bayes.torch._common import filled_like
from vsgd_bayes.torch._factored_foreach import foreach_factored_vsgd
from vsgd_bayes.torch._factored_single_tensor import (
    expected_precision,
    single_tensor_factored_vsgd,
)
from vsgd_bayes.torch._functional import run_path
from vsgd_bayes.torch.vsgd import GradientPosterior

__all__ = ["FactoredVSGD", "factored_vsgd"]

_PATHS = {"single_tensor": single_tensor_factored_vsgd, "foreach": foreach_factored_vsgd}


def _is_sharded(param: Tensor) -> bool:
    """Whether ``param`` is a DTensor split across ranks (FSDP2): not all placements
    replicate it."""
    placements = getattr(param, "placements", None)
    return placements is not None and not all(p.is_replicate() for p in placements)


def _real_shape(param: Tensor) -> tuple[int, ...]:
    return tuple(param.shape) + ((2,) if param.is_complex() else ())


def _factor_sizes(param: Tensor, factorization: str) -> tuple[int, int]:
    """(rows, columns of the state): columns 0 where there is no column factor."""
    shape = _real_shape(param)
    rows, columns = factored_hp.matrix_shape(shape, factorization)
    return rows, columns if factored_hp.is_factored(shape, factorization) else 0


def _rate_init(kind: str, index: int):
    """Initial rates: rows at the prior rate (gamma, K_g gamma), columns at a_0 (mean 1)."""

    def init(param: Tensor, group: dict[str, Any], dtype: torch.dtype) -> Tensor:
        rows, columns = _factor_sizes(param, group["factorization"])
        if kind == "row":
            value = hp.prior_rates(group["prior_strength"], group["variance_ratio"],
                                   group["init"])[index]
            size = rows
        else:
            value = hp.prior_shape(group["prior_strength"], group["init"])
            size = columns
        return torch.full((size,), float(value), dtype=dtype.to_real(), device=param.device)

    return init


def factored_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    drift_row_rates: list[Tensor],
    drift_column_rates: list[Tensor],
    noise_row_rates: list[Tensor],
    noise_column_rates: list[Tensor],
    steps: list[Tensor],
    *,
    foreach: bool | None = None,
    lr: float | Tensor,
    variance_ratio: float,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    weight_decay: float,
    eps: float,
    init: str,
    factorization: str,
    maximize: bool,
) -> None:
    """Functional Factored VSGD: one step on every parameter of the lists, in place.

    Complex tensors are viewed as real. ``foreach=None`` picks the single-tensor path when
    every parameter is on the CPU (measured faster there: 99 ms against 136 ms per step on
    ResNet-18's shapes, 1 thread, ``benchmarks/step_time.py``; the row and column sums run
    per tensor in both, and the foreach tail only adds list-wide temporaries), else the
    foreach path for plain tensors and DTensors (see :class:`FactoredVSGD` for the arguments).
    """
    if foreach is None and params and all(p.device.type == "cpu" for p in params):
        foreach = False
    run_path(
        _PATHS,
        [params, grads, gradient_means, drift_row_rates, drift_column_rates, noise_row_rates,
         noise_column_rates],
        steps,
        foreach=foreach,
        hyperparameters=dict(
            lr=lr, variance_ratio=variance_ratio, prior_strength=prior_strength,
            kappa1=kappa1, kappa2=kappa2, weight_decay=weight_decay, eps=eps, init=init,
            factorization=factorization, maximize=maximize,
        ),
    )


class FactoredVSGD(VSGDFamilyOptimizer):
    r"""Factored VSGD: VSGD whose precisions are row x column factors (memory ~ Adafactor's
    plus one momentum-like buffer).

    For a parameter viewed as an (m, n) matrix, with u = mu_{t-1} and Gamma factors
    (shapes a_0 at t = 1, then a_0 + n/2 for rows and a_0 + m/2 for columns):

    .. math::

        \sigma^2_{ij} = (E[r_i]E[s_j] + E[p_i]E[q_j])^{-1},\quad
        \mu_{ij} = \sigma^2_{ij}(E[r_i]E[s_j]u_{ij} + E[p_i]E[q_j]\hat g_{ij}) \\
        \beta^r_i \leftarrow (1-\rho_{t,1})\beta^r_i + \rho_{t,1}(\gamma + \tfrac12\textstyle
            \sum_j E[s_j]D_{ij}),\quad \beta^s_j \text{ likewise with } a_0 + \tfrac12
            \textstyle\sum_i E[r_i]D_{ij},\ \text{then } E[s] \text{ rescaled to mean } 1 \\
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,\mu_t/(\sqrt{\mu_t^2+\sigma_t^2}+\epsilon)

    with D = sigma^2 + (mu - u)^2, and (p, q) the same with N = sigma^2 + (mu - g_hat)^2,
    K_g gamma and rho_{t,2}. Vectors (biases, norm scales) keep one precision per coordinate:
    their update is VSGD's exactly. At step 1 every parameter's update is VSGD's.

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate eta (float or 0-dim tensor). Default 0.1 (VSGD's).
        variance_ratio: K_g > 0 (prior noise/drift variance ratio). Default 30.
        prior_strength: gamma > 0. Default 1e-8.
        kappa1, kappa2: exponents of rho_{t,1}, rho_{t,2} in (0.5, 1]. Defaults 0.81, 0.9.
        weight_decay: decoupled weight decay >= 0. Default 0.
        eps: epsilon >= 0. Default 1e-8.
        init: ``"reference"`` (a_0 = gamma + 5e-5, default) or ``"paper"`` (a_0 = gamma).
        factorization: ``"matrix"`` (row x column factors, default) or ``"tensor"`` (one
            precision per tensor).
        maximize: maximise instead. Default False.
        foreach: use the ``torch._foreach`` path; None: single-tensor on the CPU, foreach
            elsewhere when possible.
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
        >>> from vsgd_bayes.torch import FactoredVSGD
        >>> w = torch.nn.Parameter(torch.zeros(4, 3))
        >>> opt = FactoredVSGD([w], lr=0.1)
        >>> w.grad = torch.ones(4, 3)
        >>> opt.step()
        >>> [tuple(opt.state[w][k].shape) for k in ("drift_row_rate", "drift_column_rate")]
        [(4,), (3,)]
    """

    state_fields = {
        "gradient_mean": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "drift_row_rate": _rate_init("row", 0),
        "drift_column_rate": _rate_init("column", 0),
        "noise_row_rate": _rate_init("row", 1),
        "noise_column_rate": _rate_init("column", 1),
    }
    real_state_fields = frozenset(
        {"drift_row_rate", "drift_column_rate", "noise_row_rate", "noise_column_rate"}
    )
    hyperparameters = ("lr", "variance_ratio", "prior_strength", "kappa1", "kappa2",
                       "weight_decay", "eps", "init", "factorization")
    paths = ("single_tensor", "foreach")
    functional = staticmethod(factored_vsgd)

    def __init__(
        self,
        params: Iterable[Tensor | dict[str, Any]],
        lr: float | Tensor = hp.FACTORED_DEFAULTS["lr"],
        *,
        variance_ratio: float = hp.FACTORED_DEFAULTS["variance_ratio"],
        prior_strength: float = hp.FACTORED_DEFAULTS["prior_strength"],
        kappa1: float = hp.FACTORED_DEFAULTS["kappa1"],
        kappa2: float = hp.FACTORED_DEFAULTS["kappa2"],
        weight_decay: float = hp.FACTORED_DEFAULTS["weight_decay"],
        eps: float = hp.FACTORED_DEFAULTS["eps"],
        init: str = hp.FACTORED_DEFAULTS["init"],
        factorization: str = hp.FACTORED_DEFAULTS["factorization"],
        maximize: bool = False,
        foreach: bool | None = None,
        schedule_free_momentum: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, variance_ratio=variance_ratio, prior_strength=prior_strength,
            kappa1=kappa1, kappa2=kappa2, weight_decay=weight_decay, eps=eps, init=init,
            factorization=factorization, maximize=maximize, foreach=foreach,
            schedule_free_momentum=schedule_free_momentum,
        )
        super().__init__(params, defaults)

    def _check_before_step(self) -> None:
        """Also: a parameter's state must match its group's factorisation (a group whose
        ``factorization`` was changed after its first step cannot reuse its rates)."""
        super()._check_before_step()
        for group_index, group in enumerate(self.param_groups):
            for param_index, param in enumerate(group["params"]):
                if param.grad is not None and _is_sharded(param):
                    raise RuntimeError(
                        f"FactoredVSGD needs whole tensors: parameter {param_index} of param "
                        f"group {group_index} is a DTensor with placements "
                        f"{tuple(param.placements)}, and its column factors sum over every "
                        "row (its shard would see only its own rows). Use DDP (replicated "
                        "parameters) or VSGD, whose update is elementwise."
                    )
                state = self.state.get(param, {})
                if "drift_row_rate" not in state:
                    continue
                rows, columns = _factor_sizes(param, group["factorization"])
                held = (state["drift_row_rate"].numel(), state["drift_column_rate"].numel())
                if held != (rows, columns):
                    raise ValueError(
                        f"Invalid factorization: {group['factorization']!r} for parameter "
                        f"{param_index} of param group {group_index}: its state holds "
                        f"{held[0]} row and {held[1]} column rates, the factorization needs "
                        f"{rows} and {columns}"
                    )

    def gradient_posterior(self, param: Tensor) -> GradientPosterior:
        """The posterior over ``param``'s true gradient after its latest step.

        Returns:
            :class:`~vsgd_bayes.torch.GradientPosterior` in ``param``'s shape: mu_t,
            1/(E[r]E[s]), 1/(E[p]E[q]) and the momentum E[r]E[s] / (E[r]E[s] + E[p]E[q])
            (posterior shapes a_0 + n/2, a_0 + m/2), new tensors; complex for a complex
            parameter (the real and imaginary coordinates').

        Raises:
            ValueError: ``param`` is not in this optimizer, or has not been stepped yet.
        """
        group = self._group_of(param, "gradient_posterior")
        state = self._stepped_state(param, "gradient_posterior")
        real_shape = _real_shape(param)
        rows, columns = factored_hp.matrix_shape(real_shape, group["factorization"])
        row_shape, column_shape = factored_hp.posterior_factor_shapes(
            hp.prior_shape(group["prior_strength"], group["init"]), rows, columns)

        def precision(row_rate: Tensor, column_rate: Tensor) -> Tensor:
            value = expected_precision(row_shape, row_rate, column_shape, column_rate)
            return value.expand(rows, columns).reshape(real_shape)

        def back(t: Tensor) -> Tensor:
            return torch.view_as_complex(t.contiguous()) if param.is_complex() else t

        drift = precision(state["drift_row_rate"], state["drift_column_rate"])
        noise = precision(state["noise_row_rate"], state["noise_column_rate"])
        return GradientPosterior(
            mean=state["gradient_mean"].clone(),
            drift_variance=back(1.0 / drift),
            noise_variance=back(1.0 / noise),
            momentum=back(drift / (drift + noise)),
        )
