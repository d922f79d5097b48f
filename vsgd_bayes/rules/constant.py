r"""Constant VSGD as pure JAX functions (derived here; see ``derivations/07_constant_vsgd.md``).

Constant VSGD ties the two precisions with a fixed variance ratio, w_ghat = w / K_g, so one
precision w ~ Gamma(a_0, gamma) per coordinate remains:

.. math::

    g_t \mid w \sim N(\mu_{t-1}, 1/w), \qquad \hat g_t \mid g_t, w \sim N(g_t, K_g / w).

The CAVI updates then have a constant gain k = 1 / (1 + K_g):

.. math::

    \mu_t &= \mu_{t-1} + k(\hat g_t - \mu_{t-1})
        = \beta\mu_{t-1} + (1-\beta)\hat g_t,\quad \beta = \tfrac{K_g}{1+K_g}
        && \text{[constant-mean]} \\
    \sigma_t^2 &= (1-k)\,\frac{b}{a}
        && \text{[constant-variance]} \\
    b' &= \gamma + \tfrac12\left(\sigma_t^2 + (\mu_t-\mu_{t-1})^2\right)
          + \tfrac1{2K_g}\left(\sigma_t^2 + (\mu_t-\hat g_t)^2\right),\quad a = a_0 + 1
        && \text{[constant-target]} \\
    b &\leftarrow (1-\rho_t)b + \rho_t b',\quad \rho_t = t^{-\kappa}

and the parameter step is VSGD's. The mean is exactly Adam's first moment with
beta_1 = K_g / (1 + K_g) (K_g = 9 gives beta_1 = 0.9).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules.elbo import expected_log_normal, gamma_kl
from vsgd_bayes.rules.vsgd import parameter_step, state_dtype, svi_blend

__all__ = [
    "ConstantVSGDState",
    "init_state",
    "gain",
    "momentum",
    "posterior_shape",
    "local_update",
    "global_target",
    "step",
    "one_step_elbo",
]


class ConstantVSGDState(NamedTuple):
    """State of Constant VSGD: step count, posterior mean mu and the rate b of q(w)."""

    step: jax.Array
    gradient_mean: jax.Array
    rate: jax.Array


def gain(variance_ratio):
    """k = 1 / (1 + K_g): the weight of the new gradient in the posterior mean."""
    return 1.0 / (1.0 + variance_ratio)


def momentum(variance_ratio):
    """beta = K_g / (1 + K_g): the weight of the previous posterior mean (Adam's beta_1)."""
    return variance_ratio / (1.0 + variance_ratio)


def posterior_shape(prior_strength, init: str = hp.CONSTANT_DEFAULTS["init"]):
    """a = a_0 + 1: the shared precision sees two Gaussian factors per step."""
    return hp.constant_posterior_shape(prior_strength, init)


def init_state(
    params, prior_strength=hp.CONSTANT_DEFAULTS["prior_strength"]
) -> ConstantVSGDState:
    """mu_0 = 0 and b_0 = gamma (the prior rate)."""
    dtype = state_dtype(params.dtype)
    return ConstantVSGDState(
        step=jnp.zeros([], jnp.int32),
        gradient_mean=jnp.zeros(params.shape, dtype),
        rate=jnp.full(params.shape, float(prior_strength), dtype),
    )


def local_update(gradient_mean_prev, rate, gradient, shape, variance_ratio):
    """CAVI update of q(g_t) with E[w] = a / b: precision E[w] (1 + 1/K_g).

    Returns:
        (mu_t, sigma_t^2) [constant-mean], [constant-variance].
    """
    precision = shape / rate * (1.0 + 1.0 / variance_ratio)
    gradient_variance = 1.0 / precision
    gradient_mean = gradient_mean_prev + gain(variance_ratio) * (gradient - gradient_mean_prev)
    return gradient_mean, gradient_variance


def global_target(
    gradient_mean, gradient_variance, gradient_mean_prev, gradient, prior_strength, variance_ratio
):
    """b' [constant-target]: both squared residuals, the noise one divided by K_g."""
    drift_residual = gradient_variance + (gradient_mean - gradient_mean_prev) ** 2
    noise_residual = gradient_variance + (gradient_mean - gradient) ** 2
    return prior_strength + 0.5 * drift_residual + 0.5 * noise_residual / variance_ratio


def step(
    params,
    gradient,
    state: ConstantVSGDState,
    *,
    lr=hp.CONSTANT_DEFAULTS["lr"],
    variance_ratio=hp.CONSTANT_DEFAULTS["variance_ratio"],
    prior_strength=hp.CONSTANT_DEFAULTS["prior_strength"],
    kappa=hp.CONSTANT_DEFAULTS["kappa"],
    weight_decay=hp.CONSTANT_DEFAULTS["weight_decay"],
    eps=hp.CONSTANT_DEFAULTS["eps"],
    init: str = hp.CONSTANT_DEFAULTS["init"],
) -> tuple[jax.Array, ConstantVSGDState]:
    """One Constant VSGD step on one array (hyperparameters are not validated here).

    Defaults: :data:`vsgd_bayes.hyperparameters.CONSTANT_DEFAULTS` (K_g = 9, momentum 0.9).
    """
    dtype = state.gradient_mean.dtype
    gradient = gradient.astype(dtype)
    step_count = state.step + 1
    shape = jnp.where(
        step_count == 1,
        hp.prior_shape(prior_strength, init),
        posterior_shape(prior_strength, init),
    ).astype(dtype)
    gradient_mean, gradient_variance = local_update(
        state.gradient_mean, state.rate, gradient, shape, variance_ratio
    )
    rate_target = global_target(
        gradient_mean,
        gradient_variance,
        state.gradient_mean,
        gradient,
        prior_strength,
        variance_ratio,
    )
    step_size = step_count.astype(dtype) ** (-kappa)
    new_state = ConstantVSGDState(
        step=step_count,
        gradient_mean=gradient_mean,
        rate=svi_blend(state.rate, rate_target, step_size),
    )
    new_params = parameter_step(
        params.astype(dtype), gradient_mean, gradient_variance, lr, weight_decay, eps
    )
    return new_params.astype(params.dtype), new_state


def one_step_elbo(
    gradient_mean,
    gradient_variance,
    shape,
    rate,
    gradient_mean_prev,
    gradient,
    prior_strength,
    variance_ratio,
    prior_shape,
):
    r"""Closed-form ELBO of Constant VSGD's one-step model, summed over coordinates.

    Model: w ~ Gamma(a_0, gamma), g ~ N(mu_{t-1}, 1/w), g_hat ~ N(g, K_g/w); family
    q(g) = N(mu, sigma^2), q(w) = Gamma(a, b) (the family of :func:`local_update` and
    :func:`global_target`):

    .. math::
        E_q[\ln N(g|\mu_{t-1},1/w)] + E_q[\ln N(\hat g|g,K_g/w)] + H[q(g)]
            - KL(\mathrm{Gamma}(a,b)\,\|\,\mathrm{Gamma}(a_0,\gamma))

    where the noise term is E_q[ln N(x|m,1/w)] with w/K_g in place of w, i.e. minus
    ½ ln K_g and with E[w]/K_g.
    """
    drift_residual = gradient_variance + (gradient_mean - gradient_mean_prev) ** 2
    noise_residual = gradient_variance + (gradient_mean - gradient) ** 2
    drift_likelihood = expected_log_normal(shape, rate, drift_residual)
    # w / K_g ~ Gamma(a, K_g b): the noise precision is the shared one scaled by 1/K_g.
    noise_likelihood = expected_log_normal(shape, variance_ratio * rate, noise_residual)
    entropy = 0.5 * (jnp.log(2.0 * jnp.pi) + 1.0 + jnp.log(gradient_variance))
    kl = gamma_kl(shape, rate, prior_shape, prior_strength)
    return jnp.sum(drift_likelihood + noise_likelihood + entropy - kl)
