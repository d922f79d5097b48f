"""Checks for 12_factored_vsgd.md: factored precisions, their conjugate updates and the gauge.

Run: ``python derivations/checks/factored.py``.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from scipy.special import digamma, gammaln

alpha, beta, prior_shape, prior_rate, c = sp.symbols(
    "alpha beta prior_shape prior_rate c", positive=True
)


def _factor_elbo(shape, rate, count, weighted_residual, a0, b0):
    """The terms of (eq:factored-elbo) in one Gamma factor q = Gamma(shape, rate).

    count: number of coordinates the factor multiplies; weighted_residual: sum over them of the
    other factor's expectation times the squared residual.
    """
    expected_log = sp.polygamma(0, shape) - sp.log(rate)
    expected = shape / rate
    likelihood = (
        sp.Rational(1, 2) * count * expected_log - sp.Rational(1, 2) * expected * weighted_residual
    )
    log_prior = (a0 - 1) * expected_log - b0 * expected
    entropy = shape - sp.log(rate) + sp.loggamma(shape) + (1 - shape) * sp.polygamma(0, shape)
    return likelihood + log_prior + entropy


def check_row_factor_is_conjugate():
    # ln p terms in r of a row with n = 3 columns: coefficients of ln r and r
    r = sp.Symbol("r", positive=True)
    s = sp.symbols("s0:3", positive=True)
    d = sp.symbols("d0:3", positive=True)
    a0, b0 = prior_shape, prior_rate
    log_joint = (
        sum(
            sp.Rational(1, 2) * sp.log(r * sj) - sp.Rational(1, 2) * r * sj * dj
            for sj, dj in zip(s, d)
        )
        + (a0 - 1) * sp.log(r)
        - b0 * r
    )
    log_joint = sp.expand(sp.expand_log(log_joint, force=True))
    assert sp.simplify(log_joint.coeff(sp.log(r)) - (a0 - 1 + sp.Rational(3, 2))) == 0
    expected_rate = b0 + sp.Rational(1, 2) * sum(sj * dj for sj, dj in zip(s, d))
    assert sp.simplify(-log_joint.coeff(r) - expected_rate) == 0


def check_row_target_is_stationary_point():
    n, weighted = sp.symbols("n weighted", positive=True)
    elbo = _factor_elbo(alpha, beta, n, weighted, prior_shape, prior_rate)
    target = {alpha: prior_shape + n / 2, beta: prior_rate + weighted / 2}
    for variable in (alpha, beta):
        assert sp.simplify(sp.diff(elbo, variable).subs(target)) == 0


def check_gauge_leaves_likelihood_terms_unchanged():
    a_r, b_r, a_s, b_s = sp.symbols("a_r b_r a_s b_s", positive=True)
    product = (a_r / b_r) * (a_s / b_s)
    log_sum = sp.polygamma(0, a_r) - sp.log(b_r) + sp.polygamma(0, a_s) - sp.log(b_s)
    gauged = {b_r: b_r / c, b_s: b_s * c}
    assert sp.simplify(product.subs(gauged, simultaneous=True) - product) == 0
    assert (
        sp.simplify(sp.expand_log(log_sum.subs(gauged, simultaneous=True) - log_sum, force=True))
        == 0
    )


def _numeric_elbo(shape_r, rate_r, shape_s, rate_s, residual, a0, b0_row, b0_col):
    er, es = shape_r / rate_r, shape_s / rate_s
    elr, els = digamma(shape_r) - np.log(rate_r), digamma(shape_s) - np.log(rate_s)
    likelihood = np.sum(
        0.5 * (elr[:, None] + els[None, :]) - 0.5 * er[:, None] * es[None, :] * residual
    )

    def prior_plus_entropy(shape, rate, el, e, b0):
        entropy = shape - np.log(rate) + gammaln(shape) + (1 - shape) * digamma(shape)
        log_prior = a0 * np.log(b0) - gammaln(a0) + (a0 - 1) * el - b0 * e
        return np.sum(log_prior + entropy)

    return (
        likelihood
        + prior_plus_entropy(shape_r, rate_r, elr, er, b0_row)
        + prior_plus_entropy(shape_s, rate_s, els, es, b0_col)
    )


def check_coordinate_ascent_never_lowers_the_elbo():
    rng = np.random.default_rng(0)
    m, n, a0, b0 = 5, 7, 0.3, 0.2
    residual = rng.gamma(1.0, 1.0, size=(m, n)) * rng.gamma(2.0, 1.0, size=(m, 1))
    shape_r, shape_s = np.full(m, a0 + n / 2), np.full(n, a0 + m / 2)
    rate_r, rate_s = rng.gamma(2.0, 1.0, m), rng.gamma(2.0, 1.0, n)
    values = [_numeric_elbo(shape_r, rate_r, shape_s, rate_s, residual, a0, b0, a0)]
    for _ in range(20):
        rate_r = b0 + 0.5 * residual @ (shape_s / rate_s)  # (eq:factored-targets), rows
        values.append(_numeric_elbo(shape_r, rate_r, shape_s, rate_s, residual, a0, b0, a0))
        rate_s = a0 + 0.5 * (shape_r / rate_r) @ residual  # columns, with the new rows
        values.append(_numeric_elbo(shape_r, rate_r, shape_s, rate_s, residual, a0, b0, a0))
    # 1e-9 relative: float64 round-off of sums of ~35 terms of order 10
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(values, values[1:])), values


def check_first_step_is_vsgd_first_step():
    # column prior Gamma(a0, a0) has mean 1: E[r]E[s] at the start is VSGD's a0 / b0
    a0, b0_g, b0_n, u, ghat = sp.symbols("a0 b0_g b0_n u ghat", positive=True)
    drift = (a0 / b0_g) * (a0 / a0)
    noise = (a0 / b0_n) * (a0 / a0)
    variance = 1 / (drift + noise)
    mean = variance * (drift * u + noise * ghat)
    vsgd_variance = 1 / (a0 / b0_g + a0 / b0_n)
    assert sp.simplify(variance - vsgd_variance) == 0
    assert sp.simplify(mean - vsgd_variance * (a0 / b0_g * u + a0 / b0_n * ghat)) == 0
    # with b0_n = K_g b0_g and u = 0 the first mean is ghat / (1 + K_g), as in VSGD
    k = sp.Symbol("K_g", positive=True)
    assert sp.simplify(mean.subs({b0_n: k * b0_g, u: 0}) - ghat / (1 + k)) == 0


CHECKS = [
    check_row_factor_is_conjugate,
    check_row_target_is_stationary_point,
    check_gauge_leaves_likelihood_terms_unchanged,
    check_coordinate_ascent_never_lowers_the_elbo,
    check_first_step_is_vsgd_first_step,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
