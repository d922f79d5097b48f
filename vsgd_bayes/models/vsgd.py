r"""VSGD's probabilistic model in NumPyro: the one-step model, its guide, the sequential model.

Site names are the paper's symbols: ``w_g`` (precision of the true gradient's drift),
``w_ghat`` (precision of the mini-batch noise), ``g`` (true gradient), ``g_hat`` (observed
mini-batch gradient). Coordinates are independent and live in a plate named
``"coordinates"``.

One step (per coordinate; gamma = ``prior_strength``, K_g =
``variance_ratio``, a_0 = ``prior_shape``, mu_{t-1} = ``gradient_mean_prev``):

.. math::

    w_g \sim \mathrm{Gamma}(a_0, \gamma),\quad
    w_{\hat g} \sim \mathrm{Gamma}(a_0, K_g\gamma),\quad
    g \mid w_g \sim N(\mu_{t-1}, 1/w_g),\quad
    \hat g \mid g, w_{\hat g} \sim N(g, 1/w_{\hat g}).

Sequential model over t = 1..T with global precisions and g_0 = 0:

.. math::

    g_t \mid g_{t-1}, w_g \sim N(g_{t-1}, 1/w_g),\quad
    \hat g_t \mid g_t, w_{\hat g} \sim N(g_t, 1/w_{\hat g}).

Example:
    >>> import jax, jax.numpy as jnp
    >>> true, observed = simulate_gradient_stream(jax.random.PRNGKey(0), 5, 2, 100.0, 1.0)
    >>> true.shape, observed.shape
    ((5, 2), (5, 2))

References:
    Chen, Kuzina, Esmaeili & Tomczak (2024), Variational Stochastic Gradient Descent for Deep
    Neural Networks, arXiv:2404.06549.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints
from numpyro.infer import Predictive

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules import vsgd as rule
from vsgd_bayes.rules.elbo import OneStepVariational

__all__ = [
    "resolve_prior_shape",
    "one_step_model",
    "one_step_guide",
    "default_guide_start",
    "guide_variational",
    "sequential_model",
    "simulate_gradient_stream",
]


def resolve_prior_shape(prior_strength, prior_shape=None, init: str | None = None):
    """The prior shape a_0: ``prior_shape`` if given, else from ``init`` (default ``"paper"``).

    ``init="paper"`` gives a_0 = gamma, ``init="reference"`` gives about gamma + 5e-5 (the
    authors' code, float32-rounded as there), both through
    :func:`vsgd_bayes.hyperparameters.prior_shape`. ``prior_strength`` may be an array (one
    value per coordinate).

    Raises:
        ValueError: if both ``prior_shape`` and ``init`` are given, or ``init`` is unknown.
    """
    if prior_shape is not None and init is not None:
        raise ValueError(
            f"Give prior_shape or init, not both (got prior_shape={prior_shape!r}, "
            f"init={init!r})"
        )
    if prior_shape is not None:
        return prior_shape
    init = "paper" if init is None else init
    hp.check_hyperparameter("init", init)
    if isinstance(prior_strength, numbers.Real):
        return hp.prior_shape(prior_strength, init)
    # An array of gammas: hyperparameters.prior_shape works elementwise (for "reference" it
    # rounds 2 gamma + 1 + 1e-4 to float32 per element, as the authors' code would).
    return hp.prior_shape(jnp.asarray(prior_strength), init)


def _num_coordinates(gradient_mean_prev) -> int:
    shape = jnp.shape(gradient_mean_prev)
    if len(shape) > 1:
        raise ValueError(
            f"Invalid gradient_mean_prev: shape {shape} (must be a scalar or a vector, one value "
            "per coordinate)"
        )
    return shape[0] if shape else 1


def one_step_model(
    gradient_mean_prev,
    gradient=None,
    *,
    prior_strength=hp.DEFAULTS["prior_strength"],
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_shape=None,
    init: str | None = None,
):
    r"""The one-step model of VSGD (one plate over independent coordinates).

    Args:
        gradient_mean_prev: mu_{t-1}, the previous posterior mean (prior mean of g), shape (n,).
        gradient: the observed mini-batch gradient g_hat, shape (n,), or None to simulate it.
        prior_strength: gamma, the rate of p(w_g) (scalar or shape (n,)).
        variance_ratio: K_g; p(w_ghat) has rate K_g gamma (scalar or shape (n,)).
        prior_shape: a_0 of both Gamma priors; default from ``init``.
        init: ``"paper"`` (a_0 = gamma, the default) or ``"reference"`` (a_0 = gamma + 5e-5).

    Returns:
        The sampled (or observed) ``g_hat``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro.handlers import seed, trace
        >>> tr = trace(seed(one_step_model, 0)).get_trace(jnp.zeros(3), jnp.ones(3),
        ...                                               prior_strength=1.0, variance_ratio=2.0)
        >>> list(tr)
        ['coordinates', 'w_g', 'w_ghat', 'g', 'g_hat']
    """
    size = _num_coordinates(gradient_mean_prev)
    shape = resolve_prior_shape(prior_strength, prior_shape, init)
    with numpyro.plate("coordinates", size):
        w_g = numpyro.sample("w_g", dist.Gamma(shape, prior_strength))
        w_ghat = numpyro.sample("w_ghat", dist.Gamma(shape, variance_ratio * prior_strength))
        g = numpyro.sample("g", dist.Normal(gradient_mean_prev, 1.0 / jnp.sqrt(w_g)))
        return numpyro.sample("g_hat", dist.Normal(g, 1.0 / jnp.sqrt(w_ghat)), obs=gradient)


def default_guide_start(
    gradient_mean_prev, gradient, prior_strength, variance_ratio, prior_shape
) -> OneStepVariational:
    """The guide's default starting point: VSGD's own first step from the prior.

    Shapes a_0 + 1/2, rates the prior rates (gamma, K_g gamma), and q(g) from
    :func:`vsgd_bayes.rules.vsgd.local_update` with those (g_hat = mu_{t-1} when not observed).
    """
    gradient = gradient_mean_prev if gradient is None else gradient
    drift_rate, noise_rate = prior_strength, variance_ratio * prior_strength
    shape = prior_shape + 0.5
    gradient_mean, gradient_variance = rule.local_update(
        gradient_mean_prev, drift_rate, noise_rate, gradient, shape
    )
    return OneStepVariational(
        gradient_mean, gradient_variance, shape, drift_rate, shape, noise_rate
    )


def one_step_guide(
    gradient_mean_prev,
    gradient=None,
    *,
    prior_strength=hp.DEFAULTS["prior_strength"],
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_shape=None,
    init: str | None = None,
    initial: OneStepVariational | None = None,
):
    r"""Mean-field guide: q(g) = N(mu, sigma^2), q(w_g) = Gamma(a_g, b_g), q(w_ghat) likewise.

    Parameters (``numpyro.param`` names): ``gradient_mean`` (mu), ``gradient_scale`` (sigma,
    positive), ``drift_shape``, ``drift_rate``, ``noise_shape``, ``noise_rate`` (positive).
    Positive parameters are optimised on the log scale (NumPyro's positive constraint).

    Args:
        gradient_mean_prev, gradient, prior_strength, variance_ratio, prior_shape, init: as in
            :func:`one_step_model` (the guide takes the model's arguments).
        initial: starting values as a :class:`vsgd_bayes.rules.elbo.OneStepVariational` (note: it
            holds the variance sigma^2; the guide's parameter is sigma), or None for
            :func:`default_guide_start`.
    """
    size = _num_coordinates(gradient_mean_prev)
    if initial is None:
        shape = resolve_prior_shape(prior_strength, prior_shape, init)
        initial = default_guide_start(
            gradient_mean_prev, gradient, prior_strength, variance_ratio, shape
        )
    start = OneStepVariational(*(jnp.broadcast_to(x, (size,)) for x in initial))
    gradient_mean = numpyro.param("gradient_mean", start.gradient_mean)
    gradient_scale = numpyro.param(
        "gradient_scale", jnp.sqrt(start.gradient_variance), constraint=constraints.positive
    )
    drift_shape = numpyro.param("drift_shape", start.drift_shape, constraint=constraints.positive)
    drift_rate = numpyro.param("drift_rate", start.drift_rate, constraint=constraints.positive)
    noise_shape = numpyro.param("noise_shape", start.noise_shape, constraint=constraints.positive)
    noise_rate = numpyro.param("noise_rate", start.noise_rate, constraint=constraints.positive)
    with numpyro.plate("coordinates", size):
        numpyro.sample("w_g", dist.Gamma(drift_shape, drift_rate))
        numpyro.sample("w_ghat", dist.Gamma(noise_shape, noise_rate))
        numpyro.sample("g", dist.Normal(gradient_mean, gradient_scale))


def guide_variational(params) -> OneStepVariational:
    """The guide's fitted ``numpyro.param`` values as a ``OneStepVariational``.

    The inverse of the ``initial`` argument of :func:`one_step_guide`: ``params`` is e.g.
    ``SVIRunResult.params`` or ``svi.get_params(state)``; sigma^2 = ``gradient_scale`` squared.
    """
    return OneStepVariational(
        params["gradient_mean"],
        params["gradient_scale"] ** 2,
        params["drift_shape"],
        params["drift_rate"],
        params["noise_shape"],
        params["noise_rate"],
    )


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be a positive integer)")
    return int(value)


def sequential_model(
    num_steps: int,
    num_coordinates: int = 1,
    *,
    drift_precision=None,
    noise_precision=None,
    prior_strength=hp.DEFAULTS["prior_strength"],
    variance_ratio=hp.DEFAULTS["variance_ratio"],
    prior_shape=None,
    observed=None,
):
    r"""The full sequential model: a random-walk true gradient observed with noise, T steps.

    Global precisions per coordinate, w_g ~ Gamma(a_0, gamma) and w_ghat ~ Gamma(a_0, K_g
    gamma) unless given; then g_t ~ N(g_{t-1}, 1/w_g) with g_0 = 0 and g_hat_t ~ N(g_t,
    1/w_ghat) for t = 1..T (a ``numpyro.contrib.control_flow.scan``, so it works with
    ``Predictive`` and NUTS).

    Args:
        num_steps: T.
        num_coordinates: n, the size of the ``"coordinates"`` plate.
        drift_precision: w_g (scalar or shape (n,)); sampled from its prior when None. A given
            value is recorded as a deterministic site ``w_g``.
        noise_precision: w_ghat, likewise.
        prior_strength: gamma.
        variance_ratio: K_g.
        prior_shape: a_0, default gamma (the paper's Algorithm 1).
        observed: g_hat, shape (T, n), or None to simulate.

    Returns:
        None; the sites ``g`` and ``g_hat`` have shape (T, n).

    Example:
        >>> import jax
        >>> from numpyro.infer import Predictive
        >>> draws = Predictive(sequential_model, num_samples=2)(
        ...     jax.random.PRNGKey(0), 4, 3, drift_precision=10.0, noise_precision=1.0)
        >>> draws["g_hat"].shape
        (2, 4, 3)
    """
    num_steps = _check_count("num_steps", num_steps)
    num_coordinates = _check_count("num_coordinates", num_coordinates)
    if observed is not None and jnp.shape(observed) != (num_steps, num_coordinates):
        raise ValueError(
            f"Invalid observed: shape {jnp.shape(observed)} (must be (num_steps, "
            f"num_coordinates) = {(num_steps, num_coordinates)})"
        )
    shape = prior_strength if prior_shape is None else prior_shape
    with numpyro.plate("coordinates", num_coordinates):
        if drift_precision is None:
            w_g = numpyro.sample("w_g", dist.Gamma(shape, prior_strength))
        else:
            w_g = numpyro.deterministic(
                "w_g", jnp.broadcast_to(jnp.asarray(drift_precision, float), (num_coordinates,))
            )
        if noise_precision is None:
            w_ghat = numpyro.sample("w_ghat", dist.Gamma(shape, variance_ratio * prior_strength))
        else:
            w_ghat = numpyro.deterministic(
                "w_ghat",
                jnp.broadcast_to(jnp.asarray(noise_precision, float), (num_coordinates,)),
            )

    drift_scale, noise_scale = 1.0 / jnp.sqrt(w_g), 1.0 / jnp.sqrt(w_ghat)

    def transition(g_prev, g_hat_t):
        with numpyro.plate("coordinates", num_coordinates):
            g_t = numpyro.sample("g", dist.Normal(g_prev, drift_scale))
            numpyro.sample("g_hat", dist.Normal(g_t, noise_scale), obs=g_hat_t)
        return g_t, None

    g_0 = jnp.zeros(num_coordinates)
    scan(transition, g_0, observed, length=num_steps)


def simulate_gradient_stream(
    key, num_steps: int, num_coordinates: int, drift_precision, noise_precision
) -> tuple[jax.Array, jax.Array]:
    """Simulate (true_gradients, observed_gradients), each (T, n), from known precisions.

    Runs :func:`sequential_model` under ``numpyro.infer.Predictive`` with w_g =
    ``drift_precision`` and w_ghat = ``noise_precision`` (scalars or shape (n,)).

    Example:
        >>> import jax
        >>> true, observed = simulate_gradient_stream(jax.random.PRNGKey(1), 100, 1, 1e4, 1.0)
        >>> float(abs(true).max()) < 1.0  # a slow random walk with step sd 0.01
        True
    """
    draws = Predictive(sequential_model, num_samples=1)(
        key,
        num_steps,
        num_coordinates,
        drift_precision=drift_precision,
        noise_precision=noise_precision,
    )
    return draws["g"][0], draws["g_hat"][0]
