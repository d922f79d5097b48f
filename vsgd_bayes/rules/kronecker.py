r"""Kronecker VSGD as pure JAX functions: VSGD in the eigenbasis of the noise's Kronecker factors.

``derivations/16_kronecker_vsgd.md``. For a 2-D parameter of shape (m, n), with orthogonal bases
L (m x m) and R (n x n) and a tilde for a matrix in the basis (X~ = L^T X R), one step is

.. math::

    \tilde{\hat G} &= L^\top \hat G R && \text{[kronecker-rotate]} \\
    (\tilde\mu, \tilde\sigma^2, \tilde b) &= \text{VSGD's update of }
        \tilde{\hat G}\text{ coordinate by coordinate} && \text{[kronecker-local]} \\
    \theta &\leftarrow \theta(1 - \eta\lambda) - \eta\, L\,
        \frac{\tilde\mu}{\sqrt{\tilde\mu^2 + \tilde\sigma^2} + \epsilon}\,R^\top
        && \text{[kronecker-step]} \\
    \tilde S^{row} &\leftarrow (1-\rho_2)\tilde S^{row}
        + \rho_2\big(\tilde R\tilde R^\top
        + \mathrm{diag}_i \textstyle\sum_j\tilde\sigma^2_{ij}\big),
        \ \tilde R = \tilde{\hat G} - \tilde\mu \ \text{(columns alike)}
        && \text{[kronecker-moments]}

and after every k-th step each side's basis is refreshed to the eigenvectors of its moment,
L' = orth(L V) with S~ = V Lambda V^T [kronecker-basis], and the state moves to the new basis:
mu~' = P_L mu~ P_R^T, b~' = (P_L o P_L) b~ (P_R o P_R)^T, P = L'^T L [kronecker-rotate-state].

A side that is not structured (:func:`vsgd_bayes.hyperparameters.kronecker.structured_sides`:
tensors that are not 2-D, sides of length 1 or above ``max_basis_dim``) keeps the identity,
stored as an empty (0, 0) basis and moment; with both sides so, a step is VSGD's
(:func:`vsgd_bayes.rules.vsgd.step`) exactly.

Example:
    >>> import jax.numpy as jnp
    >>> from vsgd_bayes.rules import kronecker
    >>> params = jnp.ones((3, 2))
    >>> state = kronecker.init_state(params)
    >>> params, state = kronecker.step(params, jnp.full((3, 2), 0.5), state, basis_update_every=1)
    >>> state.row_basis.shape, state.col_basis.shape
    ((3, 3), (2, 2))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.hyperparameters import kronecker as kronecker_hp
from vsgd_bayes.rules import vsgd as vsgd_rule

__all__ = [
    "KroneckerState",
    "init_state",
    "rotate_in",
    "rotate_out",
    "noise_moments",
    "sign_fixed_eigenvectors",
    "refreshed_basis",
    "rotate_rates",
    "refresh",
    "posterior_update",
    "step",
]

_DEFAULTS = kronecker_hp.DEFAULTS


class KroneckerState(NamedTuple):
    """Per-parameter Kronecker VSGD state (the torch optimizer's state keys are these names).

    Attributes:
        step: number of steps taken so far (int32 scalar).
        gradient_mean, drift_rate, noise_rate: VSGD's state (mu, b_g, b_ghat) of every
            coordinate of the basis, in the basis.
        row_basis, col_basis: L (m x m) and R (n x n); (0, 0) for the identity.
        row_moment, col_moment: the noise's running row and column moments S~ in the basis
            (eq:kronecker-moments); (0, 0) where the side keeps the identity.
    """

    step: jax.Array
    gradient_mean: jax.Array
    drift_rate: jax.Array
    noise_rate: jax.Array
    row_basis: jax.Array
    col_basis: jax.Array
    row_moment: jax.Array
    col_moment: jax.Array


def init_state(
    params: jax.Array,
    prior_strength: float = _DEFAULTS["prior_strength"],
    variance_ratio: float = _DEFAULTS["variance_ratio"],
    init: str = _DEFAULTS["init"],
    max_basis_dim: int = _DEFAULTS["max_basis_dim"],
) -> KroneckerState:
    """State before the first step: VSGD's (:func:`vsgd_bayes.rules.vsgd.init_state`), the
    identity bases of the structured sides and zero moments."""
    inner = vsgd_rule.init_state(params, prior_strength, variance_ratio, init)
    dtype = inner.gradient_mean.dtype
    rows, cols = kronecker_hp.structured_sides(tuple(params.shape), max_basis_dim)

    def side(structured, size):
        if not structured:
            return jnp.zeros((0, 0), dtype), jnp.zeros((0, 0), dtype)
        return jnp.eye(size, dtype=dtype), jnp.zeros((size, size), dtype)

    row_basis, row_moment = side(rows, params.shape[0] if rows else 0)
    col_basis, col_moment = side(cols, params.shape[1] if cols else 0)
    return KroneckerState(
        inner.step, inner.gradient_mean, inner.drift_rate, inner.noise_rate,
        row_basis, col_basis, row_moment, col_moment,
    )  # fmt: skip


def rotate_in(matrix, row_basis, col_basis):
    """X~ = L^T X R [kronecker-rotate]; an empty basis is the identity."""
    if row_basis.size:
        matrix = row_basis.T @ matrix
    if col_basis.size:
        matrix = matrix @ col_basis
    return matrix


def rotate_out(matrix, row_basis, col_basis):
    """X = L X~ R^T, the inverse of :func:`rotate_in` [kronecker-step]."""
    if row_basis.size:
        matrix = row_basis @ matrix
    if col_basis.size:
        matrix = matrix @ col_basis.T
    return matrix


def noise_moments(residual, gradient_variance):
    """The expected row and column moments of the noise under q, in the basis
    (eq:kronecker-moments): (R~ R~^T + diag_i sum_j sigma~^2, R~^T R~ + diag_j sum_i sigma~^2)."""
    row = residual @ residual.T + jnp.diag(gradient_variance.sum(axis=1))
    col = residual.T @ residual + jnp.diag(gradient_variance.sum(axis=0))
    return row, col


def sign_fixed_eigenvectors(symmetric):
    """eigh's eigenvectors (ascending eigenvalues), each column's largest-magnitude entry made
    positive, so that every implementation picks the same signs [kronecker-basis]."""
    _, vectors = jnp.linalg.eigh(symmetric)
    largest = jnp.argmax(jnp.abs(vectors), axis=0)
    signs = jnp.sign(vectors[largest, jnp.arange(vectors.shape[1])])
    return vectors * jnp.where(signs == 0, 1.0, signs)


def refreshed_basis(basis, moment):
    """(L', P, S~') = (orth(L V), L'^T L, P S~ P^T) with S~ = V Lambda V^T [kronecker-basis].

    orth is the Q factor of a QR decomposition with a positive diagonal R: in exact arithmetic
    L V is orthogonal already; it removes the rounding that many refreshes would accumulate.
    """
    q, r = jnp.linalg.qr(basis @ sign_fixed_eigenvectors(moment))
    signs = jnp.sign(jnp.diagonal(r))
    new_basis = q * jnp.where(signs == 0, 1.0, signs)
    transition = new_basis.T @ basis
    return new_basis, transition, transition @ moment @ transition.T


def rotate_rates(rate, row_transition, col_transition):
    """b~' = (P_L o P_L) b~ (P_R o P_R)^T: each new coordinate's expected variance under the
    old factors (the diagonal of P diag(b~) P^T, P = P_L (x) P_R) [kronecker-rotate-state].
    An empty transition is the identity."""
    if row_transition.size:
        rate = (row_transition**2) @ rate
    if col_transition.size:
        rate = rate @ (col_transition**2).T
    return rate


def refresh(state: KroneckerState) -> KroneckerState:
    """Each structured side's new basis and the state moved to it [kronecker-basis],
    [kronecker-rotate-state]: the mean exactly, the rates by moment matching."""
    row_basis, row_moment = state.row_basis, state.row_moment
    col_basis, col_moment = state.col_basis, state.col_moment
    empty = jnp.zeros((0, 0), state.gradient_mean.dtype)
    row_transition = col_transition = empty
    if row_basis.size:
        row_basis, row_transition, row_moment = refreshed_basis(row_basis, row_moment)
    if col_basis.size:
        col_basis, col_transition, col_moment = refreshed_basis(col_basis, col_moment)
    mean = rotate_out(state.gradient_mean, row_transition, col_transition)  # P_L mu~ P_R^T
    return KroneckerState(
        step=state.step,
        gradient_mean=mean,
        drift_rate=rotate_rates(state.drift_rate, row_transition, col_transition),
        noise_rate=rotate_rates(state.noise_rate, row_transition, col_transition),
        row_basis=row_basis,
        col_basis=col_basis,
        row_moment=row_moment,
        col_moment=col_moment,
    )


def posterior_update(
    gradient,
    state: KroneckerState,
    *,
    variance_ratio=_DEFAULTS["variance_ratio"],
    prior_strength=_DEFAULTS["prior_strength"],
    kappa1=_DEFAULTS["kappa1"],
    kappa2=_DEFAULTS["kappa2"],
    eps=_DEFAULTS["eps"],
    init: str = _DEFAULTS["init"],
    basis_update_every: int = _DEFAULTS["basis_update_every"],
) -> tuple[jax.Array, KroneckerState]:
    """The posterior over the true gradient, one step, and the basis refresh where due.

    Returns:
        (direction, new_state): L [mu~ / (sqrt(mu~^2 + sigma~^2) + eps)] R^T in the
        parameter's coordinates, taken in the basis of the step (before any refresh), and the
        state after the step (in the refreshed basis after every ``basis_update_every``-th
        step). This is what the optax transformation calls.
    """
    dtype = state.gradient_mean.dtype
    rotated = rotate_in(gradient.astype(dtype), state.row_basis, state.col_basis)
    inner = vsgd_rule.VSGDState(state.step, state.gradient_mean, state.drift_rate, state.noise_rate)
    gradient_variance, inner = vsgd_rule.posterior_update(
        rotated,
        inner,
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa1=kappa1,
        kappa2=kappa2,
        init=init,
    )
    direction = rotate_out(
        vsgd_rule.normalized_direction(inner.gradient_mean, gradient_variance, eps),
        state.row_basis,
        state.col_basis,
    )
    row_moment, col_moment = state.row_moment, state.col_moment
    if row_moment.size or col_moment.size:
        _, noise_step_size = hp.step_sizes(inner.step.astype(dtype), kappa1, kappa2)
        row_target, col_target = noise_moments(rotated - inner.gradient_mean, gradient_variance)
        if row_moment.size:
            row_moment = vsgd_rule.svi_blend(row_moment, row_target, noise_step_size)
        if col_moment.size:
            col_moment = vsgd_rule.svi_blend(col_moment, col_target, noise_step_size)
    new_state = KroneckerState(
        inner.step, inner.gradient_mean, inner.drift_rate, inner.noise_rate,
        state.row_basis, state.col_basis, row_moment, col_moment,
    )  # fmt: skip
    if row_moment.size or col_moment.size:
        new_state = jax.lax.cond(
            new_state.step % basis_update_every == 0, refresh, lambda s: s, new_state
        )
    return direction, new_state


def step(
    params,
    gradient,
    state: KroneckerState,
    *,
    lr=_DEFAULTS["lr"],
    variance_ratio=_DEFAULTS["variance_ratio"],
    prior_strength=_DEFAULTS["prior_strength"],
    kappa1=_DEFAULTS["kappa1"],
    kappa2=_DEFAULTS["kappa2"],
    weight_decay=_DEFAULTS["weight_decay"],
    eps=_DEFAULTS["eps"],
    init: str = _DEFAULTS["init"],
    basis_update_every: int = _DEFAULTS["basis_update_every"],
) -> tuple[jax.Array, KroneckerState]:
    """One Kronecker VSGD step on one array [kronecker-step].

    Hyperparameters are not validated here (meant to be jitted; ``init`` static); validate them
    once with :func:`vsgd_bayes.hyperparameters.kronecker.validate_hyperparameters`.

    Returns:
        (new_params, new_state), the parameters in their own dtype.
    """
    direction, new_state = posterior_update(
        gradient,
        state,
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa1=kappa1,
        kappa2=kappa2,
        eps=eps,
        init=init,
        basis_update_every=basis_update_every,
    )
    dtype = new_state.gradient_mean.dtype
    lr = jnp.asarray(lr, dtype)
    weight_decay = jnp.asarray(weight_decay, dtype)
    decayed = params.astype(dtype) * (1.0 - lr * weight_decay)
    return (decayed - lr * direction).astype(params.dtype), new_state
