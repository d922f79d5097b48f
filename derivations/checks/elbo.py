"""Checks for 02_mean_field_and_elbo.md, 03_local_update.md and the targets of 04_global_update.md.

The closed-form ELBO of one VSGD step (eq:elbo) is written out in sympy; the CAVI optimum of the
local factor q(g_t) (eq:local-variance, eq:local-mean) and of the global factors q(w_g),
q(w_ghat) (eq:global-targets) must be stationary points of it, and maxima. The Gamma identities
the ELBO rests on (eq:gamma-moments, eq:gamma-kl) are checked by numerical quadrature with mpmath
at random high-precision points (sympy cannot integrate them in closed form). The optimum is
also evaluated numerically against ``vsgd_bayes.rules.vsgd`` at random points, so that the algebra
here and the code cannot drift apart.

Run: ``python derivations/checks/elbo.py``.
"""

from __future__ import annotations

import random

import mpmath
import sympy as sp

# Symbols (all per coordinate, at step t):
#   mu, variance     mean and variance of q(g_t) = N(mu, variance)
#   mean_prev        mu_{t-1}, the fixed prior mean of g_t
#   gradient         the observed mini-batch gradient g_hat_t
#   shape_*, rate_*  shape and rate of q(w_g) ("drift") and q(w_ghat) ("noise")
#   prior_shape      a_0; prior_drift_rate = gamma, prior_noise_rate = K_g * gamma
mu, mean_prev, gradient = sp.symbols("mu mean_prev gradient", real=True)
variance = sp.Symbol("variance", positive=True)
shape_drift, rate_drift, shape_noise, rate_noise = sp.symbols(
    "shape_drift rate_drift shape_noise rate_noise", positive=True
)
prior_shape, prior_drift_rate, prior_noise_rate = sp.symbols(
    "prior_shape prior_drift_rate prior_noise_rate", positive=True
)


def gamma_kl(shape, rate, shape0, rate0):
    """KL( Gamma(shape, rate) || Gamma(shape0, rate0) ), closed form (eq:gamma-kl)."""
    return (
        (shape - shape0) * sp.digamma(shape)
        - sp.loggamma(shape)
        + sp.loggamma(shape0)
        + shape0 * (sp.log(rate) - sp.log(rate0))
        + shape * (rate0 - rate) / rate
    )


def expected_log_normal(precision_mean, log_precision_mean, second_moment):
    """E_q[ln N(x | m, 1/w)] given E[w], E[ln w] and E[(x - m)^2] (independent factors)."""
    return (
        sp.Rational(1, 2) * log_precision_mean
        - sp.Rational(1, 2) * sp.log(2 * sp.pi)
        - sp.Rational(1, 2) * precision_mean * second_moment
    )


def elbo():
    """The closed-form ELBO of one step (eq:elbo) as a sympy expression."""
    drift_term = expected_log_normal(
        shape_drift / rate_drift,
        sp.digamma(shape_drift) - sp.log(rate_drift),
        variance + (mu - mean_prev) ** 2,
    )
    noise_term = expected_log_normal(
        shape_noise / rate_noise,
        sp.digamma(shape_noise) - sp.log(rate_noise),
        variance + (mu - gradient) ** 2,
    )
    entropy = sp.Rational(1, 2) * sp.log(2 * sp.pi * sp.E * variance)
    return (
        drift_term
        + noise_term
        + entropy
        - gamma_kl(shape_drift, rate_drift, prior_shape, prior_drift_rate)
        - gamma_kl(shape_noise, rate_noise, prior_shape, prior_noise_rate)
    )


def local_optimum():
    """(mu_t, sigma_t^2) of eq:local-mean and eq:local-variance."""
    drift_precision = shape_drift / rate_drift
    noise_precision = shape_noise / rate_noise
    optimal_variance = 1 / (drift_precision + noise_precision)
    optimal_mean = optimal_variance * (drift_precision * mean_prev + noise_precision * gradient)
    return optimal_mean, optimal_variance


def global_optimum():
    """Shape and rate targets of eq:global-targets (given q(g_t))."""
    half = sp.Rational(1, 2)
    drift = (prior_shape + half, prior_drift_rate + half * (variance + (mu - mean_prev) ** 2))
    noise = (prior_shape + half, prior_noise_rate + half * (variance + (mu - gradient) ** 2))
    return drift, noise


def check_local_update_is_stationary_point():
    objective = elbo()
    optimal_mean, optimal_variance = local_optimum()
    at_optimum = {mu: optimal_mean, variance: optimal_variance}
    for variable in (mu, variance):
        derivative = sp.diff(objective, variable).subs(at_optimum)
        assert sp.simplify(derivative) == 0, (variable, derivative)


def check_local_update_is_maximum():
    # The ELBO is concave in (mu, variance): the Hessian is diagonal with negative entries.
    objective = elbo()
    hessian = sp.hessian(objective, (mu, variance))
    assert sp.simplify(hessian[0, 1]) == 0
    assert sp.simplify(hessian[0, 0] + shape_drift / rate_drift + shape_noise / rate_noise) == 0
    assert sp.simplify(hessian[1, 1] + 1 / (2 * variance**2)) == 0


def check_global_targets_are_stationary_point():
    # The derivatives in the shapes contain trigamma(shape) times (target shape - shape),
    # which vanishes at the target: sympy simplifies it symbolically.
    objective = elbo()
    (drift_shape_target, drift_rate_target), (noise_shape_target, noise_rate_target) = (
        global_optimum()
    )
    at_optimum = {
        shape_drift: drift_shape_target,
        rate_drift: drift_rate_target,
        shape_noise: noise_shape_target,
        rate_noise: noise_rate_target,
    }
    for variable in (shape_drift, rate_drift, shape_noise, rate_noise):
        derivative = sp.diff(objective, variable).subs(at_optimum)
        assert sp.simplify(derivative) == 0, (variable, derivative)


def check_global_targets_are_maximum():
    # Hessian in (shape, rate) of the drift factor at the target is negative definite;
    # it holds trigamma, so it is checked at random high-precision points (mpmath).
    objective = elbo()
    (shape_target, rate_target), _ = global_optimum()
    hessian = sp.hessian(objective, (shape_drift, rate_drift)).subs(
        {shape_drift: shape_target, rate_drift: rate_target}
    )
    hessian_function = sp.lambdify(
        (prior_shape, prior_drift_rate, variance, mu, mean_prev), hessian, "mpmath"
    )
    rng = random.Random(0)
    with mpmath.workdps(40):
        for _ in range(20):
            point = [
                mpmath.mpf(rng.uniform(1e-3, 3.0)),
                mpmath.mpf(rng.uniform(1e-3, 3.0)),
                mpmath.mpf(rng.uniform(1e-3, 2.0)),
                mpmath.mpf(rng.uniform(-2.0, 2.0)),
                mpmath.mpf(rng.uniform(-2.0, 2.0)),
            ]
            matrix = mpmath.matrix(hessian_function(*point))
            assert matrix[0, 0] < 0
            assert matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0] > 0


def _gamma_density(shape, rate):
    return lambda w: rate**shape * w ** (shape - 1) * mpmath.exp(-rate * w) / mpmath.gamma(shape)


def check_gamma_moments_by_quadrature():
    # E[w] = a / b and E[ln w] = digamma(a) - ln b (eq:gamma-moments), by quadrature.
    rng = random.Random(1)
    with mpmath.workdps(30):
        for _ in range(5):
            shape = mpmath.mpf(rng.uniform(0.6, 4.0))
            rate = mpmath.mpf(rng.uniform(0.2, 3.0))
            density = _gamma_density(shape, rate)
            mean = mpmath.quad(lambda w: w * density(w), [0, 1, mpmath.inf])
            log_mean = mpmath.quad(lambda w: mpmath.log(w) * density(w), [0, 1, mpmath.inf])
            assert abs(mean - shape / rate) < mpmath.mpf("1e-20")
            assert abs(log_mean - (mpmath.digamma(shape) - mpmath.log(rate))) < mpmath.mpf("1e-20")


def check_gamma_kl_by_quadrature():
    # The closed form (eq:gamma-kl) against the integral of q ln(q / p), at random points.
    closed_form = sp.lambdify(
        (shape_drift, rate_drift, prior_shape, prior_drift_rate),
        gamma_kl(shape_drift, rate_drift, prior_shape, prior_drift_rate),
        "mpmath",
    )
    rng = random.Random(2)
    with mpmath.workdps(30):
        for _ in range(5):
            shape, shape0 = (mpmath.mpf(rng.uniform(0.6, 4.0)) for _ in range(2))
            rate, rate0 = (mpmath.mpf(rng.uniform(0.2, 3.0)) for _ in range(2))
            q, p = _gamma_density(shape, rate), _gamma_density(shape0, rate0)
            integral = mpmath.quad(lambda w: q(w) * mpmath.log(q(w) / p(w)), [0, 1, mpmath.inf])
            assert abs(integral - closed_form(shape, rate, shape0, rate0)) < mpmath.mpf("1e-18")


def check_rule_matches_cavi_optimum():
    # vsgd_bayes.rules.vsgd.local_update / global_targets evaluate the formulas derived here.
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from vsgd_bayes.rules import vsgd as rule

    optimal_mean, optimal_variance = local_optimum()
    (_, drift_rate_target), (_, noise_rate_target) = global_optimum()
    shared_shape = sp.Symbol("shape", positive=True)
    same_shape = {shape_drift: shared_shape, shape_noise: shared_shape}
    local = sp.lambdify(
        (mean_prev, rate_drift, rate_noise, gradient, shared_shape),
        (optimal_mean.subs(same_shape), optimal_variance.subs(same_shape)),
        "numpy",
    )
    targets = sp.lambdify(
        (mu, variance, mean_prev, gradient, prior_drift_rate, prior_noise_rate),
        (drift_rate_target, noise_rate_target),
        "numpy",
    )
    rng = np.random.default_rng(3)
    size = 64
    mean_prev_value = rng.normal(size=size)
    gradient_value = rng.normal(size=size)
    drift_rate_value = rng.uniform(1e-4, 2.0, size=size)
    noise_rate_value = rng.uniform(1e-4, 2.0, size=size)
    shape_value, strength, ratio = 0.50005001, 1e-8, 30.0
    expected_mean, expected_variance = local(
        mean_prev_value, drift_rate_value, noise_rate_value, gradient_value, shape_value
    )
    got_mean, got_variance = rule.local_update(
        mean_prev_value, drift_rate_value, noise_rate_value, gradient_value, shape_value
    )
    # float64 evaluation of the same expression in a different order: a few ulps.
    np.testing.assert_allclose(np.asarray(got_mean), expected_mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(got_variance), expected_variance, rtol=1e-12)
    expected_targets = targets(
        expected_mean,
        expected_variance,
        mean_prev_value,
        gradient_value,
        strength,
        ratio * strength,
    )
    got_targets = rule.global_targets(
        expected_mean, expected_variance, mean_prev_value, gradient_value, strength, ratio
    )
    for got, expected in zip(got_targets, expected_targets):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)


CHECKS = [
    check_local_update_is_stationary_point,
    check_local_update_is_maximum,
    check_global_targets_are_stationary_point,
    check_global_targets_are_maximum,
    check_gamma_moments_by_quadrature,
    check_gamma_kl_by_quadrature,
    check_rule_matches_cavi_optimum,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
