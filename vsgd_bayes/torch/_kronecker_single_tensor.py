r"""The single-tensor path of ``KroneckerVSGD``: a line-by-line port of the JAX Kronecker rule.

Each function of :mod:`vsgd_bayes.rules.kronecker` has its counterpart here with the same name
and the same arithmetic (``derivations/16_kronecker_vsgd.md``); the VSGD update inside the
basis reuses the single-tensor VSGD functions of ``_single_tensor.py`` (``step_scalars``,
``local_update``, ``global_targets``, ``svi_blend_``, ``normalized_direction``), so a tensor
whose bases are both empty (not 2-D, or sides of length 1 or above ``max_basis_dim``) takes
VSGD's single-tensor step exactly. Tested for float64 parity with the rule
(``tests/test_torch_kronecker.py``).

One step of an (m, n) parameter with bases L (m x m), R (n x n) (an empty (0, 0) basis is the
identity):

* [kronecker-rotate]: g_hat~ = L^T g_hat R (the state mu~, b~ is kept in the basis);
* [kronecker-local]: VSGD's local update and rate blend of every coordinate of g_hat~;
* [kronecker-step]: theta <- theta (1 - eta lambda) - eta L [mu~ / (sqrt(mu~^2 + sigma~^2) +
  eps)] R^T;
* [kronecker-moments]: S~row, S~col blended with rho_{t,2} towards R~ R~^T + diag_i sum_j
  sigma~^2 and R~^T R~ + diag_j sum_i sigma~^2, R~ = g_hat~ - mu~;
* after every ``basis_update_every``-th step, [kronecker-basis]: L' = orth(L V) with
  S~ = V Lambda V^T (``torch.linalg.eigh``, each column's largest-magnitude entry positive,
  then QR with a positive diagonal R), P = L'^T L, S~' = P S~ P^T; and
  [kronecker-rotate-state]: mu~' = P_L mu~ P_R^T, b~' = (P_L o P_L) b~ (P_R o P_R)^T.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vsgd_bayes.torch._common import step_in_state_dtype_
from vsgd_bayes.torch._single_tensor import (
    global_targets,
    local_update,
    normalized_direction,
    step_scalars,
    svi_blend_,
)

__all__ = [
    "single_tensor_kronecker_vsgd",
    "kronecker_posterior_step_",
    "rotate_in",
    "rotate_out",
    "noise_moments",
    "blend_moments_",
    "sign_fixed_eigenvectors",
    "refreshed_basis",
    "rotate_rates",
    "Refresh",
    "moment_eigenvectors",
    "refresh_",
    "planned_refresh",
]


def rotate_in(matrix: Tensor, row_basis: Tensor, col_basis: Tensor) -> Tensor:
    """X~ = L^T X R [kronecker-rotate]; an empty basis is the identity."""
    if row_basis.numel():
        matrix = row_basis.t() @ matrix
    if col_basis.numel():
        matrix = matrix @ col_basis
    return matrix


def rotate_out(matrix: Tensor, row_basis: Tensor, col_basis: Tensor) -> Tensor:
    """X = L X~ R^T, the inverse of :func:`rotate_in` [kronecker-step]."""
    if row_basis.numel():
        matrix = row_basis @ matrix
    if col_basis.numel():
        matrix = matrix @ col_basis.t()
    return matrix


def noise_moments(residual: Tensor, gradient_variance: Tensor) -> tuple[Tensor, Tensor]:
    """(R~ R~^T + diag_i sum_j sigma~^2, R~^T R~ + diag_j sum_i sigma~^2): the expected row and
    column moments of the noise under q, in the basis [kronecker-moments]."""
    row = residual @ residual.t() + torch.diag(gradient_variance.sum(dim=1))
    col = residual.t() @ residual + torch.diag(gradient_variance.sum(dim=0))
    return row, col


def sign_fixed_eigenvectors(symmetric: Tensor) -> Tensor:
    """eigh's eigenvectors (ascending eigenvalues), each column's largest-magnitude entry made
    positive, as the rule does, so that both pick the same signs [kronecker-basis]."""
    _, vectors = torch.linalg.eigh(symmetric)
    largest = torch.argmax(vectors.abs(), dim=0)
    signs = torch.sign(vectors[largest, torch.arange(vectors.shape[1])])
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def refreshed_basis(
    basis: Tensor, moment: Tensor, eigenvectors: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(L', P, S~') = (orth(L V), L'^T L, P S~ P^T) with S~ = V Lambda V^T [kronecker-basis];
    orth is the Q factor of a QR decomposition with a positive diagonal R. ``eigenvectors``:
    V computed beforehand (:func:`planned_refresh`); None decomposes ``moment`` here."""
    if eigenvectors is None:
        eigenvectors = sign_fixed_eigenvectors(moment)
    q, r = torch.linalg.qr(basis @ eigenvectors)
    signs = torch.sign(torch.diagonal(r))
    new_basis = q * torch.where(signs == 0, torch.ones_like(signs), signs)
    transition = new_basis.t() @ basis
    return new_basis, transition, transition @ moment @ transition.t()


def rotate_rates(rate: Tensor, row_transition: Tensor, col_transition: Tensor) -> Tensor:
    """b~' = (P_L o P_L) b~ (P_R o P_R)^T [kronecker-rotate-state]; an empty transition is
    the identity."""
    if row_transition.numel():
        rate = row_transition.square() @ rate
    if col_transition.numel():
        rate = rate @ col_transition.square().t()
    return rate


class Refresh(NamedTuple):
    """A tensor's refresh computed before its step: the eigenvectors V of each structured
    side's moment [kronecker-basis], or None for a side that keeps the identity."""

    row: Tensor | None
    col: Tensor | None


def moment_eigenvectors(basis: Tensor, moment: Tensor, side: str) -> Tensor | None:
    """V of ``moment`` (:func:`sign_fixed_eigenvectors`), None for an empty side.

    Raises:
        torch.linalg.LinAlgError: ``moment`` is not finite (``eigh`` cannot decompose it; the
            message says so rather than LAPACK's convergence code), or ``eigh`` failed.
    """
    if not basis.numel():
        return None
    if not bool(torch.isfinite(moment).all()):
        raise torch.linalg.LinAlgError(
            f"its {side} noise moment is not finite (a non-finite gradient reached the "
            "optimizer at this step or an earlier one), so it has no eigenbasis"
        )
    return sign_fixed_eigenvectors(moment)


def refresh_(
    gradient_mean: Tensor,
    drift_rate: Tensor,
    noise_rate: Tensor,
    row_basis: Tensor,
    col_basis: Tensor,
    row_moment: Tensor,
    col_moment: Tensor,
    planned: Refresh | None = None,
) -> None:
    """In place: each structured side's new basis and its moment [kronecker-basis], and the
    state moved to it [kronecker-rotate-state] (the mean exactly, the rates by moment
    matching). The tensors are (m, n) matrices and (m, m), (n, n) or empty (0, 0) ones.
    ``planned``: the eigenvectors from :func:`planned_refresh`; None decomposes here."""
    if planned is None:
        planned = Refresh(moment_eigenvectors(row_basis, row_moment, "row"),
                          moment_eigenvectors(col_basis, col_moment, "column"))  # fmt: skip
    empty = gradient_mean.new_zeros((0, 0))
    row_transition = col_transition = empty
    if row_basis.numel():
        new_basis, row_transition, new_moment = refreshed_basis(row_basis, row_moment,
                                                                planned.row)  # fmt: skip
        row_basis.copy_(new_basis)
        row_moment.copy_(new_moment)
    if col_basis.numel():
        new_basis, col_transition, new_moment = refreshed_basis(col_basis, col_moment,
                                                                planned.col)  # fmt: skip
        col_basis.copy_(new_basis)
        col_moment.copy_(new_moment)
    gradient_mean.copy_(rotate_out(gradient_mean, row_transition, col_transition))
    drift_rate.copy_(rotate_rates(drift_rate, row_transition, col_transition))
    noise_rate.copy_(rotate_rates(noise_rate, row_transition, col_transition))


def _rotated_local_update(
    grad: Tensor,
    gradient_mean: Tensor,
    drift_rate: Tensor,
    noise_rate: Tensor,
    row_basis: Tensor,
    col_basis: Tensor,
    shape,
    maximize: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(g_hat~, mu~_t, sigma~_t^2), out of place [kronecker-rotate], [kronecker-local]."""
    gradient = grad.to(gradient_mean.dtype)
    if maximize:
        gradient = -gradient
    rotated = rotate_in(gradient, row_basis, col_basis)
    new_gradient_mean, gradient_variance = local_update(
        gradient_mean, drift_rate, noise_rate, rotated, shape
    )
    return rotated, new_gradient_mean, gradient_variance


def blend_moments_(
    row_moment: Tensor,
    col_moment: Tensor,
    rotated: Tensor,
    gradient_mean: Tensor,
    gradient_variance: Tensor,
    noise_step_size,
) -> tuple[Tensor, Tensor]:
    """In place S~ <- (1 - rho_{t,2}) S~ + rho_{t,2} (the noise's moments under q) for each
    structured side [kronecker-moments]; returns the two moments (an empty side stays empty)."""
    row_target, col_target = noise_moments(rotated - gradient_mean, gradient_variance)
    for moment, target in ((row_moment, row_target), (col_moment, col_target)):
        if moment.numel():
            svi_blend_(moment, target, noise_step_size)
    return row_moment, col_moment


def planned_refresh(
    grad: Tensor,
    gradient_mean: Tensor,
    drift_rate: Tensor,
    noise_rate: Tensor,
    row_basis: Tensor,
    col_basis: Tensor,
    row_moment: Tensor,
    col_moment: Tensor,
    step: int,
    *,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    init: str,
    basis_update_every: int,
    maximize: bool,
) -> Refresh | None:
    """The refresh that step number ``step`` (the count after advancing) will make, computed
    before the step changes anything, or None when it makes none. Nothing is modified.

    This is what makes a step atomic: the eigendecompositions, the only operation of the step
    that can fail, run on the moments the step will blend [kronecker-moments] before any
    parameter or state of any tensor is written; the step then uses these eigenvectors
    (:func:`kronecker_posterior_step_`'s ``refresh``) instead of decomposing again. Only V is
    kept (m^2 + n^2 values a tensor until its step), not the refreshed bases and moments.

    Raises:
        torch.linalg.LinAlgError: as :func:`moment_eigenvectors`.
    """
    structured = row_moment.numel() > 0 or col_moment.numel() > 0
    if not structured or step % int(basis_update_every):
        return None
    dtype = gradient_mean.dtype
    shape, _drift_step_size, noise_step_size = step_scalars(
        torch.tensor(float(step)), prior_strength, kappa1, kappa2, init, dtype
    )
    rotated, new_gradient_mean, gradient_variance = _rotated_local_update(
        grad, gradient_mean, drift_rate, noise_rate, row_basis, col_basis, shape, maximize
    )
    row_blended, col_blended = blend_moments_(  # on copies: nothing is modified
        row_moment.clone(), col_moment.clone(), rotated, new_gradient_mean, gradient_variance,
        noise_step_size,
    )  # fmt: skip
    return Refresh(moment_eigenvectors(row_basis, row_blended, "row"),
                   moment_eigenvectors(col_basis, col_blended, "column"))  # fmt: skip


def kronecker_posterior_step_(
    grad: Tensor,
    gradient_mean: Tensor,
    drift_rate: Tensor,
    noise_rate: Tensor,
    row_basis: Tensor,
    col_basis: Tensor,
    row_moment: Tensor,
    col_moment: Tensor,
    step_t: Tensor,
    *,
    variance_ratio: float,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    eps: float,
    init: str,
    basis_update_every: int,
    maximize: bool,
    refresh: Refresh | None = None,
) -> Tensor:
    """One tensor's posterior step in place (``rules.kronecker.posterior_update``), at the step
    count in ``step_t`` (already advanced); returns the direction
    L [mu~ / (sqrt(mu~^2 + sigma~^2) + eps)] R^T in the parameter's coordinates, taken in the
    basis of the step (before any refresh) [kronecker-step]. At a refresh step, ``refresh``
    (from :func:`planned_refresh`) gives the eigenvectors; None decomposes here."""
    dtype = gradient_mean.dtype
    shape, drift_step_size, noise_step_size = step_scalars(
        step_t, prior_strength, kappa1, kappa2, init, dtype
    )
    rotated, new_gradient_mean, gradient_variance = _rotated_local_update(
        grad, gradient_mean, drift_rate, noise_rate, row_basis, col_basis, shape, maximize
    )  # [kronecker-rotate], [kronecker-local]: VSGD's update of every coordinate of the basis
    drift_rate_target, noise_rate_target = global_targets(
        new_gradient_mean, gradient_variance, gradient_mean, rotated, prior_strength,
        variance_ratio, init,
    )  # fmt: skip
    svi_blend_(drift_rate, drift_rate_target, drift_step_size)
    svi_blend_(noise_rate, noise_rate_target, noise_step_size)
    gradient_mean.copy_(new_gradient_mean)
    direction = rotate_out(  # [kronecker-step]
        normalized_direction(gradient_mean, gradient_variance, eps), row_basis, col_basis
    )
    if row_moment.numel() or col_moment.numel():  # [kronecker-moments], with rho_{t,2}
        blend_moments_(
            row_moment, col_moment, rotated, gradient_mean, gradient_variance, noise_step_size
        )
        if int(step_t.item()) % int(basis_update_every) == 0:  # [kronecker-basis]
            refresh_(gradient_mean, drift_rate, noise_rate, row_basis, col_basis, row_moment,
                     col_moment, refresh)  # fmt: skip
    return direction


def _parameter_step_(param: Tensor, direction: Tensor, lr, weight_decay: float) -> None:
    """In place theta <- theta (1 - eta lambda) - eta direction [kronecker-step] (VSGD's
    decoupled weight decay)."""
    if weight_decay != 0.0:  # multiplying by exactly 1.0 would change nothing
        param.mul_(1.0 - lr * weight_decay)
    param.sub_(direction.mul_(lr))


def single_tensor_kronecker_vsgd(
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
    refreshes: list[Refresh | None] | None = None,
) -> None:
    """One Kronecker VSGD step on each parameter, one tensor at a time, in place.

    Real tensors only (the caller views complex ones as real); arithmetic in the state dtype;
    gradients are never modified; hyperparameters are not validated here. ``max_basis_dim``
    only shapes the state at its creation (which sides hold a basis), and is unused here.

    ``refreshes``: the basis refreshes of this step, one per tensor (:func:`planned_refresh`),
    as ``KroneckerVSGD.step`` plans them across all its param groups; None plans them here,
    for every tensor of the lists, before any tensor is written.

    Raises:
        torch.linalg.LinAlgError: a refresh cannot be computed (a non-finite noise moment);
            no tensor has been modified.
    """
    del max_basis_dim
    hyperparameters = dict(
        prior_strength=prior_strength, kappa1=kappa1, kappa2=kappa2, init=init,
        basis_update_every=basis_update_every, maximize=maximize,
    )  # fmt: skip
    if refreshes is None:
        refreshes = []
        for index, tensors in enumerate(zip(grads, gradient_means, drift_rates, noise_rates,
                                            row_bases, col_bases, row_moments, col_moments)):
            try:
                refreshes.append(planned_refresh(
                    *tensors, int(steps[index].item()) + 1, **hyperparameters
                ))  # fmt: skip
            except torch.linalg.LinAlgError as error:
                raise torch.linalg.LinAlgError(
                    f"Kronecker VSGD cannot refresh the basis of tensor {index} of the lists "
                    f"(shape {tuple(params[index].shape)}): {error}; no tensor was modified"
                ) from error
    for param, grad, mean, drift, noise, row_basis, col_basis, row_moment, col_moment, \
            step_t, refresh in zip(params, grads, gradient_means, drift_rates, noise_rates,
                                   row_bases, col_bases, row_moments, col_moments, steps,
                                   refreshes):  # fmt: skip
        step_t += 1
        direction = kronecker_posterior_step_(
            grad, mean, drift, noise, row_basis, col_basis, row_moment, col_moment, step_t,
            variance_ratio=variance_ratio, eps=eps, refresh=refresh, **hyperparameters,
        )  # fmt: skip
        step_in_state_dtype_(
            param, mean.dtype, lambda p: _parameter_step_(p, direction, lr, weight_decay)
        )
