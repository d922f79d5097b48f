r"""Kronecker VSGD's one-step model in NumPyro, in the original coordinates, and a simulator.

For an (m, n) matrix (``derivations/16_kronecker_vsgd.md``, [kronecker-model]), given the
orthogonal basis (L, R), Q = L (x) R (row-major vec: vec(A X B^T) = (A (x) B) vec X) and the
previous posterior mean M_{t-1}:

.. math::

    w_{g,ij} \sim \mathrm{Gamma}(a_0, \gamma),\quad
    w_{\hat g,ij} \sim \mathrm{Gamma}(a_0, K_g\gamma), \\
    \operatorname{vec} G \sim N\big(\operatorname{vec} M_{t-1},\
        Q\,\mathrm{diag}(1/w_g)\,Q^\top\big),\quad
    \operatorname{vec}\hat G \mid G \sim N\big(\operatorname{vec} G,\
        Q\,\mathrm{diag}(1/w_{\hat g})\,Q^\top\big).

The precisions are per coordinate of the basis, entry (i, j) of w that of column i of L
times column j of R. Site names: ``w_g``, ``w_ghat`` (shape (m, n), plates ``rows`` and
``columns``), ``g``, ``g_hat`` (vectors of length m n, row-major vec). With L = R = I it is
:func:`vsgd_bayes.models.vsgd.one_step_model` of the m n coordinates.

:func:`simulate_matrix_normal_stream` draws a stream whose true gradient is a random walk and
whose noise is matrix normal, MN(0, U, V) (vec E ~ N(0, U (x) V)), for the checks of
:mod:`vsgd_bayes.validation.kronecker`.

Example:
    >>> import jax.numpy as jnp
    >>> from numpyro.handlers import seed, trace
    >>> tr = trace(seed(one_step_model, 0)).get_trace(jnp.zeros((2, 3)), jnp.ones((2, 3)),
    ...                                               prior_strength=1.0)
    >>> [name for name, site in tr.items() if site["type"] == "sample"]
    ['w_g', 'w_ghat', 'g', 'g_hat']
    >>> tr["g"]["value"].shape
    (6,)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.models.vsgd import resolve_prior_shape

__all__ = ["basis_matrix", "one_step_model", "simulate_matrix_normal_stream"]


def basis_matrix(row_basis, col_basis):
    """Q = L (x) R: the orthogonal map from the basis to the original coordinates of the
    row-major vec, vec(L X~ R^T) = Q vec X~."""
    return jnp.kron(row_basis, col_basis)


def _matrix_shape(gradient_mean_prev) -> tuple[int, int]:
    shape = jnp.shape(gradient_mean_prev)
    if len(shape) != 2:
        raise ValueError(f"Invalid gradient_mean_prev: shape {shape} (must be a matrix (m, n))")
    return shape


def one_step_model(
    gradient_mean_prev,
    gradient=None,
    *,
    row_basis=None,
    col_basis=None,
    prior_strength=hp.DEFAULTS["prior_strength"],
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_shape=None,
    init: str | None = None,
):
    """The one-step Kronecker model of an (m, n) matrix in the original coordinates.

    Args:
        gradient_mean_prev: M_{t-1}, shape (m, n).
        gradient: the observed G_hat, shape (m, n), or None to simulate it.
        row_basis, col_basis: L (m x m) and R (n x n), orthogonal; None for the identity.
        prior_strength, variance_ratio, prior_shape, init: as in
            :func:`vsgd_bayes.models.vsgd.one_step_model` (a_0 from ``init``, default paper).

    Returns:
        The sampled (or observed) G_hat, shape (m, n).
    """
    rows, columns = _matrix_shape(gradient_mean_prev)
    dtype = jnp.result_type(gradient_mean_prev, float)
    row_basis = jnp.eye(rows, dtype=dtype) if row_basis is None else row_basis
    col_basis = jnp.eye(columns, dtype=dtype) if col_basis is None else col_basis
    if row_basis.shape != (rows, rows) or col_basis.shape != (columns, columns):
        raise ValueError(
            f"Invalid bases: shapes {row_basis.shape}, {col_basis.shape} (must be "
            f"({rows}, {rows}) and ({columns}, {columns}))"
        )
    q = basis_matrix(row_basis, col_basis)
    shape = resolve_prior_shape(prior_strength, prior_shape, init)
    with numpyro.plate("rows", rows, dim=-2), numpyro.plate("columns", columns, dim=-1):
        w_g = numpyro.sample("w_g", dist.Gamma(shape, prior_strength))
        w_ghat = numpyro.sample("w_ghat", dist.Gamma(shape, variance_ratio * prior_strength))
    drift_covariance = (q / w_g.reshape(-1)) @ q.T
    noise_covariance = (q / w_ghat.reshape(-1)) @ q.T
    g = numpyro.sample(
        "g",
        dist.MultivariateNormal(
            jnp.reshape(gradient_mean_prev, -1), covariance_matrix=drift_covariance
        ),
    )
    observed = None if gradient is None else jnp.reshape(gradient, -1)
    g_hat = numpyro.sample(
        "g_hat", dist.MultivariateNormal(g, covariance_matrix=noise_covariance), obs=observed
    )
    return g_hat.reshape(rows, columns)


def simulate_matrix_normal_stream(
    key,
    num_steps: int,
    row_covariance,
    col_covariance,
    drift_scale=0.0,
    initial_gradient=None,
) -> tuple[jax.Array, jax.Array]:
    """(true_gradients, observed_gradients), each (T, m, n): G_t = G_{t-1} + drift_scale Z_t
    (Z_t standard normal, G_0 = ``initial_gradient`` or 0) and G_hat_t = G_t + E_t with
    E_t ~ MN(0, U, V): E = A Z B^T, A A^T = U, B B^T = V, so vec E ~ N(0, U (x) V).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> true, observed = simulate_matrix_normal_stream(
        ...     jax.random.PRNGKey(0), 5, jnp.eye(3), jnp.eye(2), drift_scale=0.1)
        >>> true.shape, observed.shape
        ((5, 3, 2), (5, 3, 2))
    """
    row_covariance = jnp.asarray(row_covariance)
    col_covariance = jnp.asarray(col_covariance)
    rows, columns = row_covariance.shape[0], col_covariance.shape[0]
    dtype = jnp.result_type(row_covariance, col_covariance, float)
    start = (
        jnp.zeros((rows, columns), dtype) if initial_gradient is None
        else jnp.asarray(initial_gradient, dtype)
    )  # fmt: skip
    drift_key, noise_key = jax.random.split(key)
    steps = drift_scale * jax.random.normal(drift_key, (num_steps, rows, columns), dtype)
    true = start + jnp.cumsum(steps, axis=0)
    row_factor = jnp.linalg.cholesky(row_covariance)
    col_factor = jnp.linalg.cholesky(col_covariance)
    white = jax.random.normal(noise_key, (num_steps, rows, columns), dtype)
    noise = row_factor @ white @ col_factor.T
    return true, true + noise
