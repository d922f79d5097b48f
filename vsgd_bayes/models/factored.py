r"""Factored VSGD's one-step model in NumPyro: VSGD's model with row x column precisions.

For an (m, n) matrix of coordinates (a parameter's matrix view), with u = mu_{t-1}
(``derivations/12_factored_vsgd.md``, eq:factored-model):

.. math::

    r_i \sim \mathrm{Gamma}(a_0, \gamma),\ p_i \sim \mathrm{Gamma}(a_0, K_g\gamma),\quad
    s_j, q_j \sim \mathrm{Gamma}(a_0, a_0), \\
    g_{ij} \sim N(u_{ij}, 1/(r_i s_j)),\quad \hat g_{ij} \mid g_{ij} \sim N(g_{ij}, 1/(p_i q_j)).

Site names: ``w_g_row`` (r), ``w_g_column`` (s), ``w_ghat_row`` (p), ``w_ghat_column`` (q),
``g``, ``g_hat``; plates ``rows`` and ``columns``. The guide is the mean-field family of
:class:`vsgd_bayes.rules.factored.FactoredVariational`, whose closed-form ELBO is
:func:`vsgd_bayes.rules.factored.one_step_elbo`.

Example:
    >>> import jax.numpy as jnp
    >>> from numpyro.handlers import seed, trace
    >>> tr = trace(seed(one_step_model, 0)).get_trace(jnp.zeros((2, 3)), jnp.ones((2, 3)),
    ...                                               prior_strength=1.0)
    >>> [name for name, site in tr.items() if site["type"] == "sample"]
    ['w_g_row', 'w_ghat_row', 'w_g_column', 'w_ghat_column', 'g', 'g_hat']
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.models.vsgd import resolve_prior_shape
from vsgd_bayes.rules.factored import FactoredVariational, FactorPosterior

__all__ = ["one_step_model", "one_step_guide", "guide_variational"]


def _matrix_shape(gradient_mean_prev) -> tuple[int, int]:
    shape = jnp.shape(gradient_mean_prev)
    if len(shape) != 2:
        raise ValueError(
            f"Invalid gradient_mean_prev: shape {shape} (must be a matrix (m, n), the "
            "parameter's matrix view)"
        )
    return shape


def one_step_model(
    gradient_mean_prev,
    gradient=None,
    *,
    prior_strength=hp.DEFAULTS["prior_strength"],
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_shape=None,
    init: str | None = None,
):
    """The one-step factored model on an (m, n) matrix (module docstring).

    Args:
        gradient_mean_prev: u = mu_{t-1}, shape (m, n).
        gradient: the observed g_hat, shape (m, n), or None to simulate it.
        prior_strength, variance_ratio, prior_shape, init: as in
            :func:`vsgd_bayes.models.vsgd.one_step_model` (a_0 from ``init``, default paper).

    Returns:
        The sampled (or observed) ``g_hat``.
    """
    rows, columns = _matrix_shape(gradient_mean_prev)
    shape = resolve_prior_shape(prior_strength, prior_shape, init)
    row_plate = numpyro.plate("rows", rows, dim=-2)
    column_plate = numpyro.plate("columns", columns, dim=-1)
    with row_plate:
        w_g_row = numpyro.sample("w_g_row", dist.Gamma(shape, prior_strength))
        w_ghat_row = numpyro.sample(
            "w_ghat_row", dist.Gamma(shape, variance_ratio * prior_strength)
        )
    with column_plate:
        w_g_column = numpyro.sample("w_g_column", dist.Gamma(shape, shape))
        w_ghat_column = numpyro.sample("w_ghat_column", dist.Gamma(shape, shape))
    with row_plate, column_plate:
        g = numpyro.sample(
            "g", dist.Normal(gradient_mean_prev, 1.0 / jnp.sqrt(w_g_row * w_g_column))
        )
        return numpyro.sample(
            "g_hat", dist.Normal(g, 1.0 / jnp.sqrt(w_ghat_row * w_ghat_column)), obs=gradient
        )


_FACTOR_SITES = {
    "drift": ("w_g_row", "w_g_column"),
    "noise": ("w_ghat_row", "w_ghat_column"),
}


def one_step_guide(
    gradient_mean_prev,
    gradient=None,
    *,
    initial: FactoredVariational,
    prior_strength=hp.DEFAULTS["prior_strength"],
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_shape=None,
    init: str | None = None,
):
    """Mean-field guide: q(g_ij) = N(mu_ij, sigma_ij^2) and a Gamma per factor.

    Parameters (``numpyro.param``): ``gradient_mean``, ``gradient_scale`` (sigma) and, per
    precision (``drift``, ``noise``), ``{precision}_{row,column}_{shape,rate}`` (positive,
    optimised on the log scale). ``initial`` gives the starting values (a
    :class:`~vsgd_bayes.rules.factored.FactoredVariational`, with the variance sigma^2).
    """
    rows, columns = _matrix_shape(gradient_mean_prev)
    positive = constraints.positive
    gradient_mean = numpyro.param("gradient_mean", initial.gradient_mean)
    gradient_scale = numpyro.param(
        "gradient_scale", jnp.sqrt(initial.gradient_variance), constraint=positive
    )
    factors = {}
    for name in ("drift", "noise"):
        start = getattr(initial, name)
        factors[name] = [
            numpyro.param(f"{name}_{part}", getattr(start, part), constraint=positive)
            for part in FactorPosterior._fields
        ]
    row_plate = numpyro.plate("rows", rows, dim=-2)
    column_plate = numpyro.plate("columns", columns, dim=-1)
    with row_plate:
        for name, (row_site, _) in _FACTOR_SITES.items():
            row_shape, row_rate = factors[name][0], factors[name][1]
            numpyro.sample(row_site, dist.Gamma(row_shape[:, None], row_rate[:, None]))
    with column_plate:
        for name, (_, column_site) in _FACTOR_SITES.items():
            numpyro.sample(column_site, dist.Gamma(factors[name][2], factors[name][3]))
    with row_plate, column_plate:
        numpyro.sample("g", dist.Normal(gradient_mean, gradient_scale))


def guide_variational(params) -> FactoredVariational:
    """The guide's fitted ``numpyro.param`` values as a ``FactoredVariational``."""

    def factor(name: str) -> FactorPosterior:
        return FactorPosterior(*(params[f"{name}_{part}"] for part in FactorPosterior._fields))

    return FactoredVariational(
        params["gradient_mean"], params["gradient_scale"] ** 2, factor("drift"), factor("noise")
    )
