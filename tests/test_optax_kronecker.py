"""Tests of vsgd_bayes.optax.kronecker: equal to rules.kronecker.step, jit, per-leaf state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vsgd_bayes.optax import ScaleByKroneckerVSGDState, kronecker_vsgd
from vsgd_bayes.rules import kronecker as kronecker_rule

SETTINGS = dict(
    variance_ratio=9.0,
    prior_strength=1e-6,
    kappa1=0.7,
    kappa2=0.95,
    eps=0.0,
    init="paper",
    basis_update_every=2,
)
SHAPES = {"w": (4, 3), "b": (3,), "row": (1, 5)}


@pytest.mark.parametrize("jit", [False, True])
def test_equal_to_rule_step_and_state_is_the_kronecker_state_per_leaf(jit):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = {name: jnp.ones(shape) for name, shape in SHAPES.items()}
        optimizer = kronecker_vsgd(0.05, **SETTINGS)
        state = optimizer.init(params)
        update = jax.jit(optimizer.update) if jit else optimizer.update
        expected = dict(params)
        states = {n: kronecker_rule.init_state(p, 1e-6, 9.0, "paper") for n, p in params.items()}
        actual = params
        for _ in range(5):
            grads = {n: jnp.asarray(rng.normal(size=s)) for n, s in SHAPES.items()}
            updates, state = update(grads, state, actual)
            actual = optax.apply_updates(actual, updates)
            for n in SHAPES:
                expected[n], states[n] = kronecker_rule.step(
                    expected[n], grads[n], states[n], lr=0.05, weight_decay=0.0, **SETTINGS
                )
        inner = state[0]
        assert isinstance(inner, ScaleByKroneckerVSGDState)
        assert inner._fields == kronecker_rule.KroneckerState._fields
        # eagerly the same operations (bitwise up to the chain's add of zero decay); under jit
        # XLA may fuse the matrix products differently: 1e-12 of each array's scale
        for n in SHAPES:
            scale = float(jnp.max(jnp.abs(expected[n])))
            np.testing.assert_allclose(actual[n], expected[n], rtol=0, atol=1e-12 * scale)
            for field in kronecker_rule.KroneckerState._fields:
                want = getattr(states[n], field)
                got = getattr(inner, field)[n]
                assert got.shape == want.shape, (n, field)
                np.testing.assert_allclose(
                    got, want, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want), initial=1.0))
                )
        assert inner.row_basis["b"].shape == (0, 0) and inner.col_basis["w"].shape == (3, 3)


def test_bad_hyperparameters_raise_naming_the_argument():
    with pytest.raises(ValueError, match=r"Invalid basis_update_every: 0"):
        kronecker_vsgd(basis_update_every=0)
