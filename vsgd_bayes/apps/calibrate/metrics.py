r"""The calibration metrics: pure numpy functions of one checkpoint's measurements.

Nothing here knows about torch or about optimizers: the same functions score a real network's
run (:mod:`vsgd_bayes.apps.calibrate.harvest`) and a synthetic stream whose answer is known
(:mod:`vsgd_bayes.apps.calibrate.synthetic`), so the tests of the instrument drive exactly the
code the real runs use.

Inputs at a checkpoint t (after the optimizer's step t, parameters theta_t), all flattened over
every coordinate of every parameter:

* ``true_gradient`` g*: the exact full-batch gradient at theta_t;
* ``minibatch_gradients`` ĝ^(1..M): M fresh mini-batch gradients at theta_t (shape (M, n));
* a :class:`Posterior` (mean mu_t, drift variance q_t, noise variance r_t, momentum beta_t),
  the fields of ``vsgd_bayes.torch.GradientPosterior``.

Which sigma (derived here). The posterior after step t is over g_t, the gradient at
theta_{t-1}; g* is the gradient at theta_t, i.e. the *next* true gradient g_{t+1} of the
model's random walk g_{t+1} = g_t + N(0, q). Its predictive distribution given the stream up
to t is N(mu_t, sigma_t^2 + q_t), so z = (g* - mu_t) / sqrt(sigma_t^2 + q_t) is N(0, 1) when
the posterior is right. sigma_t^2 itself comes from the momentum: a Gaussian update
mu_t = beta mu_{t-1} + (1 - beta) ĝ_t has gain 1 - beta = sigma_t^2 / r, so

    sigma_t^2 = (1 - beta_t) r_t,

which is VSGD's (1/q + 1/r)^(-1) (beta = r/(q + r)) and a Kalman filter's P_t = K_t r alike.
The z of the posterior variance alone (``sigma="posterior"``) is reported too; it ignores one
step of drift and so over-states confidence by sqrt(1 + q/sigma^2) when the model is right.

Every per-coordinate quantity is summarised by its median and inter-quartile range over the
coordinates (:func:`summary`); heavy tails make means and standard deviations misleading.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "NOMINAL_LEVELS",
    "COVERAGE_TOLERANCE",
    "Posterior",
    "posterior_variance",
    "predictive_variance",
    "summary",
    "chi2_median_over_dof",
    "noise_calibration",
    "drift_calibration",
    "posterior_calibration",
    "coverage_verdict",
    "estimation_error",
    "momentum_distribution",
    "subset_error",
    "checkpoint_metrics",
]

#: Nominal probabilities of the central intervals mu ± c_p sigma whose coverage is measured.
NOMINAL_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)

#: Coverage within this many probability units of nominal at every level counts as calibrated
#: (2 points: wider than the sampling error of a coverage over >= 1e4 coordinates, ~0.5 points).
COVERAGE_TOLERANCE = 0.02


class Posterior(NamedTuple):
    """A gradient posterior in numpy, one entry per coordinate (``GradientPosterior``'s fields).

    Attributes:
        mean: mu_t, the posterior mean of the true gradient.
        drift_variance: q_t, the variance of the true gradient's change per step.
        noise_variance: r_t, the variance of a mini-batch gradient around the true one.
        momentum: beta_t, the weight mu_{t-1} gets in mu_t (1 - the Kalman gain).
    """

    mean: np.ndarray
    drift_variance: np.ndarray
    noise_variance: np.ndarray
    momentum: np.ndarray


def posterior_variance(posterior: Posterior) -> np.ndarray:
    """sigma_t^2 = (1 - beta_t) r_t: the posterior variance of g_t (see the module docstring)."""
    momentum = np.asarray(posterior.momentum, dtype=np.float64)
    return (1.0 - momentum) * np.asarray(posterior.noise_variance, dtype=np.float64)


def predictive_variance(posterior: Posterior) -> np.ndarray:
    """sigma_t^2 + q_t: the predictive variance of the next true gradient g_{t+1}."""
    return posterior_variance(posterior) + np.asarray(posterior.drift_variance, dtype=np.float64)


def summary(values: np.ndarray) -> dict[str, float]:
    """Median, quartiles, 5% and 95% quantiles and count of the finite entries of ``values``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        nan = math.nan
        return {"median": nan, "q25": nan, "q75": nan, "q05": nan, "q95": nan, "count": 0}
    q05, q25, median, q75, q95 = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "median": float(median), "q25": float(q25), "q75": float(q75),
        "q05": float(q05), "q95": float(q95), "count": int(finite.size),
    }


def chi2_median_over_dof(dof: int) -> float:
    """median(chi^2_k) / k, k = ``dof`` (exact: the inverse regularised incomplete gamma).

    A sample variance of k + 1 Gaussian draws is sigma^2 chi^2_k / k, so a perfectly calibrated
    variance v gives median log10(v / s^2) = -log10(this), not 0 (+0.0094 at k = 31).
    """
    from scipy.special import gammaincinv  # scipy ships with scikit-learn (the bench extra)

    if dof < 1:
        raise ValueError(f"Invalid dof: {dof!r} (must be >= 1)")
    return float(2.0 * gammaincinv(dof / 2.0, 0.5) / dof)


def _log10_ratio(numerator: np.ndarray, denominator: np.ndarray) -> tuple[np.ndarray, int]:
    """log10(numerator / denominator) where both are positive; count of excluded entries."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    valid = (numerator > 0) & (denominator > 0) & np.isfinite(numerator) & np.isfinite(denominator)
    ratio = np.full(numerator.shape, np.nan)
    ratio[valid] = np.log10(numerator[valid] / denominator[valid])
    return ratio, int(valid.size - valid.sum())


def noise_calibration(
    noise_variance: np.ndarray, minibatch_gradients: np.ndarray
) -> dict[str, Any]:
    """log10(r_t / s^2) per coordinate, s^2 the sample variance of the M fresh mini-batch
    gradients (ddof 1). 0 is calibrated, > 0 the optimizer over-states the noise.

    Coordinates with s^2 = 0 (e.g. a bias no fresh batch moved) are excluded and counted.
    ``ideal_median``: the median a perfectly calibrated r_t would get (chi-square sampling).
    """
    minibatch_gradients = np.asarray(minibatch_gradients, dtype=np.float64)
    count = minibatch_gradients.shape[0]
    if count < 2:
        raise ValueError(f"Invalid minibatch_gradients: {count} rows (need >= 2)")
    sample_variance = minibatch_gradients.var(axis=0, ddof=1)
    ratio, excluded = _log10_ratio(noise_variance, sample_variance)
    return {
        "log10_ratio": summary(ratio),
        "excluded": excluded,
        "ideal_median": -math.log10(chi2_median_over_dof(count - 1)),
    }


def drift_calibration(drift_variance: np.ndarray, true_gradients: np.ndarray) -> dict[str, Any]:
    """log10(q_t / d^2) per coordinate, d^2 = mean over k of (g*_{t+k} - g*_{t+k-1})^2 over the
    K steps that follow the checkpoint (``true_gradients``: shape (K + 1, n), g*_t first).

    Under the model's random walk d^2 ~ q chi^2_K / K, so ``ideal_median`` is what a right q
    gets. Coordinates whose g* did not move (d^2 = 0) are excluded and counted.
    """
    true_gradients = np.asarray(true_gradients, dtype=np.float64)
    steps = true_gradients.shape[0] - 1
    if steps < 1:
        raise ValueError(f"Invalid true_gradients: {steps + 1} rows (need >= 2)")
    measured = np.mean(np.diff(true_gradients, axis=0) ** 2, axis=0)
    ratio, excluded = _log10_ratio(drift_variance, measured)
    return {
        "log10_ratio": summary(ratio),
        "excluded": excluded,
        "steps": steps,
        "ideal_median": -math.log10(chi2_median_over_dof(steps)),
        "measured_variance": summary(measured),
    }


def coverage_verdict(coverage: dict[str, float], tolerance: float = COVERAGE_TOLERANCE) -> str:
    """``calibrated`` (every level within ``tolerance``), ``over-covering`` (every level at or
    above nominal, one beyond the tolerance: sigma too large), ``under-covering`` (the mirror:
    sigma too small), else ``mixed`` (e.g. heavy tails: over-covering at 50%, under at 99%)."""
    gaps = np.array([coverage[key] - float(key) for key in coverage])
    if np.all(np.abs(gaps) <= tolerance):
        return "calibrated"
    if np.all(gaps >= -tolerance):
        return "over-covering"
    if np.all(gaps <= tolerance):
        return "under-covering"
    return "mixed"


def posterior_calibration(
    mean: np.ndarray, variance: np.ndarray, true_gradient: np.ndarray,
    levels: tuple[float, ...] = NOMINAL_LEVELS,
) -> dict[str, Any]:
    """z = (g* - mu) / sqrt(variance): coverage of the central intervals, robust scale, std.

    coverage[p] is the fraction of coordinates with |z| <= Phi^{-1}((1 + p)/2); the robust
    scale 1.4826 median|z| and the std of z are both 1 for a calibrated posterior.
    """
    variance = np.asarray(variance, dtype=np.float64)
    z = (np.asarray(true_gradient, np.float64) - np.asarray(mean, np.float64)) / np.sqrt(variance)
    z = z[np.isfinite(z)]
    absolute = np.abs(z)
    normal = NormalDist()
    coverage = {
        f"{level:g}": float(np.mean(absolute <= normal.inv_cdf(0.5 + level / 2)))
        for level in levels
    }
    return {
        "coverage": coverage,
        "verdict": coverage_verdict(coverage),
        # 1.4826 = 1 / Phi^{-1}(3/4): median|z| of N(0, 1) is 0.6745.
        "robust_scale": float(1.4826 * np.median(absolute)),
        "std": float(np.std(z)),
        "fraction_beyond_10": float(np.mean(absolute > 10.0)),
        "abs_z": summary(absolute),
        "count": int(z.size),
    }


def estimation_error(
    estimate: np.ndarray, true_gradient: np.ndarray, minibatch_gradients: np.ndarray
) -> dict[str, Any]:
    """||estimate - g*||^2 / mean_m ||ĝ^(m) - g*||^2 (below 1: better than a fresh mini-batch),
    and the same ratio per coordinate (log10, median and IQR)."""
    true_gradient = np.asarray(true_gradient, dtype=np.float64)
    error = (np.asarray(estimate, dtype=np.float64) - true_gradient) ** 2
    batches = np.asarray(minibatch_gradients, dtype=np.float64)
    batch_error = np.mean((batches - true_gradient) ** 2, axis=0)
    per_coordinate, _ = _log10_ratio(error, batch_error)
    return {
        "ratio": float(error.sum() / batch_error.sum()),
        "log10_ratio_per_coordinate": summary(per_coordinate),
    }


def momentum_distribution(momentum: np.ndarray) -> dict[str, Any]:
    """Quantiles of beta_t over the coordinates and a 20-bin histogram on [0, 1]."""
    momentum = np.asarray(momentum, dtype=np.float64)
    counts, _ = np.histogram(momentum[np.isfinite(momentum)], bins=20, range=(0.0, 1.0))
    return {**summary(momentum), "histogram": counts.tolist()}


def subset_error(first_half: np.ndarray, second_half: np.ndarray,
                 minibatch_gradients: np.ndarray) -> dict[str, float]:
    """How exact a subset's g* is: with g* the mean of two disjoint equal halves' gradients,
    E||g* - g_inf||^2 = E||g_A - g_B||^2 / 4; its ratio to the mini-batch error
    mean_m ||ĝ^(m) - g*||^2 should be << 1 (it is the variance added to every z)."""
    first_half = np.asarray(first_half, dtype=np.float64)
    second_half = np.asarray(second_half, dtype=np.float64)
    true_gradient = 0.5 * (first_half + second_half)
    subset = float(np.sum((first_half - second_half) ** 2) / 4.0)
    batch = float(np.mean(np.sum((np.asarray(minibatch_gradients) - true_gradient) ** 2, axis=1)))
    return {"subset_error": subset, "minibatch_error": batch, "ratio": subset / batch}


def checkpoint_metrics(
    true_gradient: np.ndarray,
    minibatch_gradients: np.ndarray,
    posterior: Posterior | None = None,
    estimate: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every metric of one checkpoint except the drift (which needs the following steps).

    Args:
        true_gradient: g*, shape (n,).
        minibatch_gradients: M fresh mini-batch gradients at the same parameters, (M, n).
        posterior: the optimizer's gradient posterior, or None (baselines without one).
        estimate: the optimizer's gradient estimate; default the posterior mean.

    Returns:
        ``{"noise", "z_predictive", "z_posterior", "momentum", "estimation"}`` (the first four
        only with a posterior).
    """
    result: dict[str, Any] = {}
    if posterior is not None:
        result["noise"] = noise_calibration(posterior.noise_variance, minibatch_gradients)
        result["z_predictive"] = posterior_calibration(
            posterior.mean, predictive_variance(posterior), true_gradient
        )
        result["z_posterior"] = posterior_calibration(
            posterior.mean, posterior_variance(posterior), true_gradient
        )
        result["momentum"] = momentum_distribution(posterior.momentum)
        estimate = posterior.mean if estimate is None else estimate
    if estimate is not None:
        result["estimation"] = estimation_error(estimate, true_gradient, minibatch_gradients)
    return result
