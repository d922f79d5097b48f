r"""Kronecker VSGD for PyTorch: VSGD in the eigenbasis of the noise's Kronecker factors.

A port of ``vsgd_bayes.rules.kronecker`` (derivation: ``derivations/16_kronecker_vsgd.md``).
For a 2-D parameter of shape (m, n) the mini-batch noise is modelled as diagonal in a Kronecker
eigenbasis L (x) R with free eigenvalues; VSGD's model and updates run coordinate by
coordinate in that basis, and every ``basis_update_every`` steps the bases are refreshed to the
eigenvectors of the noise's running row and column moments. Every other tensor (biases, norm
scales, conv kernels, 0-dim) takes VSGD's update exactly.

State per parameter (the fields of ``vsgd_bayes.rules.kronecker.KroneckerState``): ``step``,
``gradient_mean`` (mu~), ``drift_rate`` (b~_g), ``noise_rate`` (b~_ghat), all in the basis and
of the parameter's shape; ``row_basis`` (L, m x m), ``col_basis`` (R, n x n), ``row_moment``,
``col_moment`` (S~, in the basis). A side that is not structured
(``vsgd_bayes.hyperparameters.kronecker.structured_sides``: not 2-D, length 1 or above
``max_basis_dim``) holds empty (0, 0) tensors for its basis and moment, as the rule does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.hyperparameters import kronecker as kronecker_hp
from vsgd_bayes.torch._base import VSGDFamilyOptimizer
from vsgd_bayes.torch._common import filled_like, local_tensors, state_dtype
from vsgd_bayes.torch._functional import run_path
from vsgd_bayes.torch._kronecker_single_tensor import (
    Refresh,
    planned_refresh,
    single_tensor_kronecker_vsgd,
)
from vsgd_bayes.torch.vsgd import GradientPosterior

__all__ = ["KroneckerVSGD", "kronecker_vsgd"]

_DEFAULTS = kronecker_hp.DEFAULTS

#: No foreach path: the update is per-parameter matrix products; ``foreach`` runs the same loop.
_PATHS = {
    "single_tensor": single_tensor_kronecker_vsgd,
    "foreach": single_tensor_kronecker_vsgd,
}

_SIDE_FIELDS = ("row_basis", "col_basis", "row_moment", "col_moment")


def _real_shape(param: Tensor) -> tuple[int, ...]:
    return tuple(param.shape) + ((2,) if param.is_complex() else ())


def _side_sizes(param: Tensor, max_basis_dim: int) -> tuple[int, int]:
    """(rows, columns) of the bases: 0 for a side that keeps the identity (the real view of a
    complex parameter is never 2-D, so it takes VSGD's update)."""
    shape = _real_shape(param)
    rows, cols = kronecker_hp.structured_sides(shape, int(max_basis_dim))
    return (shape[0] if rows else 0), (shape[1] if cols else 0)


def _prior_rate(index: int):
    def init(param: Tensor, group: dict[str, Any], dtype: torch.dtype) -> Tensor:
        rates = hp.prior_rates(group["prior_strength"], group["variance_ratio"], group["init"])
        return filled_like(param, rates[index], dtype)

    return init


def _side_init(side: int, basis: bool):
    """The identity basis (or zero moment) of a structured side, else an empty (0, 0)."""

    def init(param: Tensor, group: dict[str, Any], dtype: torch.dtype) -> Tensor:
        size = _side_sizes(param, group["max_basis_dim"])[side]
        if basis and size:
            return torch.eye(size, dtype=dtype.to_real(), device=param.device)
        return torch.zeros((size, size), dtype=dtype.to_real(), device=param.device)

    return init


def kronecker_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    drift_rates: list[Tensor],
    noise_rates: list[Tensor],
    row_bases: list[Tensor],
    col_bases: list[Tensor],
    row_moments: list[Tensor],
    col_moments: list[Tensor],
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
    basis_update_every: int,
    max_basis_dim: int,
    maximize: bool,
    refreshes: list[tuple[Tensor | None, Tensor | None] | None] | None = None,
) -> None:
    """Functional Kronecker VSGD: one step on every parameter of the lists, in place.

    Complex tensors are viewed as real. There is one implementation (single-tensor); ``foreach``
    is accepted for the family's interface and runs it too (see :class:`KroneckerVSGD`).
    ``refreshes``: this step's basis refreshes, one per parameter, planned before the step
    (``_kronecker_single_tensor.planned_refresh``): the new row and column eigenvectors, None
    for a side, or None for a parameter, that does not refresh; None plans them in the call,
    before any tensor is written.

    Raises:
        torch.linalg.LinAlgError: a basis refresh cannot be computed (a non-finite noise
            moment); no tensor has been modified.
    """
    run_path(
        _PATHS,
        [params, grads, gradient_means, drift_rates, noise_rates, row_bases, col_bases,
         row_moments, col_moments],
        steps,
        foreach=foreach,
        hyperparameters=dict(
            lr=lr, variance_ratio=variance_ratio, prior_strength=prior_strength,
            kappa1=kappa1, kappa2=kappa2, weight_decay=weight_decay, eps=eps, init=init,
            basis_update_every=basis_update_every, max_basis_dim=max_basis_dim,
            maximize=maximize, refreshes=refreshes,
        ),
    )  # fmt: skip


class KroneckerVSGD(VSGDFamilyOptimizer):
    r"""Kronecker VSGD: VSGD in the eigenbasis of the mini-batch noise's Kronecker factors
    (``derivations/16_kronecker_vsgd.md``; the family of EKFAC and SOAP, with VSGD's model and
    inference inside the basis).

    For a 2-D parameter of shape (m, n) with orthogonal bases L, R (identity at the start) and
    a tilde for a matrix in the basis (X~ = L^T X R), one step is

    .. math::

        \tilde{\hat G} = L^\top \hat G R,\quad
        (\tilde\mu, \tilde\sigma^2, \tilde b_g, \tilde b_{\hat g}) =
            \text{VSGD's update of every coordinate of } \tilde{\hat G} \\
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,L\,
            \frac{\tilde\mu}{\sqrt{\tilde\mu^2+\tilde\sigma^2}+\epsilon}\,R^\top \\
        \tilde S^{row} \leftarrow (1-\rho_{t,2})\tilde S^{row} + \rho_{t,2}(\tilde R\tilde R^\top
            + \mathrm{diag}_i\textstyle\sum_j\tilde\sigma^2_{ij}),\quad \tilde R =
            \tilde{\hat G} - \tilde\mu\ \text{(columns alike)}

    and after every k-th step (k = ``basis_update_every``) each structured side is refreshed:
    L' = orth(L V) with S~ = V Lambda V^T (``torch.linalg.eigh``, each column's largest-magnitude
    entry positive, then QR with a positive diagonal), P = L'^T L, and the state moves:
    mu~' = P_L mu~ P_R^T, b~' = (P_L o P_L) b~ (P_R o P_R)^T. Tensors that are not 2-D, and
    sides of length 1 or above ``max_basis_dim``, keep the identity: a tensor with both sides
    so takes VSGD's update exactly. Weight decay is decoupled, as VSGD's; ``maximize`` uses
    g_hat = -grad; complex parameters are independent real and imaginary coordinates (their
    real view is never 2-D, so they take VSGD's update).

    Cost: there is no foreach or fused path (the update is per-parameter matrix products;
    ``foreach`` is accepted and runs the same single-tensor loop). Per step, an (m, n) weight
    with both sides structured costs two two-sided rotations and two Gram products,
    6(m^2 n + m n^2) flops, against VSGD's O(mn); every k steps two eigendecompositions and two
    QR decompositions, O(m^3 + n^3), and the rotation of the state. State: 3mn (mu~, b~_g,
    b~_ghat) plus 2m^2 + 2n^2 (bases and moments).

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate eta (float or 0-dim tensor). Default 0.1 (VSGD's).
        variance_ratio: K_g > 0. Default 30.
        prior_strength: gamma > 0. Default 1e-8.
        kappa1, kappa2: exponents of rho_{t,1}, rho_{t,2} in (0.5, 1]. Defaults 0.81, 0.9.
        weight_decay: decoupled weight decay >= 0. Default 0.
        eps: epsilon >= 0. Default 1e-8.
        init: ``"reference"`` (default) or ``"paper"``, as VSGD's.
        basis_update_every: k, an integer >= 1: the bases are refreshed after every k-th step.
            Default 10 (SOAP's).
        max_basis_dim: an integer >= 1: a side longer than this keeps the identity (no basis,
            no moment, no eigendecomposition). Default 2048. It shapes a parameter's state
            when the state is created; changing it afterwards is a ``ValueError`` at the step.
        maximize: maximise instead. Default False.
        foreach: accepted for the family's interface; every value runs the single-tensor loop.
        schedule_free_momentum: beta in (0, 1): Schedule-Free averaging, with ``eval()`` and
            ``train()`` (see :class:`~vsgd_bayes.torch._base.VSGDFamilyOptimizer`). Default
            None: off.

    Raises:
        ValueError: an invalid hyperparameter (named, with its value), at construction, at
            ``add_param_group`` and at every step (before anything is modified).
        TypeError: a non-bool ``maximize``/``foreach``.
        RuntimeError: at a step in eval mode (with ``schedule_free_momentum``), a sparse
            gradient, or a sharded (FSDP2) parameter (nothing is modified).
        torch.linalg.LinAlgError: (a subclass of RuntimeError) at a refresh step, a structured
            parameter whose noise moment is not finite (a non-finite gradient reached the
            optimizer then or earlier) has no eigenbasis; the error names the parameter, and
            nothing is modified (every refresh of the step is computed before any tensor is
            written). Between refreshes a non-finite gradient propagates into the state and
            parameter, as in ``torch.optim.Adam``.

    Example:
        >>> import torch
        >>> from vsgd_bayes.torch import KroneckerVSGD
        >>> w = torch.nn.Parameter(torch.zeros(4, 3))
        >>> opt = KroneckerVSGD([w], lr=0.1, basis_update_every=1)
        >>> w.grad = torch.ones(4, 3)
        >>> opt.step()
        >>> [tuple(opt.state[w][k].shape) for k in ("row_basis", "col_basis")]
        [(4, 4), (3, 3)]
    """

    state_fields = {
        "gradient_mean": lambda param, group, dtype: filled_like(param, 0.0, dtype),
        "drift_rate": _prior_rate(0),
        "noise_rate": _prior_rate(1),
        "row_basis": _side_init(0, basis=True),
        "col_basis": _side_init(1, basis=True),
        "row_moment": _side_init(0, basis=False),
        "col_moment": _side_init(1, basis=False),
    }
    real_state_fields = frozenset(_SIDE_FIELDS)
    hyperparameters = ("lr", "variance_ratio", "prior_strength", "kappa1", "kappa2",
                       "weight_decay", "eps", "init", "basis_update_every",
                       "max_basis_dim")  # fmt: skip
    paths = ("single_tensor", "foreach")
    functional = staticmethod(kronecker_vsgd)

    def __init__(
        self,
        params: Iterable[Tensor | dict[str, Any]],
        lr: float | Tensor = _DEFAULTS["lr"],
        *,
        variance_ratio: float = _DEFAULTS["variance_ratio"],
        prior_strength: float = _DEFAULTS["prior_strength"],
        kappa1: float = _DEFAULTS["kappa1"],
        kappa2: float = _DEFAULTS["kappa2"],
        weight_decay: float = _DEFAULTS["weight_decay"],
        eps: float = _DEFAULTS["eps"],
        init: str = _DEFAULTS["init"],
        basis_update_every: int = _DEFAULTS["basis_update_every"],
        max_basis_dim: int = _DEFAULTS["max_basis_dim"],
        maximize: bool = False,
        foreach: bool | None = None,
        schedule_free_momentum: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, variance_ratio=variance_ratio, prior_strength=prior_strength,
            kappa1=kappa1, kappa2=kappa2, weight_decay=weight_decay, eps=eps, init=init,
            basis_update_every=basis_update_every, max_basis_dim=max_basis_dim,
            maximize=maximize, foreach=foreach, schedule_free_momentum=schedule_free_momentum,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _check_before_step(self) -> None:
        """Also: a sharded (FSDP2) parameter is refused (the rotations mix whole rows and
        columns), and a parameter's bases must match its group's ``max_basis_dim``."""
        super()._check_before_step()
        for group_index, group in enumerate(self.param_groups):
            for param_index, param in enumerate(group["params"]):
                if param.grad is None:
                    continue
                placements = getattr(param, "placements", None)
                if placements is not None and not all(p.is_replicate() for p in placements):
                    raise RuntimeError(
                        f"KroneckerVSGD needs whole tensors: parameter {param_index} of param "
                        f"group {group_index} is a DTensor with placements "
                        f"{tuple(placements)}, and its rotations mix whole rows and columns. "
                        "Use DDP (replicated parameters) or VSGD, whose update is elementwise."
                    )
                state = self.state.get(param, {})
                if "row_basis" not in state:
                    continue
                needed = _side_sizes(param, group["max_basis_dim"])
                held = (state["row_basis"].shape[0], state["col_basis"].shape[0])
                if held != needed:
                    raise ValueError(
                        f"Invalid max_basis_dim: {group['max_basis_dim']!r} for parameter "
                        f"{param_index} of param group {group_index}: its state holds bases of "
                        f"sizes {held}, the value needs {needed}"
                    )
        self._planned_refreshes = self._plan_refreshes()

    def _plan_refreshes(self) -> dict[int, Refresh]:
        """This step's basis refreshes, by ``id`` of the parameter, for every group, computed
        before the step writes anything: the eigendecompositions are the only part of a step
        that can fail, so a step that fails has changed nothing (``planned_refresh``)."""
        planned: dict[int, Refresh] = {}
        for group_index, group in enumerate(self.param_groups):
            for param_index, param in enumerate(group["params"]):
                if param.grad is None or _side_sizes(param, group["max_basis_dim"]) == (0, 0):
                    continue
                state = self.state.get(param, {})
                step = int(float(state.get("step", 0))) + 1
                if step % int(group["basis_update_every"]):
                    continue
                if any(key not in state for key in self.state_fields):  # its first step
                    dtype = state_dtype(param.dtype)
                    state = {key: init(param, group, dtype)
                             for key, init in self.state_fields.items()}  # fmt: skip
                fields = local_tensors([param.grad, *(state[k] for k in self.state_fields)])
                try:
                    refresh = planned_refresh(
                        *fields, step, prior_strength=group["prior_strength"],
                        kappa1=group["kappa1"], kappa2=group["kappa2"], init=group["init"],
                        basis_update_every=group["basis_update_every"],
                        maximize=group["maximize"],
                    )  # fmt: skip
                except torch.linalg.LinAlgError as error:
                    raise torch.linalg.LinAlgError(
                        f"KroneckerVSGD cannot refresh the basis of parameter {param_index} of "
                        f"param group {group_index} (shape {tuple(param.shape)}) at step "
                        f"{step}: {error}; no parameter or state was changed by this step"
                    ) from error
                if refresh is not None:
                    planned[id(param)] = refresh
        return planned

    def _path_arguments(self, params: list[Tensor]) -> dict[str, Any]:
        """The refreshes :meth:`_plan_refreshes` computed for ``params`` (None: no refresh)."""
        planned = getattr(self, "_planned_refreshes", {})
        return {"refreshes": [planned.get(id(param)) for param in params]}

    @torch.no_grad()
    def gradient_posterior(self, param: Tensor) -> GradientPosterior:
        """The posterior over ``param``'s true gradient after its latest step, in the
        parameter's own coordinates.

        Returns:
            :class:`~vsgd_bayes.torch.GradientPosterior` in ``param``'s shape, new tensors:
            ``mean`` = L mu~ R^T (the posterior mean rotated back); ``drift_variance`` and
            ``noise_variance`` the diagonals of Q diag(b~/a) Q^T (Q = L (x) R, a = a_0 + 1/2),
            i.e. (L o L)(b~/a)(R o R)^T; ``momentum`` the diagonal of Q diag(k~) Q^T with
            k~ = b~_ghat / (b~_g + b~_ghat), the weight mu~ gets at the next step (all
            VSGD's fields exactly when both bases are the identity). Complex for a complex
            parameter (whose bases are always the identity).

        Raises:
            ValueError: ``param`` is not in this optimizer, or has not been stepped yet.
        """
        group = self._group_of(param, "gradient_posterior")
        state = self._stepped_state(param, "gradient_posterior")
        shape = hp.posterior_shape(group["prior_strength"], group["init"])
        row_basis, col_basis = state["row_basis"], state["col_basis"]

        def real(t: Tensor) -> Tensor:
            return torch.view_as_real(t) if torch.is_complex(t) else t

        def back(t: Tensor) -> Tensor:
            return torch.view_as_complex(t.contiguous()) if torch.is_complex(param) else t

        def diagonal(t: Tensor) -> Tensor:  # diag(Q diag(t) Q^T) = (L o L) t (R o R)^T
            if row_basis.numel():
                t = row_basis.square() @ t
            if col_basis.numel():
                t = t @ col_basis.square().t()
            return back(t)

        mean = real(state["gradient_mean"])
        if row_basis.numel():
            mean = row_basis @ mean
        if col_basis.numel():
            mean = mean @ col_basis.t()
        drift_rate, noise_rate = real(state["drift_rate"]), real(state["noise_rate"])
        return GradientPosterior(
            mean=back(mean.clone()),
            drift_variance=diagonal(drift_rate / shape),
            noise_variance=diagonal(noise_rate / shape),
            momentum=diagonal(noise_rate / (drift_rate + noise_rate)),
        )
