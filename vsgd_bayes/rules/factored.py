r"""Factored VSGD as pure JAX functions (derived here; see ``derivations/12_factored_vsgd.md``).

A parameter tensor is viewed as a matrix (m, n)
(:func:`vsgd_bayes.hyperparameters.factored.matrix_shape`) and each precision of VSGD's model
is a row factor times a column factor, w_g,ij = r_i s_j and w_ghat,ij = p_i q_j, each factor
with a Gamma posterior q(r_i) = Gamma(alpha^r, beta^r_i) and so on. One step:

.. math::

    \sigma^2_{ij} &= \big(E[r_i]E[s_j] + E[p_i]E[q_j]\big)^{-1},\quad
    \mu_{ij} = \sigma^2_{ij}\big(E[r_i]E[s_j]\,u_{ij} + E[p_i]E[q_j]\,\hat g_{ij}\big)
        && \text{[factored-local]} \\
    \beta^{r\prime}_i &= b_{0,g} + \tfrac12\textstyle\sum_j E[s_j]\,D_{ij},\quad
    \beta^{s\prime}_j = a_0 + \tfrac12\textstyle\sum_i E[r_i]\,D_{ij}
        && \text{[factored-targets]} \\
    \beta &\leftarrow (1-\rho_{t,1})\beta + \rho_{t,1}\beta' \text{ (rows, then columns with
        the new rows)} && \text{[svi-blend]} \\
    c &= \tfrac1n\textstyle\sum_j E[s_j],\quad \beta^s_j \leftarrow c\,\beta^s_j,\quad
        \beta^r_i \leftarrow \beta^r_i / c && \text{[factored-gauge]}

with u = mu_{t-1}, D_ij = sigma^2_ij + (mu_ij - u_ij)^2, and the same for (p, q) with
N_ij = sigma^2_ij + (mu_ij - g_hat_ij)^2, b_{0,ghat} = K_g gamma and rho_{t,2}. The shapes are
a_0 at t = 1 and a_0 + n/2 (rows), a_0 + m/2 (columns) afterwards; they are not stored. A
tensor without a column factor (rank <= 1, or ``factorization="tensor"``) has an empty column
state and E[s] = 1: a vector is then VSGD per coordinate exactly, a ``"tensor"`` one precision
per tensor (eq:factored-tensor-targets). The parameter step is VSGD's [parameter-step].

Example:
    >>> import jax.numpy as jnp
    >>> from vsgd_bayes.rules import factored
    >>> state = factored.init_state(jnp.zeros((4, 3)))
    >>> state.drift_row_rate.shape, state.drift_column_rate.shape
    ((4,), (3,))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.hyperparameters import factored as factored_hp
from vsgd_bayes.rules.elbo import gamma_kl
from vsgd_bayes.rules.vsgd import parameter_step, state_dtype, svi_blend

__all__ = [
    "FactoredVSGDState",
    "FactorPosterior",
    "FactoredVariational",
    "init_state",
    "factor_expectation",
    "expected_precision",
    "local_update",
    "row_target",
    "column_target",
    "gauge",
    "update_factors",
    "posterior_update",
    "step",
    "gradient_posterior",
    "one_step_elbo",
]

_LOG_2PI = jnp.log(2.0 * jnp.pi)


class FactoredVSGDState(NamedTuple):
    """State of Factored VSGD for one tensor (the torch optimizer's state keys).

    Attributes:
        step: steps taken so far (int32 scalar).
        gradient_mean: posterior mean mu of the true gradient, the parameter's shape.
        drift_row_rate, drift_column_rate: rates beta^r (m,), beta^s (n,) of the drift
            precision's factors (the column rates are empty without a column factor).
        noise_row_rate, noise_column_rate: rates beta^p (m,), beta^q (n,) of the noise
            precision's factors.
    """

    step: jax.Array
    gradient_mean: jax.Array
    drift_row_rate: jax.Array
    drift_column_rate: jax.Array
    noise_row_rate: jax.Array
    noise_column_rate: jax.Array


class FactorPosterior(NamedTuple):
    """q of one precision w_ij = r_i s_j: row factors Gamma(row_shape, row_rate) and column
    factors Gamma(column_shape, column_rate) (empty columns: no column factor, s = 1)."""

    row_shape: jax.Array
    row_rate: jax.Array
    column_shape: jax.Array
    column_rate: jax.Array


class FactoredVariational(NamedTuple):
    """The mean-field family of the one-step factored model on an (m, n) matrix."""

    gradient_mean: jax.Array
    gradient_variance: jax.Array
    drift: FactorPosterior
    noise: FactorPosterior


def init_state(
    params: jax.Array,
    prior_strength: float = hp.DEFAULTS["prior_strength"],
    variance_ratio: float = hp.DEFAULTS["variance_ratio"],
    init: str = hp.DEFAULTS["init"],
    factorization: str = factored_hp.DEFAULTS["factorization"],
) -> FactoredVSGDState:
    """mu_0 = 0, row rates at the prior rates (gamma, K_g gamma), column rates at a_0 (the
    column prior Gamma(a_0, a_0) has mean 1, so the first step is VSGD's)."""
    dtype = state_dtype(params.dtype)
    rows, columns = factored_hp.matrix_shape(params.shape, factorization)
    if not factored_hp.is_factored(params.shape, factorization):
        columns = 0
    drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
    prior_shape = hp.prior_shape(prior_strength, init)
    return FactoredVSGDState(
        step=jnp.zeros([], jnp.int32),
        gradient_mean=jnp.zeros(params.shape, dtype),
        drift_row_rate=jnp.full((rows,), drift_prior_rate, dtype),
        drift_column_rate=jnp.full((columns,), prior_shape, dtype),
        noise_row_rate=jnp.full((rows,), noise_prior_rate, dtype),
        noise_column_rate=jnp.full((columns,), prior_shape, dtype),
    )


def factor_expectation(shape, rate):
    """E[x] = alpha / beta of a Gamma factor (elementwise)."""
    return shape / rate


def expected_precision(factor: FactorPosterior):
    """E[w_ij] = E[r_i] E[s_j] as an (m, n) matrix; E[r_i] as (m, 1) without columns."""
    rows = factor_expectation(factor.row_shape, factor.row_rate)[:, None]
    if factor.column_rate.shape[0] == 0:
        return rows
    return rows * factor_expectation(factor.column_shape, factor.column_rate)[None, :]


def local_update(gradient_mean_prev, drift_precision, noise_precision, gradient):
    """(mu, sigma^2) [factored-local]: VSGD's local update with the factored E[w]."""
    gradient_variance = 1.0 / (drift_precision + noise_precision)
    gradient_mean = gradient_variance * (
        drift_precision * gradient_mean_prev + noise_precision * gradient
    )
    return gradient_mean, gradient_variance


def _column_expectation(factor: FactorPosterior, columns: int):
    if factor.column_rate.shape[0] == 0:
        return jnp.ones((columns,), factor.row_rate.dtype)
    return factor_expectation(factor.column_shape, factor.column_rate)


def row_target(prior_rate, column_expectation, residual):
    """beta' of the row factors: b_0 + 1/2 sum_j E[s_j] D_ij [factored-targets]."""
    return prior_rate + 0.5 * jnp.sum(column_expectation[None, :] * residual, axis=1)


def column_target(prior_shape, row_expectation, residual):
    """beta' of the column factors: a_0 + 1/2 sum_i E[r_i] D_ij [factored-targets]."""
    return prior_shape + 0.5 * jnp.sum(row_expectation[:, None] * residual, axis=0)


def gauge(row_rate, column_shape, column_rate):
    """The representative with mean column factor one [factored-gauge]: c = mean_j E[s_j],
    beta^s <- c beta^s, beta^r <- beta^r / c (E[r_i]E[s_j] and E ln r_i + E ln s_j unchanged).
    An empty column set has nothing to fix."""
    if column_rate.shape[0] == 0:
        return row_rate, column_rate
    scale = jnp.mean(factor_expectation(column_shape, column_rate))
    return row_rate / scale, column_rate * scale


def update_factors(factor: FactorPosterior, posterior_shapes, residual, prior_rate,
                   prior_shape, step_size):
    """One coordinate-ascent sweep of a precision's factors, blended with rho.

    Rows first, with the current columns (``factor`` holds the shapes before the step); then
    the columns with the new rows (posterior shapes ``posterior_shapes`` = (alpha^r, alpha^s));
    then the gauge. Returns (row_rate, column_rate).
    """
    rows, columns = residual.shape
    row_shape, column_shape = posterior_shapes
    row_rate = svi_blend(
        factor.row_rate, row_target(prior_rate, _column_expectation(factor, columns), residual),
        step_size,
    )
    if factor.column_rate.shape[0] == 0:
        return row_rate, factor.column_rate
    row_expectation = factor_expectation(row_shape, row_rate)
    column_rate = svi_blend(
        factor.column_rate, column_target(prior_shape, row_expectation, residual), step_size
    )
    return gauge(row_rate, column_shape, column_rate)


def _shapes(state: FactoredVSGDState, step_count, prior_strength, init, factorization, dtype):
    """(shapes before the step, posterior shapes), each (alpha^r, alpha^s)."""
    prior_shape = hp.prior_shape(prior_strength, init)
    shape = state.gradient_mean.shape
    posterior = factored_hp.factor_shapes(shape, factorization, prior_shape, 2)
    before = tuple(
        jnp.where(step_count == 1, prior_shape, alpha).astype(dtype) for alpha in posterior
    )
    return before, tuple(jnp.asarray(alpha, dtype) for alpha in posterior)


def posterior_update(
    gradient,
    state: FactoredVSGDState,
    *,
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_strength=hp.DEFAULTS["prior_strength"],
    kappa1=hp.DEFAULTS["kappa1"],
    kappa2=hp.DEFAULTS["kappa2"],
    init: str = hp.DEFAULTS["init"],
    factorization: str = factored_hp.DEFAULTS["factorization"],
) -> tuple[jax.Array, FactoredVSGDState]:
    """The posterior step only: returns (sigma^2 in the parameter's shape, new state).

    ``init`` and ``factorization`` must be static under ``jax.jit``.
    """
    dtype = state.gradient_mean.dtype
    shape = state.gradient_mean.shape
    matrix = factored_hp.matrix_shape(shape, factorization)
    step_count = state.step + 1
    before, posterior = _shapes(state, step_count, prior_strength, init, factorization, dtype)
    drift = FactorPosterior(before[0], state.drift_row_rate, before[1], state.drift_column_rate)
    noise = FactorPosterior(before[0], state.noise_row_rate, before[1], state.noise_column_rate)
    gradient_mean_prev = state.gradient_mean.reshape(matrix)
    observed = gradient.astype(dtype).reshape(matrix)
    gradient_mean, gradient_variance = local_update(
        gradient_mean_prev, expected_precision(drift), expected_precision(noise), observed
    )
    gradient_variance = jnp.broadcast_to(gradient_variance, matrix)
    drift_residual = gradient_variance + (gradient_mean - gradient_mean_prev) ** 2
    noise_residual = gradient_variance + (gradient_mean - observed) ** 2
    drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
    prior_shape = hp.prior_shape(prior_strength, init)
    drift_step_size, noise_step_size = hp.step_sizes(step_count.astype(dtype), kappa1, kappa2)
    drift_rows, drift_columns = update_factors(
        drift, posterior, drift_residual, drift_prior_rate, prior_shape, drift_step_size
    )
    noise_rows, noise_columns = update_factors(
        noise, posterior, noise_residual, noise_prior_rate, prior_shape, noise_step_size
    )
    new_state = FactoredVSGDState(
        step=step_count,
        gradient_mean=gradient_mean.reshape(shape),
        drift_row_rate=drift_rows,
        drift_column_rate=drift_columns,
        noise_row_rate=noise_rows,
        noise_column_rate=noise_columns,
    )
    return gradient_variance.reshape(shape), new_state


def step(
    params,
    gradient,
    state: FactoredVSGDState,
    *,
    lr=hp.DEFAULTS["lr"],
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_strength=hp.DEFAULTS["prior_strength"],
    kappa1=hp.DEFAULTS["kappa1"],
    kappa2=hp.DEFAULTS["kappa2"],
    weight_decay=hp.DEFAULTS["weight_decay"],
    eps=hp.DEFAULTS["eps"],
    init: str = hp.DEFAULTS["init"],
    factorization: str = factored_hp.DEFAULTS["factorization"],
) -> tuple[jax.Array, FactoredVSGDState]:
    """One Factored VSGD step on one array (hyperparameters are not validated here)."""
    gradient_variance, new_state = posterior_update(
        gradient, state, variance_ratio=variance_ratio, prior_strength=prior_strength,
        kappa1=kappa1, kappa2=kappa2, init=init, factorization=factorization,
    )
    dtype = new_state.gradient_mean.dtype
    new_params = parameter_step(
        params.astype(dtype), new_state.gradient_mean, gradient_variance, lr, weight_decay, eps
    )
    return new_params.astype(params.dtype), new_state


def gradient_posterior(
    state: FactoredVSGDState,
    prior_strength=hp.DEFAULTS["prior_strength"],
    init: str = hp.DEFAULTS["init"],
    factorization: str = factored_hp.DEFAULTS["factorization"],
):
    """(drift variance 1/(E[r]E[s]), noise variance 1/(E[p]E[q]), momentum
    E[r]E[s] / (E[r]E[s] + E[p]E[q])) in the parameter's shape, after >= 1 step."""
    shape = state.gradient_mean.shape
    matrix = factored_hp.matrix_shape(shape, factorization)
    prior_shape = hp.prior_shape(prior_strength, init)
    row_shape, column_shape = factored_hp.factor_shapes(shape, factorization, prior_shape, 2)
    drift = expected_precision(
        FactorPosterior(row_shape, state.drift_row_rate, column_shape, state.drift_column_rate)
    )
    noise = expected_precision(
        FactorPosterior(row_shape, state.noise_row_rate, column_shape, state.noise_column_rate)
    )
    drift, noise = jnp.broadcast_to(drift, matrix), jnp.broadcast_to(noise, matrix)
    return (
        (1.0 / drift).reshape(shape),
        (1.0 / noise).reshape(shape),
        (drift / (drift + noise)).reshape(shape),
    )


def _factor_terms(factor: FactorPosterior, residual, prior_row_rate, prior_shape):
    """Expected log-likelihood of the Gaussian factor with precision r_i s_j, summed, minus
    the KLs of the Gamma factors from their priors (rows: Gamma(a_0, b_0); columns:
    Gamma(a_0, a_0))."""
    rows, columns = residual.shape
    expected_log = (digamma(factor.row_shape) - jnp.log(factor.row_rate))[:, None]
    kl = jnp.sum(gamma_kl(factor.row_shape, factor.row_rate, prior_shape, prior_row_rate))
    if factor.column_rate.shape[0] > 0:
        expected_log = expected_log + (digamma(factor.column_shape)
                                       - jnp.log(factor.column_rate))[None, :]
        kl = kl + jnp.sum(gamma_kl(factor.column_shape, factor.column_rate, prior_shape,
                                   prior_shape))
    likelihood = 0.5 * (expected_log - _LOG_2PI) - 0.5 * expected_precision(factor) * residual
    return jnp.sum(jnp.broadcast_to(likelihood, (rows, columns))) - kl


def one_step_elbo(q: FactoredVariational, gradient_mean_prev, gradient, prior_strength,
                  variance_ratio, prior_shape):
    r"""The closed-form one-step ELBO (eq:factored-elbo) of an (m, n) matrix.

    .. math::
        \sum_{ij}\big(E\ln N(g_{ij}|u_{ij}, 1/(r_is_j)) + E\ln N(\hat g_{ij}|g_{ij},
        1/(p_iq_j)) + H[q(g_{ij})]\big) - \sum_i KL_i - \sum_j KL_j

    with the exact prior rates (gamma, K_g gamma) of the rows and Gamma(a_0, a_0) of the
    columns.
    """
    drift_residual = q.gradient_variance + (q.gradient_mean - gradient_mean_prev) ** 2
    noise_residual = q.gradient_variance + (q.gradient_mean - gradient) ** 2
    entropy = 0.5 * (_LOG_2PI + 1.0 + jnp.log(q.gradient_variance))
    return (
        _factor_terms(q.drift, drift_residual, prior_strength, prior_shape)
        + _factor_terms(q.noise, noise_residual, variance_ratio * prior_strength, prior_shape)
        + jnp.sum(entropy)
    )
