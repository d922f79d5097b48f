r"""Curvature Kalman VSGD's generative model in NumPyro: the true gradient follows the step.

The step-following model of ``derivations/14_gradient_models.md`` (chosen there on held-out
steps of real gradient streams) and ``derivations/15_curvature_kalman_vsgd.md``
[curvature-model], per coordinate, with the displacement Delta_t = theta_(t) - theta_(t-1)
of the point at which the t-th mini-batch gradient is taken as a known input:

.. math::

    g_t \mid g_{t-1}, h_{t-1} \sim N(g_{t-1} + h_{t-1}\Delta_t,\ q_g),\quad
    h_t \mid h_{t-1} \sim N(h_{t-1},\ q_h),\quad
    \hat g_t \mid g_t \sim N(g_t,\ r),\qquad g_0 = h_0 = 0.

g is the true gradient, h its local curvature (a diagonal of the Hessian seen along the step),
q_g = lambda_g r and q_h = lambda_h r the variances of their drifts, r the variance of the
mini-batch noise. Coordinates are independent and live in a plate named ``"coordinates"``.

The variances have no prior: :mod:`vsgd_bayes.rules.curvature` estimates them by recursive
maximum likelihood (its validation compares that with the offline maximum likelihood), so the
model takes them as given and records them as deterministic sites ``q_g``, ``q_h``, ``r``.
Given the displacements the model is linear Gaussian, so its posterior of (g_t, h_t) given
g_hat_(1:t) is exactly :func:`vsgd_bayes.rules.curvature.exact_filter` (checked by
``vsgd-bayes validate`` against a dense Gaussian computation,
:mod:`vsgd_bayes.validation.curvature`).

Example:
    >>> import jax, jax.numpy as jnp
    >>> true, curvature, observed = simulate_gradient_stream(
    ...     jax.random.PRNGKey(0), jnp.full((5, 2), 0.01), 1e-4, 1.0, 1.0)
    >>> true.shape, curvature.shape, observed.shape
    ((5, 2), (5, 2), (5, 2))

References:
    Chen, Kuzina, Esmaeili & Tomczak (2024), Variational Stochastic Gradient Descent for Deep
    Neural Networks, arXiv:2404.06549 (the random-walk model this one extends).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.infer import Predictive

__all__ = ["sequential_model", "simulate_gradient_stream"]


def _displacements_of(displacements) -> jax.Array:
    displacements = jnp.asarray(displacements, float)
    if displacements.ndim != 2 or displacements.shape[0] < 1 or displacements.shape[1] < 1:
        raise ValueError(
            f"Invalid displacements: shape {displacements.shape} (must be (num_steps, "
            "num_coordinates), both at least 1)"
        )
    return displacements


def _variance_site(name: str, argument: str, value, num_coordinates: int) -> jax.Array:
    """A given variance as a deterministic site of shape (n,), after checking it is > 0."""
    array = jnp.asarray(value, float)
    if array.ndim > 1 or (array.ndim == 1 and array.shape[0] != num_coordinates):
        raise ValueError(
            f"Invalid {argument}: shape {array.shape} (must be a scalar or "
            f"({num_coordinates},), one per coordinate)"
        )
    if not isinstance(array, jax.core.Tracer) and not bool(jnp.all(array > 0.0)):
        raise ValueError(f"Invalid {argument}: {value!r} (must be > 0)")
    return numpyro.deterministic(name, jnp.broadcast_to(array, (num_coordinates,)))


def sequential_model(
    displacements,
    *,
    drift_variance,
    curvature_drift_variance,
    noise_variance,
    observed=None,
):
    r"""The step-following model over t = 1..T (module docstring), given the displacements.

    A ``numpyro.contrib.control_flow.scan`` over the steps, so it works with ``Predictive``,
    ``log_density`` and NUTS.

    Args:
        displacements: Delta_t, shape (T, n): the move of the gradient point before
            observation t (``displacements[0]`` moves from the start to the first point, as in
            :func:`vsgd_bayes.rules.curvature.exact_filter`).
        drift_variance: q_g > 0 (scalar or shape (n,)), recorded as the site ``q_g``.
        curvature_drift_variance: q_h > 0, the site ``q_h`` (units of gradient^2 /
            parameter^2).
        noise_variance: r > 0, the site ``r``.
        observed: g_hat, shape (T, n), or None to simulate.

    Returns:
        None; the sites ``g``, ``h`` and ``g_hat`` have shape (T, n).

    Raises:
        ValueError: naming the argument, for a shape that is not (T, n) or a variance <= 0.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro.infer import Predictive
        >>> draws = Predictive(sequential_model, num_samples=2)(
        ...     jax.random.PRNGKey(0), jnp.zeros((4, 3)), drift_variance=0.1,
        ...     curvature_drift_variance=1.0, noise_variance=1.0)
        >>> draws["g_hat"].shape, draws["h"].shape
        ((2, 4, 3), (2, 4, 3))
    """
    displacements = _displacements_of(displacements)
    num_steps, num_coordinates = displacements.shape
    if observed is not None and jnp.shape(observed) != (num_steps, num_coordinates):
        raise ValueError(
            f"Invalid observed: shape {jnp.shape(observed)} (must be the displacements' "
            f"shape {(num_steps, num_coordinates)})"
        )
    with numpyro.plate("coordinates", num_coordinates):
        q_g = _variance_site("q_g", "drift_variance", drift_variance, num_coordinates)
        q_h = _variance_site("q_h", "curvature_drift_variance", curvature_drift_variance,
                             num_coordinates)
        r = _variance_site("r", "noise_variance", noise_variance, num_coordinates)
    drift_scale, curvature_drift_scale, noise_scale = jnp.sqrt(q_g), jnp.sqrt(q_h), jnp.sqrt(r)

    def transition(previous, inputs):
        g_prev, h_prev = previous
        displacement, g_hat_t = inputs
        with numpyro.plate("coordinates", num_coordinates):
            # [curvature-model]: the gradient moves along the step through the curvature
            # before the curvature itself drifts.
            g_t = numpyro.sample("g", dist.Normal(g_prev + h_prev * displacement, drift_scale))
            h_t = numpyro.sample("h", dist.Normal(h_prev, curvature_drift_scale))
            numpyro.sample("g_hat", dist.Normal(g_t, noise_scale), obs=g_hat_t)
        return (g_t, h_t), None

    zeros = jnp.zeros(num_coordinates)
    scan(transition, (zeros, zeros), (displacements, observed), length=num_steps)


def simulate_gradient_stream(
    key, displacements, drift_variance, curvature_drift_variance, noise_variance
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Simulate (true gradients g, curvatures h, observed gradients g_hat), each (T, n).

    Runs :func:`sequential_model` under ``numpyro.infer.Predictive`` with the given
    displacements (shape (T, n)) and variances (scalars or shape (n,)). The displacements are
    an open-loop input here: a closed loop (the step chosen from the filter) is the optimizer
    itself.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> g, h, g_hat = simulate_gradient_stream(
        ...     jax.random.PRNGKey(1), jnp.zeros((100, 1)), 1e-8, 1e-8, 1.0)
        >>> float(abs(g).max()) < 1e-2  # nearly constant at g_0 = 0 without displacement
        True
    """
    draws = Predictive(sequential_model, num_samples=1)(
        key,
        displacements,
        drift_variance=drift_variance,
        curvature_drift_variance=curvature_drift_variance,
        noise_variance=noise_variance,
    )
    return draws["g"][0], draws["h"][0], draws["g_hat"][0]
