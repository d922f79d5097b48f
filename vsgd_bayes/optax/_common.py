"""What the optax transformations of every method share: the per-leaf plumbing.

Each method's transformation (:mod:`~vsgd_bayes.optax.vsgd`, :mod:`~vsgd_bayes.optax.kalman`)
maps its rule over the leaves and uses these for the conventions that all of them follow:
hyperparameters checked when built unless traced, complex leaves as real pairs on a trailing
axis, states placed with their parameters' sharding, and per-leaf states transposed into one
NamedTuple of trees.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vsgd_bayes import hyperparameters as hp

__all__ = [
    "is_traced",
    "check_unless_traced",
    "as_real",
    "from_real",
    "place_like",
    "transpose_states",
    "unzip_updates",
]


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_unless_traced(**values: Any) -> None:
    # Called when the transformation is built. Traced values (hyperparameters injected under
    # jit) cannot be converted to floats, so they cannot be checked; everything else is.
    for name, value in values.items():
        if not is_traced(value):
            hp.check_hyperparameter(name, value)


def as_real(array: jax.Array) -> jax.Array:
    """A complex array as real pairs along a new trailing axis; a real array unchanged."""
    if jnp.iscomplexobj(array):
        return jnp.stack([jnp.real(array), jnp.imag(array)], axis=-1)
    return array


def from_real(array: jax.Array, like_dtype) -> jax.Array:
    """Inverse of :func:`as_real` for an array in ``like_dtype`` (complex or real)."""
    if jnp.issubdtype(like_dtype, jnp.complexfloating):
        return jax.lax.complex(array[..., 0], array[..., 1]).astype(like_dtype)
    return array.astype(like_dtype)


def place_like(field: jax.Array, param: Any) -> jax.Array:
    # Outside jit, put a state field where its parameter lives (optax's own states, built
    # with zeros_like, do the same). Inside jit the compiler propagates the sharding.
    if is_traced(param) or not isinstance(param, jax.Array):
        return field
    if field.shape != param.shape:  # complex leaf: the trailing pair axis has no sharding
        return field
    return jax.device_put(field, param.sharding)


def transpose_states(leaf_states, structure, leaf_type: type, state_type: type):
    """A tree of per-leaf states (``leaf_type``, e.g. ``rule.VSGDState``) -> one ``state_type``
    (e.g. ``ScaleByVSGDState``, with the same field names) holding a tree of ``structure`` per
    field."""
    is_leaf_state = lambda x: isinstance(x, leaf_type)
    leaves = jax.tree.leaves(leaf_states, is_leaf=is_leaf_state)
    return state_type(**{
        name: jax.tree.unflatten(structure, [getattr(leaf, name) for leaf in leaves])
        for name in leaf_type._fields
    })


def unzip_updates(pairs, updates, leaf_type: type, state_type: type):
    """The tree of ``(update, leaf state)`` pairs returned per leaf -> ``(updates, state)``:
    the updates with the structure of ``updates`` (None leaves kept) and the leaf states
    transposed into one ``state_type``."""
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], leaf_type)
    new_updates = jax.tree.map(lambda pair: pair[0], pairs, is_leaf=is_pair)
    leaf_states = jax.tree.map(lambda pair: pair[1], pairs, is_leaf=is_pair)
    structure = jax.tree.structure(updates, is_leaf=lambda x: x is None)
    return new_updates, transpose_states(leaf_states, structure, leaf_type, state_type)
