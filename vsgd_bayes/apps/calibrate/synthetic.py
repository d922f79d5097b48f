r"""A gradient stream with a known answer, and the exact filter for it: the instrument's test bed.

Per coordinate i (all independent), the model VSGD assumes, with known variances:

    g_0 ~ N(0, v_0),   g_t = g_{t-1} + N(0, q_i),   ĝ_t = g_t + N(0, r_i).

The Kalman filter with the true q_i, r_i is the exact posterior N(m_t, P_t) over g_t:

    P^- = P_{t-1} + q,   K_t = P^- / (P^- + r),   m_t = m_{t-1} + K_t (ĝ_t - m_{t-1}),
    P_t = (1 - K_t) P^-,

and in :class:`~vsgd_bayes.apps.calibrate.metrics.Posterior` form it is (mean m_t, drift
variance q, noise variance r, momentum 1 - K_t), so that ``metrics.posterior_variance`` gives
(1 - beta) r = K_t r = P_t exactly. :func:`kalman_checkpoint` returns what a real run measures
at a checkpoint: g* = g_{t+1} (the gradient at the parameters after step t), M fresh
mini-batches g* + N(0, r), the K following g*, and the filter's posterior; fed to the metrics,
a right instrument must report calibration.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vsgd_bayes.apps.calibrate.metrics import Posterior

__all__ = ["SyntheticCheckpoint", "kalman_checkpoint", "scale_posterior"]


class SyntheticCheckpoint(NamedTuple):
    """What a checkpoint measures, on the synthetic stream (shapes: n, (M, n), (K + 1, n))."""

    true_gradient: np.ndarray
    minibatch_gradients: np.ndarray
    following_true_gradients: np.ndarray
    posterior: Posterior


def kalman_checkpoint(
    coordinates: int = 20_000,
    steps: int = 200,
    minibatches: int = 32,
    drift_steps: int = 4,
    seed: int = 0,
) -> SyntheticCheckpoint:
    """Run the exact filter ``steps`` steps on ``coordinates`` independent streams and measure.

    The noise variances r_i are log-uniform on [1e-8, 1] and the drift variances
    q_i = r_i * 10^U(-3, 0) (signal-to-noise from 1e-3 to 1), so the metrics are tested across
    eight decades of gradient scale; v_0 = 100 r_i.
    """
    rng = np.random.default_rng(seed)
    noise_variance = 10.0 ** rng.uniform(-8.0, 0.0, coordinates)
    drift_variance = noise_variance * 10.0 ** rng.uniform(-3.0, 0.0, coordinates)
    initial_variance = 100.0 * noise_variance
    gradient = rng.normal(0.0, np.sqrt(initial_variance))
    mean, variance = np.zeros(coordinates), initial_variance
    for _ in range(steps):
        gradient = gradient + rng.normal(0.0, np.sqrt(drift_variance))
        observed = gradient + rng.normal(0.0, np.sqrt(noise_variance))
        prior_variance = variance + drift_variance
        gain = prior_variance / (prior_variance + noise_variance)
        mean = mean + gain * (observed - mean)
        variance = (1.0 - gain) * prior_variance
    # g*_{t+1}, ..., g*_{t+1+K}: the true gradients at the checkpoint and the K steps after it.
    increments = rng.normal(0.0, np.sqrt(drift_variance), (drift_steps + 1, coordinates))
    following = gradient + np.cumsum(increments, axis=0)
    true_gradient = following[0]
    batches = true_gradient + rng.normal(0.0, np.sqrt(noise_variance), (minibatches, coordinates))
    posterior = Posterior(mean, drift_variance, noise_variance, 1.0 - gain)
    return SyntheticCheckpoint(true_gradient, batches, following, posterior)


def scale_posterior(posterior: Posterior, sigma_factor: float) -> Posterior:
    """The same posterior with every standard deviation multiplied by ``sigma_factor`` (the
    drift and noise variances by its square, the momentum and the mean unchanged)."""
    variance_factor = sigma_factor**2
    return posterior._replace(
        drift_variance=posterior.drift_variance * variance_factor,
        noise_variance=posterior.noise_variance * variance_factor,
    )
