"""Checks for 04_global_update.md: the SVI blend is a natural-gradient step on the ELBO.

For a Gamma factor q(w) = Gamma(a, b) with natural parameters lambda = (a - 1, -b) (sufficient
statistics (ln w, w)) and log-partition A(lambda) = ln Gamma(a) - a ln b, the Fisher matrix is
F = Hessian of A (eq:gamma-fisher). The part of the ELBO that depends on q(w) is
L(a, b) = 1/2 E[ln w] - 1/2 E[w] S - KL(q || Gamma(a_0, b_0)) with S the expected squared
residual (eq:elbo). The checks show symbolically that F^{-1} grad_lambda L = lambda* - lambda
(eq:natural-gradient), with lambda* the CAVI target (eq:global-targets), so that
lambda + rho F^{-1} grad L = (1 - rho) lambda + rho lambda* (eq:svi-blend). The
digamma/trigamma terms are kept symbolic; as a fallback the identity is also evaluated at random
points with 50-digit mpmath arithmetic (sympy's simplify does succeed here; the fallback guards
against a sympy version where it does not). F is also checked against the covariance of the
sufficient statistics by quadrature.

Run: ``python derivations/checks/natural_gradient.py``.
"""

from __future__ import annotations

import random

import mpmath
import sympy as sp

shape, rate, prior_shape, prior_rate, residual = sp.symbols(
    "shape rate prior_shape prior_rate residual", positive=True
)
# Natural parameters lambda_1 = a - 1 (real), lambda_2 = -b (negative).
natural_1 = sp.Symbol("lambda_1", real=True)
natural_2 = sp.Symbol("lambda_2", negative=True)
to_shape_rate = {natural_1: shape - 1, natural_2: -rate}


def log_partition():
    """A(lambda) = ln Gamma(lambda_1 + 1) - (lambda_1 + 1) ln(-lambda_2)."""
    return sp.loggamma(natural_1 + 1) - (natural_1 + 1) * sp.log(-natural_2)


def fisher():
    """F = Hessian of A in the natural parameters, written in (a, b) (eq:gamma-fisher)."""
    hessian = sp.hessian(log_partition(), (natural_1, natural_2))
    return sp.simplify(hessian.subs(to_shape_rate))


def elbo_of_factor():
    """The terms of the ELBO that depend on q(w) = Gamma(a, b), with S = `residual`.

    S = sigma^2 + (mu - mean)^2 is the expected squared residual of the Gaussian factor that
    w is the precision of; constants in (a, b) are dropped.
    """
    half = sp.Rational(1, 2)
    expected_log = sp.digamma(shape) - sp.log(rate)
    expected = shape / rate
    kl = (
        (shape - prior_shape) * sp.digamma(shape)
        - sp.loggamma(shape)
        + sp.loggamma(prior_shape)
        + prior_shape * (sp.log(rate) - sp.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )
    return half * expected_log - half * expected * residual - kl


def natural_gradient():
    """F^{-1} grad_lambda L, with grad_lambda = (d/da, -d/db) since lambda = (a - 1, -b)."""
    objective = elbo_of_factor()
    euclidean = sp.Matrix([sp.diff(objective, shape), -sp.diff(objective, rate)])
    return fisher().inv() * euclidean


def target_minus_current():
    """lambda* - lambda with lambda* = (a_0 + 1/2 - 1, -(b_0 + S/2))."""
    target_shape = prior_shape + sp.Rational(1, 2)
    target_rate = prior_rate + residual / 2
    return sp.Matrix([target_shape - shape, -(target_rate - rate)])


def check_fisher_closed_form():
    expected = sp.Matrix([[sp.polygamma(1, shape), 1 / rate], [1 / rate, shape / rate**2]])
    assert sp.simplify(fisher() - expected) == sp.zeros(2, 2)


def check_fisher_is_covariance_of_sufficient_statistics():
    # Cov(ln w, w) matrix under Gamma(a, b), by quadrature, equals F at random points.
    rng = random.Random(4)
    fisher_function = sp.lambdify((shape, rate), fisher(), "mpmath")
    with mpmath.workdps(30):
        for _ in range(2):
            a = mpmath.mpf(rng.uniform(0.7, 4.0))
            b = mpmath.mpf(rng.uniform(0.3, 3.0))

            def density(w, a=a, b=b):
                return b**a * w ** (a - 1) * mpmath.exp(-b * w) / mpmath.gamma(a)

            def expect(f, density=density):
                return mpmath.quad(lambda w: f(w) * density(w), [0, 1, mpmath.inf])

            mean_log, mean = expect(mpmath.log), expect(lambda w: w)
            covariance = mpmath.matrix(
                [
                    [expect(lambda w: mpmath.log(w) ** 2) - mean_log**2,
                     expect(lambda w: w * mpmath.log(w)) - mean * mean_log],
                    [expect(lambda w: w * mpmath.log(w)) - mean * mean_log,
                     expect(lambda w: w**2) - mean**2],
                ]
            )
            difference = covariance - mpmath.matrix(fisher_function(a, b))
            assert mpmath.mnorm(difference, 1) < mpmath.mpf("1e-18")


def check_natural_gradient_points_at_cavi_target_symbolically():
    difference = sp.simplify(natural_gradient() - target_minus_current())
    assert difference == sp.zeros(2, 1), difference


def check_natural_gradient_points_at_cavi_target_numerically():
    # Fallback for the digamma/trigamma algebra: 50-digit evaluation at random points.
    difference = sp.lambdify(
        (shape, rate, prior_shape, prior_rate, residual),
        natural_gradient() - target_minus_current(),
        "mpmath",
    )
    rng = random.Random(5)
    with mpmath.workdps(50):
        for _ in range(50):
            point = [mpmath.mpf(rng.uniform(1e-3, 5.0)) for _ in range(5)]
            assert mpmath.mnorm(mpmath.matrix(difference(*point)), 1) < mpmath.mpf("1e-40")


def check_natural_gradient_step_is_svi_blend():
    # lambda + rho F^{-1} grad L = (1 - rho) lambda + rho lambda*, componentwise in (a, b).
    step_size = sp.Symbol("rho", positive=True)
    current = sp.Matrix([shape - 1, -rate])
    stepped = current + step_size * natural_gradient()
    target = current + target_minus_current()
    blended = (1 - step_size) * current + step_size * target
    assert sp.simplify(stepped - blended) == sp.zeros(2, 1)
    # Read back in (a, b): the rate follows eq:svi-blend, the shape stays a_0 + 1/2 once there.
    new_rate = sp.simplify(-stepped[1])
    target_rate = prior_rate + residual / 2
    assert sp.simplify(new_rate - ((1 - step_size) * rate + step_size * target_rate)) == 0
    new_shape = sp.simplify(stepped[0] + 1).subs(shape, prior_shape + sp.Rational(1, 2))
    assert sp.simplify(new_shape - (prior_shape + sp.Rational(1, 2))) == 0


CHECKS = [
    check_fisher_closed_form,
    check_fisher_is_covariance_of_sufficient_statistics,
    check_natural_gradient_points_at_cavi_target_symbolically,
    check_natural_gradient_points_at_cavi_target_numerically,
    check_natural_gradient_step_is_svi_blend,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
    print("F =", fisher())
    print("F^-1 grad L =", sp.simplify(natural_gradient()).T)
