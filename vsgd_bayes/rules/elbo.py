r"""The closed-form ELBO of VSGD's one-step model, in pure JAX.

This is the objective that the closed-form updates of :mod:`vsgd_bayes.rules.vsgd` are claimed to
optimise; :mod:`vsgd_bayes.validation` checks the claim with automatic differentiation and
against NumPyro's Monte-Carlo estimator of the same ELBO.

Model (per coordinate, see :func:`vsgd_bayes.models.vsgd.one_step_model`): w_g ~ Gamma(a_0, gamma),
w_ghat ~ Gamma(a_0, K_g gamma), g ~ N(mu_{t-1}, 1/w_g), g_hat ~ N(g, 1/w_ghat) observed.
Mean-field family: q(g) = N(mu, sigma^2), q(w_g) = Gamma(a_g, b_g), q(w_ghat) =
Gamma(a_ghat, b_ghat). Symbols -> argument names: mu_{t-1} ``gradient_mean_prev``, g_hat
``gradient``, gamma ``prior_strength``, K_g ``variance_ratio``, a_0 ``prior_shape``; the fields
of :class:`OneStepVariational` name the variational parameters.

With E[w] = a/b and E[ln w] = psi(a) - ln b under Gamma(a, b):

.. math::

    \mathcal L &= E_q[\ln N(g \mid \mu_{t-1}, 1/w_g)] + E_q[\ln N(\hat g \mid g, 1/w_{\hat g})]
        + H[q(g)] - KL(q(w_g)\,\|\,p(w_g)) - KL(q(w_{\hat g})\,\|\,p(w_{\hat g})) \\
    E_q[\ln N(x \mid m, 1/w)] &= \tfrac12(\psi(a) - \ln b - \ln 2\pi)
        - \tfrac12 \tfrac{a}{b} E_q[(x - m)^2],
        \quad E_q[(g-\mu_{t-1})^2] = \sigma^2 + (\mu-\mu_{t-1})^2,
        \quad E_q[(\hat g-g)^2] = \sigma^2 + (\mu-\hat g)^2 \\
    H[q(g)] &= \tfrac12 \ln(2\pi e \sigma^2) \\
    KL(\mathrm{Gamma}(a,b)\,\|\,\mathrm{Gamma}(a_0,b_0)) &= (a-a_0)\psi(a) - \ln\Gamma(a)
        + \ln\Gamma(a_0) + a_0(\ln b - \ln b_0) + a\,\frac{b_0 - b}{b}

References:
    Chen, Kuzina, Esmaeili & Tomczak (2024), Variational Stochastic Gradient Descent for Deep
    Neural Networks, arXiv:2404.06549. Hoffman, Blei, Wang & Paisley (2013), Stochastic
    Variational Inference, JMLR 14.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln

from vsgd_bayes.rules import vsgd as rule

__all__ = [
    "OneStepVariational",
    "OneStepELBOTerms",
    "gamma_kl",
    "expected_log_normal",
    "one_step_elbo_terms",
    "one_step_elbo",
    "local_step",
    "global_step",
    "cavi_optimum",
]

_LOG_2PI = jnp.log(2.0 * jnp.pi)


class OneStepVariational(NamedTuple):
    """Parameters of the mean-field posterior of the one-step model (one value per coordinate).

    Attributes:
        gradient_mean: mu, mean of q(g).
        gradient_variance: sigma^2, variance of q(g).
        drift_shape, drift_rate: a_g, b_g of q(w_g) = Gamma(a_g, b_g).
        noise_shape, noise_rate: a_ghat, b_ghat of q(w_ghat) = Gamma(a_ghat, b_ghat).
    """

    gradient_mean: jax.Array
    gradient_variance: jax.Array
    drift_shape: jax.Array
    drift_rate: jax.Array
    noise_shape: jax.Array
    noise_rate: jax.Array


class OneStepELBOTerms(NamedTuple):
    """The five terms of the one-step ELBO, per coordinate (ELBO = first three - last two)."""

    drift_likelihood: jax.Array  # E_q[ln N(g | mu_{t-1}, 1/w_g)]
    noise_likelihood: jax.Array  # E_q[ln N(g_hat | g, 1/w_ghat)]
    gradient_entropy: jax.Array  # H[q(g)]
    drift_kl: jax.Array  # KL(q(w_g) || p(w_g))
    noise_kl: jax.Array  # KL(q(w_ghat) || p(w_ghat))


def gamma_kl(shape, rate, prior_shape, prior_rate):
    r"""KL(Gamma(a, b) || Gamma(a_0, b_0)), shape/rate parametrisation, elementwise.

    .. math::
        (a-a_0)\psi(a) - \ln\Gamma(a) + \ln\Gamma(a_0) + a_0(\ln b - \ln b_0) + a(b_0 - b)/b

    Args:
        shape, rate: a, b of the first Gamma.
        prior_shape, prior_rate: a_0, b_0 of the second.

    Returns:
        The KL divergence (>= 0, zero iff the two are equal).

    Example:
        >>> float(gamma_kl(2.0, 3.0, 2.0, 3.0))
        0.0
    """
    return (
        (shape - prior_shape) * digamma(shape)
        - gammaln(shape)
        + gammaln(prior_shape)
        + prior_shape * (jnp.log(rate) - jnp.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )


def expected_log_normal(precision_shape, precision_rate, expected_squared_residual):
    r"""E_q[ln N(x | m, 1/w)] with w ~ Gamma(a, b) and E_q[(x - m)^2] given.

    .. math::
        \tfrac12(\psi(a) - \ln b - \ln 2\pi) - \tfrac12\,\tfrac{a}{b}\,E_q[(x-m)^2]
    """
    expected_log_precision = digamma(precision_shape) - jnp.log(precision_rate)
    expected_precision = rule.expected_precision(precision_shape, precision_rate)
    return 0.5 * (expected_log_precision - _LOG_2PI) - 0.5 * expected_precision * (
        expected_squared_residual
    )


def one_step_elbo_terms(
    variational: OneStepVariational,
    gradient_mean_prev,
    gradient,
    prior_strength,
    variance_ratio,
    prior_shape,
) -> OneStepELBOTerms:
    """The five ELBO terms per coordinate (see the module docstring for the formulas)."""
    q = variational
    drift_residual = q.gradient_variance + (q.gradient_mean - gradient_mean_prev) ** 2
    noise_residual = q.gradient_variance + (q.gradient_mean - gradient) ** 2
    return OneStepELBOTerms(
        drift_likelihood=expected_log_normal(q.drift_shape, q.drift_rate, drift_residual),
        noise_likelihood=expected_log_normal(q.noise_shape, q.noise_rate, noise_residual),
        gradient_entropy=0.5 * (_LOG_2PI + 1.0 + jnp.log(q.gradient_variance)),
        drift_kl=gamma_kl(q.drift_shape, q.drift_rate, prior_shape, prior_strength),
        noise_kl=gamma_kl(
            q.noise_shape, q.noise_rate, prior_shape, variance_ratio * prior_strength
        ),
    )


def one_step_elbo(
    variational: OneStepVariational,
    gradient_mean_prev,
    gradient,
    prior_strength,
    variance_ratio,
    prior_shape,
):
    """Closed-form ELBO of the one-step model, summed over coordinates.

    All arguments broadcast against each other (one value per coordinate, or scalars).

    Args:
        variational: the mean-field parameters (:class:`OneStepVariational`).
        gradient_mean_prev: mu_{t-1}, the prior mean of the true gradient g.
        gradient: g_hat, the observed mini-batch gradient.
        prior_strength: gamma, rate of p(w_g) (and K_g gamma that of p(w_ghat)).
        variance_ratio: K_g.
        prior_shape: a_0, the shape of both Gamma priors (gamma in the paper, gamma + 5e-5 in
            the authors' code, see :func:`vsgd_bayes.hyperparameters.prior_shape`).

    Returns:
        The scalar ELBO, a lower bound on ln p(g_hat).

    Example:
        >>> import jax.numpy as jnp
        >>> q = cavi_optimum(jnp.array([0.0]), jnp.array([1.0]), 1e-8, 30.0, 1e-8)
        >>> bool(jnp.isfinite(one_step_elbo(q, 0.0, 1.0, 1e-8, 30.0, 1e-8)))
        True
    """
    terms = one_step_elbo_terms(
        variational, gradient_mean_prev, gradient, prior_strength, variance_ratio, prior_shape
    )
    per_coordinate = (
        terms.drift_likelihood
        + terms.noise_likelihood
        + terms.gradient_entropy
        - terms.drift_kl
        - terms.noise_kl
    )
    return jnp.sum(per_coordinate)


def local_step(
    variational: OneStepVariational, gradient_mean_prev, gradient, local_update=rule.local_update
) -> OneStepVariational:
    """CAVI update of q(g) given q(w_g), q(w_ghat), through
    :func:`vsgd_bayes.rules.vsgd.local_update`.

    The rule takes one shape for both precisions (a_g = a_ghat in VSGD); to allow different
    shapes here the rates are passed per unit of shape, b/a, with shape 1: the rule then uses
    E[w] = 1 / (b/a) = a/b, the same expected precision.

    ``local_update`` is a test hook (a deliberately broken update must be caught).
    """
    q = variational
    gradient_mean, gradient_variance = local_update(
        gradient_mean_prev,
        q.drift_rate / q.drift_shape,
        q.noise_rate / q.noise_shape,
        gradient,
        1.0,
    )
    return q._replace(gradient_mean=gradient_mean, gradient_variance=gradient_variance)


def global_step(
    variational: OneStepVariational,
    gradient_mean_prev,
    gradient,
    prior_strength,
    variance_ratio,
    prior_shape,
    *,
    update_drift: bool = True,
    update_noise: bool = True,
    global_targets=rule.global_targets,
) -> OneStepVariational:
    """CAVI update (rho = 1) of q(w_g) and/or q(w_ghat) given q(g): a' = a_0 + 1/2, b' targets.

    The rate targets come from :func:`vsgd_bayes.rules.vsgd.global_targets` (``global_targets`` is a
    test hook); the shape target a_0 + 1/2 is the prior shape plus half an observation.
    """
    q = variational
    drift_rate_target, noise_rate_target = global_targets(
        q.gradient_mean,
        q.gradient_variance,
        gradient_mean_prev,
        gradient,
        prior_strength,
        variance_ratio,
    )
    shape_target = prior_shape + 0.5
    if update_drift:
        q = q._replace(
            drift_shape=jnp.broadcast_to(shape_target, jnp.shape(drift_rate_target)),
            drift_rate=drift_rate_target,
        )
    if update_noise:
        q = q._replace(
            noise_shape=jnp.broadcast_to(shape_target, jnp.shape(noise_rate_target)),
            noise_rate=noise_rate_target,
        )
    return q


def cavi_optimum(
    gradient_mean_prev,
    gradient,
    prior_strength,
    variance_ratio,
    prior_shape,
    initial: OneStepVariational | None = None,
    *,
    max_iterations: int = 100_000,
    relative_tolerance: float = 1e-14,
    local_update=rule.local_update,
    global_targets=rule.global_targets,
) -> OneStepVariational:
    r"""Optimum of the one-step ELBO by coordinate ascent (local, then global with rho = 1).

    Starting from ``initial`` (default: the prior rates (gamma, K_g gamma) with shape a_0,
    i.e. VSGD's state before its first step), alternates :func:`local_step` and
    :func:`global_step` until no rate changes by more than ``relative_tolerance`` (relative),
    or ``max_iterations`` rounds. Each round cannot decrease the ELBO (checked by
    ``vsgd-bayes validate``), so the limit is a stationary point; e.g. for K_g = 1,
    gamma = a_0 -> 0, mu_{t-1} = 0, g_hat = 1: mu = 1/2, sigma^2 = b_g = b_ghat = 1/4, a = 1/2.

    Conditioning: when gamma is tiny compared with (g_hat - mu_{t-1})^2 (below ~1e-4 of it)
    the priors are close to the improper scale-free 1/w and the ELBO is almost flat along a
    ridge towards b_g -> 0; the iteration then creeps along it and may stop on
    ``max_iterations`` before the optimum. ``vsgd-bayes validate`` uses this function only
    where gamma / (g_hat - mu_{t-1})^2 >= 1e-2, where it converges in a few thousand rounds.

    Args:
        gradient_mean_prev, gradient, prior_strength, variance_ratio, prior_shape: as in
            :func:`one_step_elbo` (arrays, one value per coordinate, or scalars).
        initial: starting point, or None for the prior.
        max_iterations: maximum number of rounds.
        relative_tolerance: stop when max ``|Δb|/b`` over both rates and all coordinates is below.
        local_update, global_targets: the closed-form updates iterated (test hooks; default
            the rule's), so that a broken update moves "the optimum" that SVI must reach.

    Returns:
        The :class:`OneStepVariational` at the fixed point.

    Example:
        >>> q = cavi_optimum(0.0, 1.0, 1e-12, 1.0, 1e-12)
        >>> round(float(q.gradient_mean), 6), round(float(q.drift_shape), 6)
        (0.5, 0.5)
    """
    gradient_mean_prev, gradient, prior_strength, variance_ratio, prior_shape = (
        jnp.broadcast_arrays(
            *map(jnp.asarray, (gradient_mean_prev, gradient, prior_strength,
                               variance_ratio, prior_shape))
        )
    )
    if initial is None:
        initial = OneStepVariational(
            gradient_mean=gradient_mean_prev,
            gradient_variance=jnp.ones_like(gradient_mean_prev),
            drift_shape=prior_shape,
            drift_rate=prior_strength,
            noise_shape=prior_shape,
            noise_rate=variance_ratio * prior_strength,
        )
    initial = OneStepVariational(*(jnp.broadcast_to(jnp.asarray(x, gradient.dtype),
                                                    gradient.shape) for x in initial))

    def one_round(q):
        q = local_step(q, gradient_mean_prev, gradient, local_update=local_update)
        return global_step(
            q,
            gradient_mean_prev,
            gradient,
            prior_strength,
            variance_ratio,
            prior_shape,
            global_targets=global_targets,
        )

    def relative_change(old, new):
        drift = jnp.abs(new.drift_rate - old.drift_rate) / new.drift_rate
        noise = jnp.abs(new.noise_rate - old.noise_rate) / new.noise_rate
        return jnp.maximum(jnp.max(drift), jnp.max(noise))

    def not_converged(carry):
        iteration, _, change = carry
        return (iteration < max_iterations) & (change > relative_tolerance)

    def body(carry):
        iteration, q, _ = carry
        new_q = one_round(q)
        return iteration + 1, new_q, relative_change(q, new_q)

    _, q, _ = jax.lax.while_loop(
        not_converged, body, (0, initial, jnp.asarray(jnp.inf, gradient.dtype))
    )
    # The loop stops on the rates; finish with a local step so that q(g) matches them exactly.
    return local_step(q, gradient_mean_prev, gradient)
