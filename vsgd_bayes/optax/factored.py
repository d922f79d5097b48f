r"""Factored VSGD as an optax gradient transformation.

:func:`scale_by_factored_vsgd` turns gradients into the direction mu_t / sqrt(mu_t^2 +
sigma_t^2) by calling :func:`vsgd_bayes.rules.factored.posterior_update` and
:func:`vsgd_bayes.rules.vsgd.normalized_direction` on every leaf; :func:`factored_vsgd`
composes it with decoupled weight decay and the learning rate exactly as
:func:`vsgd_bayes.optax.vsgd` does. No maths is re-implemented here (tested bitwise equal to
:func:`vsgd_bayes.rules.factored.step` eagerly, within 8 ulps under ``jax.jit``, where XLA may
fuse the row and column sums differently). The conventions are those of :mod:`vsgd_bayes.optax`:
per-leaf step counters, ``None`` gradients skip their leaf, complex leaves are real pairs on a
trailing axis of size 2 (factored as that real array), state dtype at least float32,
validation when built. The rate fields hold one vector per leaf (rows (m,), columns (n,)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.optax._common import (
    as_real,
    check_unless_traced,
    from_real,
    place_like,
    transpose_states,
    unzip_updates,
)
from vsgd_bayes.rules import factored as factored_rule
from vsgd_bayes.rules.vsgd import normalized_direction

__all__ = ["ScaleByFactoredVSGDState", "scale_by_factored_vsgd", "factored_vsgd"]

_DEFAULTS = hp.FACTORED_DEFAULTS


class ScaleByFactoredVSGDState(NamedTuple):
    """State of :func:`scale_by_factored_vsgd`: pytrees with the structure of the parameters,
    one per field of :class:`vsgd_bayes.rules.factored.FactoredVSGDState`."""

    step: Any
    gradient_mean: Any
    drift_row_rate: Any
    drift_column_rate: Any
    noise_row_rate: Any
    noise_column_rate: Any


def scale_by_factored_vsgd(
    variance_ratio: float = _DEFAULTS["variance_ratio"],
    prior_strength: float = _DEFAULTS["prior_strength"],
    kappa1: float = _DEFAULTS["kappa1"],
    kappa2: float = _DEFAULTS["kappa2"],
    eps: float = _DEFAULTS["eps"],
    init: str = _DEFAULTS["init"],
    factorization: str = _DEFAULTS["factorization"],
) -> optax.GradientTransformation:
    r"""Rescale gradients by the Factored VSGD posterior over the true gradient.

    Each leaf is viewed as a matrix (shape[0], prod(shape[1:])) whose drift and noise
    precisions are row x column Gamma factors (vectors: one per coordinate;
    ``factorization="tensor"``: one per leaf), updated in closed form
    (``derivations/12_factored_vsgd.md``); the direction is VSGD's.

    Args:
        variance_ratio, prior_strength, kappa1, kappa2, eps, init: as in
            :func:`vsgd_bayes.optax.scale_by_vsgd`.
        factorization: ``"matrix"`` (default) or ``"tensor"``.

    Returns:
        An :class:`optax.GradientTransformation` with a :class:`ScaleByFactoredVSGDState`.

    Example:
        >>> import jax.numpy as jnp
        >>> transformation = scale_by_factored_vsgd()
        >>> state = transformation.init({"w": jnp.zeros((4, 3))})
        >>> state.drift_column_rate["w"].shape
        (3,)
    """
    check_unless_traced(
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa1=kappa1,
        kappa2=kappa2,
        eps=eps,
        init=init,
        factorization=factorization,
    )

    def init_leaf(param):
        leaf = factored_rule.init_state(
            as_real(jnp.asarray(param)), prior_strength, variance_ratio, init, factorization
        )
        return leaf._replace(**{
            name: place_like(getattr(leaf, name), param)
            for name in factored_rule.FactoredVSGDState._fields[1:]
        })

    def init_fn(params):
        return transpose_states(
            jax.tree.map(init_leaf, params),
            jax.tree.structure(params),
            factored_rule.FactoredVSGDState,
            ScaleByFactoredVSGDState,
        )

    def update_leaf(gradient, *fields):
        leaf_state = factored_rule.FactoredVSGDState(*fields)
        if gradient is None:  # no gradient for this leaf: skip it, like torch's grad None
            return None, leaf_state
        gradient_variance, leaf_state = factored_rule.posterior_update(
            as_real(gradient),
            leaf_state,
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            init=init,
            factorization=factorization,
        )
        direction = normalized_direction(leaf_state.gradient_mean, gradient_variance, eps)
        return from_real(direction, gradient.dtype), leaf_state

    def update_fn(updates, state, params=None):
        del params  # the direction does not depend on the parameters
        pairs = jax.tree.map(update_leaf, updates, *state, is_leaf=lambda x: x is None)
        return unzip_updates(
            pairs, updates, factored_rule.FactoredVSGDState, ScaleByFactoredVSGDState
        )

    return optax.GradientTransformation(init_fn, update_fn)


def factored_vsgd(
    learning_rate: optax.ScalarOrSchedule = _DEFAULTS["lr"],
    variance_ratio: float = _DEFAULTS["variance_ratio"],
    prior_strength: float = _DEFAULTS["prior_strength"],
    kappa1: float = _DEFAULTS["kappa1"],
    kappa2: float = _DEFAULTS["kappa2"],
    eps: float = _DEFAULTS["eps"],
    init: str = _DEFAULTS["init"],
    factorization: str = _DEFAULTS["factorization"],
    weight_decay: float = _DEFAULTS["weight_decay"],
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    r"""Factored VSGD with decoupled weight decay:
    ``chain(scale_by_factored_vsgd(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, as :func:`vsgd_bayes.optax.vsgd`.

    With ``weight_decay=0`` the result is :func:`vsgd_bayes.rules.factored.step`'s (bitwise
    eagerly).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> loss = lambda params: jnp.sum((params["w"] - 3.0) ** 2)
        >>> optimizer = factored_vsgd(learning_rate=0.1)
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
        scale_by_factored_vsgd(
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            eps=eps,
            init=init,
            factorization=factorization,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
