r"""Kronecker VSGD as an optax gradient transformation.

:func:`scale_by_kronecker_vsgd` turns gradients into the direction
L [mu~ / (sqrt(mu~^2 + sigma~^2) + eps)] R^T by calling
``vsgd_bayes.rules.kronecker.posterior_update`` on every leaf
(``derivations/16_kronecker_vsgd.md``);
:func:`kronecker_vsgd` composes it with decoupled weight decay and the learning rate exactly as
:func:`vsgd_bayes.optax.vsgd` does. No maths is re-implemented here. 2-D leaves get a basis per
side (``vsgd_bayes.hyperparameters.kronecker.structured_sides``); every other leaf has empty
(0, 0) bases, for which the same rule is VSGD's. The conventions are those of
:mod:`vsgd_bayes.optax`: per-leaf step counters, ``None`` gradients skip their leaf, complex
leaves are real pairs on a trailing axis of size 2 (never 2-D, so VSGD's update), state dtype at
least float32, validation when built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vsgd_bayes.hyperparameters import kronecker as kronecker_hp
from vsgd_bayes.optax._common import (
    as_real,
    check_unless_traced,
    from_real,
    place_like,
    transpose_states,
    unzip_updates,
)
from vsgd_bayes.rules import kronecker as kronecker_rule

__all__ = ["ScaleByKroneckerVSGDState", "scale_by_kronecker_vsgd", "kronecker_vsgd"]

_DEFAULTS = kronecker_hp.DEFAULTS


class ScaleByKroneckerVSGDState(NamedTuple):
    """State of :func:`scale_by_kronecker_vsgd`: pytrees with the structure of the parameters,
    one per field of ``vsgd_bayes.rules.kronecker.KroneckerState`` (the per-leaf state)."""

    step: Any
    gradient_mean: Any
    drift_rate: Any
    noise_rate: Any
    row_basis: Any
    col_basis: Any
    row_moment: Any
    col_moment: Any


def scale_by_kronecker_vsgd(
    variance_ratio: float = _DEFAULTS["variance_ratio"],
    prior_strength: float = _DEFAULTS["prior_strength"],
    kappa1: float = _DEFAULTS["kappa1"],
    kappa2: float = _DEFAULTS["kappa2"],
    eps: float = _DEFAULTS["eps"],
    init: str = _DEFAULTS["init"],
    basis_update_every: int = _DEFAULTS["basis_update_every"],
    max_basis_dim: int = _DEFAULTS["max_basis_dim"],
) -> optax.GradientTransformation:
    r"""Rescale gradients by the Kronecker VSGD posterior over the true gradient.

    Args:
        variance_ratio, prior_strength, kappa1, kappa2, eps, init: as in
            :func:`vsgd_bayes.optax.scale_by_vsgd`.
        basis_update_every: the bases are refreshed after every k-th step (integer >= 1).
        max_basis_dim: a side longer than this keeps the identity (integer >= 1).

    Returns:
        An :class:`optax.GradientTransformation` with a :class:`ScaleByKroneckerVSGDState`.

    Example:
        >>> import jax.numpy as jnp
        >>> transformation = scale_by_kronecker_vsgd()
        >>> state = transformation.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})
        >>> state.row_basis["w"].shape, state.row_basis["b"].shape
        ((4, 4), (0, 0))
    """
    check_unless_traced(
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa1=kappa1,
        kappa2=kappa2,
        eps=eps,
        init=init,
        basis_update_every=basis_update_every,
        max_basis_dim=max_basis_dim,
    )
    basis_update_every, max_basis_dim = int(basis_update_every), int(max_basis_dim)

    def init_leaf(param):
        leaf = kronecker_rule.init_state(
            as_real(jnp.asarray(param)), prior_strength, variance_ratio, init, max_basis_dim
        )
        return leaf._replace(**{
            name: place_like(getattr(leaf, name), param)
            for name in ("gradient_mean", "drift_rate", "noise_rate")
        })  # fmt: skip

    def init_fn(params):
        return transpose_states(
            jax.tree.map(init_leaf, params),
            jax.tree.structure(params),
            kronecker_rule.KroneckerState,
            ScaleByKroneckerVSGDState,
        )

    def update_leaf(gradient, *fields):
        leaf_state = kronecker_rule.KroneckerState(*fields)
        if gradient is None:  # no gradient for this leaf: skip it, like torch's grad None
            return None, leaf_state
        direction, leaf_state = kronecker_rule.posterior_update(
            as_real(gradient),
            leaf_state,
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            eps=eps,
            init=init,
            basis_update_every=basis_update_every,
        )
        return from_real(direction, gradient.dtype), leaf_state

    def update_fn(updates, state, params=None):
        del params  # the direction does not depend on the parameters
        pairs = jax.tree.map(update_leaf, updates, *state, is_leaf=lambda x: x is None)
        return unzip_updates(
            pairs, updates, kronecker_rule.KroneckerState, ScaleByKroneckerVSGDState
        )

    return optax.GradientTransformation(init_fn, update_fn)


def kronecker_vsgd(
    learning_rate: optax.ScalarOrSchedule = _DEFAULTS["lr"],
    variance_ratio: float = _DEFAULTS["variance_ratio"],
    prior_strength: float = _DEFAULTS["prior_strength"],
    kappa1: float = _DEFAULTS["kappa1"],
    kappa2: float = _DEFAULTS["kappa2"],
    eps: float = _DEFAULTS["eps"],
    init: str = _DEFAULTS["init"],
    basis_update_every: int = _DEFAULTS["basis_update_every"],
    max_basis_dim: int = _DEFAULTS["max_basis_dim"],
    weight_decay: float = _DEFAULTS["weight_decay"],
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    r"""Kronecker VSGD with decoupled weight decay:
    ``chain(scale_by_kronecker_vsgd(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, as :func:`vsgd_bayes.optax.vsgd`.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> loss = lambda params: jnp.sum((params["w"] - 3.0) ** 2)
        >>> optimizer = kronecker_vsgd(learning_rate=0.1, basis_update_every=5)
        >>> params = {"w": jnp.zeros((2, 3))}
        >>> state = optimizer.init(params)
        >>> for _ in range(500):
        ...     updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(jnp.allclose(params["w"], 3.0, atol=0.1))
        True
    """
    check_unless_traced(lr=learning_rate, weight_decay=weight_decay)
    return optax.chain(
        scale_by_kronecker_vsgd(
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            eps=eps,
            init=init,
            basis_update_every=basis_update_every,
            max_basis_dim=max_basis_dim,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
