r"""The closed-form VSGD update as pure JAX functions: the single source of truth.

Every other implementation in this package (the optax transformation, the torch optimizer's
single-tensor, foreach and fused paths) is tested against these functions. They are written
to read like the equations of ``derivations/`` (equation labels in brackets), not to be fast.

Per coordinate, with the previous posterior mean mu_{t-1}, the Gamma rates b_g, b_ghat of the
variational factors q(w_g) = Gamma(a, b_g), q(w_ghat) = Gamma(a, b_ghat) and the observed
mini-batch gradient g_hat_t, one step is

.. math::

    \sigma_t^2 &= \left(\frac{a}{b_g} + \frac{a}{b_{\hat g}}\right)^{-1}
        && \text{[local-variance]} \\
    \mu_t &= \sigma_t^2\left(\frac{a}{b_g}\mu_{t-1} + \frac{a}{b_{\hat g}}\hat g_t\right)
        && \text{[local-mean]} \\
    b'_g &= \gamma + \tfrac12\left(\sigma_t^2 + (\mu_t - \mu_{t-1})^2\right),\quad
    b'_{\hat g} = K_g\gamma + \tfrac12\left(\sigma_t^2 + (\mu_t - \hat g_t)^2\right)
        && \text{[global-targets]} \\
    b &\leftarrow (1-\rho_t)\, b + \rho_t\, b', \quad \rho_{t,i} = t^{-\kappa_i}
        && \text{[svi-blend]} \\
    \theta_t &= \theta_{t-1}(1 - \eta\lambda)
        - \eta\,\frac{\mu_t}{\sqrt{\mu_t^2 + \sigma_t^2} + \epsilon}
        && \text{[parameter-step]}

where ``a`` is the shape *before* the step: the prior shape a_0 at step 1 and the posterior
shape a_0 + 1/2 afterwards (see :mod:`vsgd_bayes.hyperparameters`). The rates start at the
prior rates (gamma, K_g gamma); since rho_1 = 1 the first step overwrites them. With
``init="reference"``, a_0 and the prior rates (also the gamma, K_g gamma of the targets) are
the authors' float32-rounded constants (:func:`vsgd_bayes.hyperparameters.prior_rates`).

Example:
    >>> import jax.numpy as jnp
    >>> from vsgd_bayes import rule
    >>> params = jnp.array([1.0, -2.0])
    >>> state = rule.init_state(params)
    >>> params, state = rule.step(params, jnp.array([0.3, -0.1]), state)
    >>> state.step
    Array(1, dtype=int32)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vsgd_bayes import hyperparameters as hp

__all__ = [
    "VSGDState",
    "state_dtype",
    "init_state",
    "expected_precision",
    "local_update",
    "global_targets",
    "svi_blend",
    "normalized_direction",
    "parameter_step",
    "step",
    "posterior_update",
    "posterior_variances",
]


class VSGDState(NamedTuple):
    """Per-parameter VSGD state (the torch optimizer's state keys are these field names).

    Attributes:
        step: number of steps taken so far (int32 scalar), t - 1 before step t.
        gradient_mean: posterior mean mu of the true gradient.
        drift_rate: rate b_g of q(w_g), the precision of the true gradient's drift.
        noise_rate: rate b_ghat of q(w_ghat), the precision of the mini-batch noise.
    """

    step: jax.Array
    gradient_mean: jax.Array
    drift_rate: jax.Array
    noise_rate: jax.Array


def state_dtype(param_dtype) -> jnp.dtype:
    """State and arithmetic dtype: the parameter's, but at least float32.

    The prior rates gamma ~ 1e-8 and the shape 1/2 + 5e-5 must not be rounded to 16-bit
    floats (float16 flushes 1e-8 to zero, which would make the first step 0/0).
    """
    return jnp.promote_types(param_dtype, jnp.float32)


def init_state(
    params: jax.Array,
    prior_strength: float = hp.DEFAULTS["prior_strength"],
    variance_ratio: float = hp.DEFAULTS["variance_ratio"],
    init: str = hp.DEFAULTS["init"],
) -> VSGDState:
    """State before the first step: mu_0 = 0 and the rates equal to the prior rates.

    The prior rates are those of ``init`` (:func:`vsgd_bayes.hyperparameters.prior_rates`:
    rounded as the authors' code for ``"reference"``), so pass the ``init`` of the steps.
    """
    dtype = state_dtype(params.dtype)
    drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
    return VSGDState(
        step=jnp.zeros([], jnp.int32),
        gradient_mean=jnp.zeros(params.shape, dtype),
        drift_rate=jnp.full(params.shape, drift_prior_rate, dtype),
        noise_rate=jnp.full(params.shape, noise_prior_rate, dtype),
    )


def expected_precision(shape, rate):
    """E[w] = a / b for w ~ Gamma(shape=a, rate=b)."""
    return shape / rate


def local_update(
    gradient_mean_prev, drift_rate, noise_rate, gradient, shape
) -> tuple[jax.Array, jax.Array]:
    """CAVI update of q(g_t) = N(mu_t, sigma_t^2) given the current q(w_g), q(w_ghat).

    Returns:
        (gradient_mean, gradient_variance) = (mu_t, sigma_t^2) [local-mean], [local-variance].
    """
    drift_precision = expected_precision(shape, drift_rate)
    noise_precision = expected_precision(shape, noise_rate)
    gradient_variance = 1.0 / (drift_precision + noise_precision)
    gradient_mean = gradient_variance * (
        drift_precision * gradient_mean_prev + noise_precision * gradient
    )
    return gradient_mean, gradient_variance


def global_targets(
    gradient_mean,
    gradient_variance,
    gradient_mean_prev,
    gradient,
    prior_strength,
    variance_ratio,
    *,
    init: str = "paper",
) -> tuple[jax.Array, jax.Array]:
    """Intermediate (one-observation CAVI) targets b'_g, b'_ghat of the Gamma rates.

    The constant terms are the prior rates (b_{0,g}, b_{0,ghat}) of
    :func:`vsgd_bayes.hyperparameters.prior_rates`: by default (``"paper"``) the model's exact
    (gamma, K_g gamma), which is what :mod:`vsgd_bayes.rules.elbo` and :mod:`vsgd_bayes.validation`
    evaluate; :func:`posterior_update` passes its own ``init`` (``"reference"``: rounded as
    the authors' code). The matching shape target is a_0 + 1/2, the constant posterior shape.
    """
    drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
    drift_rate_target = drift_prior_rate + 0.5 * (
        gradient_variance + (gradient_mean - gradient_mean_prev) ** 2
    )
    noise_rate_target = noise_prior_rate + 0.5 * (
        gradient_variance + (gradient_mean - gradient) ** 2
    )
    return drift_rate_target, noise_rate_target


def svi_blend(rate, rate_target, step_size):
    """Robbins-Monro blend b <- (1 - rho) b + rho b' [svi-blend]."""
    return (1.0 - step_size) * rate + step_size * rate_target


def normalized_direction(gradient_mean, gradient_variance, eps):
    """mu / (sqrt(mu^2 + sigma^2) + eps): the posterior mean over the root second moment."""
    return gradient_mean / (jnp.sqrt(gradient_mean**2 + gradient_variance) + eps)


def parameter_step(params, gradient_mean, gradient_variance, lr, weight_decay, eps):
    """theta <- theta (1 - eta lambda) - eta mu / (sqrt(mu^2 + sigma^2) + eps) [parameter-step].

    Weight decay is decoupled and applied first, with the current learning rate, as in the
    authors' code; the gradient fed to the model does not include it.
    """
    # A schedule may hand a float32 learning rate to float64 parameters: compute in the
    # parameters' dtype rather than let JAX's promotion round (1 - lr * weight_decay).
    lr = jnp.asarray(lr, params.dtype)
    weight_decay = jnp.asarray(weight_decay, params.dtype)
    decayed = params * (1.0 - lr * weight_decay)
    return decayed - lr * normalized_direction(gradient_mean, gradient_variance, eps)


def posterior_update(
    gradient,
    state: VSGDState,
    *,
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_strength=hp.DEFAULTS["prior_strength"],
    kappa1=hp.DEFAULTS["kappa1"],
    kappa2=hp.DEFAULTS["kappa2"],
    init: str = hp.DEFAULTS["init"],
) -> tuple[jax.Array, VSGDState]:
    """Steps the posterior over the true gradient only (no parameters involved).

    Returns:
        (gradient_variance, new_state): sigma_t^2 and the state holding mu_t and the blended
        rates. This is what the optax transformation calls.
    """
    dtype = state.gradient_mean.dtype
    gradient = gradient.astype(dtype)
    step_count = state.step + 1
    shape = jnp.where(
        step_count == 1,
        hp.prior_shape(prior_strength, init),
        hp.posterior_shape(prior_strength, init),
    ).astype(dtype)
    gradient_mean, gradient_variance = local_update(
        state.gradient_mean, state.drift_rate, state.noise_rate, gradient, shape
    )
    drift_rate_target, noise_rate_target = global_targets(
        gradient_mean,
        gradient_variance,
        state.gradient_mean,
        gradient,
        prior_strength,
        variance_ratio,
        init=init,
    )
    drift_step_size, noise_step_size = hp.step_sizes(
        step_count.astype(dtype), kappa1, kappa2
    )
    new_state = VSGDState(
        step=step_count,
        gradient_mean=gradient_mean,
        drift_rate=svi_blend(state.drift_rate, drift_rate_target, drift_step_size),
        noise_rate=svi_blend(state.noise_rate, noise_rate_target, noise_step_size),
    )
    return gradient_variance, new_state


def step(
    params,
    gradient,
    state: VSGDState,
    *,
    lr=hp.DEFAULTS["lr"],
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_strength=hp.DEFAULTS["prior_strength"],
    kappa1=hp.DEFAULTS["kappa1"],
    kappa2=hp.DEFAULTS["kappa2"],
    weight_decay=hp.DEFAULTS["weight_decay"],
    eps=hp.DEFAULTS["eps"],
    init: str = hp.DEFAULTS["init"],
) -> tuple[jax.Array, VSGDState]:
    """One VSGD step on one array: local update, global targets, SVI blend, parameter step.

    Hyperparameters are not validated here (this function is meant to be jitted); validate
    them once with :func:`vsgd_bayes.hyperparameters.validate_hyperparameters`. ``init`` must
    be static under ``jax.jit``.

    Returns:
        (new_params, new_state), the parameters in their own dtype.
    """
    gradient_variance, new_state = posterior_update(
        gradient,
        state,
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa1=kappa1,
        kappa2=kappa2,
        init=init,
    )
    dtype = new_state.gradient_mean.dtype
    new_params = parameter_step(
        params.astype(dtype),
        new_state.gradient_mean,
        gradient_variance,
        lr,
        weight_decay,
        eps,
    )
    return new_params.astype(params.dtype), new_state


def posterior_variances(state: VSGDState, prior_strength, init: str = hp.DEFAULTS["init"]):
    """Posterior variances (b_g / a, b_ghat / a) implied by the stored rates after >= 1 step."""
    shape = hp.posterior_shape(prior_strength, init)
    return state.drift_rate / shape, state.noise_rate / shape
