"""Checks for 11_kalman_vsgd.md: the steady-state filter, the estimator, its fixed point.

Run: ``python derivations/checks/kalman.py``.
"""

from __future__ import annotations

import sympy as sp

lam, q, r, S, c = sp.symbols("lambda q r S c", positive=True)
k = sp.Symbol("k", positive=True)
v, s, mu, g_hat = sp.symbols("v s mu g_hat", real=True)


def gain_formula(ratio=lam):
    """k(lambda) = 2 / (1 + sqrt(1 + 4/lambda)) (eq:kalman-steady-gain)."""
    return 2 / (1 + sp.sqrt(1 + 4 / ratio))


def check_steady_state_gain():
    # (eq:kalman-steady-gain): k is the fixed point of the gain recursion in units of r,
    # p^- = p + lambda, k = p^-/(p^- + 1), p = k; both closed forms agree; 1 - k = k^2/lambda.
    gain = gain_formula()
    fixed_point = (gain + lam) / (gain + lam + 1) - gain
    assert sp.simplify(sp.radsimp(fixed_point)) == 0
    assert sp.simplify(gain - (-lam + sp.sqrt(lam**2 + 4 * lam)) / 2) == 0
    assert sp.simplify(sp.radsimp(1 - gain - gain**2 / lam)) == 0
    # The root is in (0, 1) and it is the only positive root of k^2 + lambda k - lambda.
    roots = sp.solve(k**2 + lam * k - lam, k)
    assert len(roots) == 1 and sp.simplify(roots[0] - gain) == 0
    for value in (sp.Rational(1, 10**4), 1, 10**4):
        assert 0 < gain.subs(lam, value) < 1


def check_steady_state_filter_is_exact():
    # From P_0 = k r the prediction is k r + q, the gain is k again and P stays k r
    # (eq:kalman-predict, eq:kalman-update); S = r / (1 - k); (eq:kalman-variances).
    gain = gain_formula(q / r)
    predicted = gain * r + q
    assert sp.simplify(sp.radsimp(predicted / (predicted + r) - gain)) == 0
    assert sp.simplify(sp.radsimp((1 - predicted / (predicted + r)) * predicted - gain * r)) == 0
    innovation_variance = predicted + r
    assert sp.simplify(sp.radsimp(innovation_variance * (1 - gain) - r)) == 0  # r = S (1 - k)
    assert sp.simplify(sp.radsimp(innovation_variance * gain**2 - q)) == 0  # q = S k^2
    assert sp.simplify(sp.radsimp(innovation_variance * gain * (1 - gain) - gain * r)) == 0


def check_profile_likelihood_is_the_prediction_error():
    # (eq:kalman-profile): the ML of S for fixed innovations is their mean square, and the
    # profile log-likelihood is a decreasing function of it.
    T = sp.Symbol("T", positive=True)
    mean_square = sp.Symbol("m", positive=True)
    log_likelihood = -T / 2 * (sp.log(2 * sp.pi * S) + mean_square / S)
    optimum = sp.solve(sp.diff(log_likelihood, S), S)
    assert optimum == [mean_square]
    profile = sp.simplify(log_likelihood.subs(S, mean_square))
    assert sp.simplify(profile + T / 2 * (sp.log(2 * sp.pi * mean_square) + 1)) == 0
    assert sp.simplify(sp.diff(profile, mean_square)).is_negative


def check_score_and_sensitivity():
    # (eq:kalman-sensitivity): d/dk of mu_t = mu_{t-1} + k (g_hat - mu_{t-1}) with
    # d mu_{t-1}/dk = s_{t-1}; (eq:kalman-ratio-score): d/dk ln N(g_hat - mu_{t-1}(k); 0, S).
    k_fn = sp.Symbol("kk", positive=True)
    mu_prev = sp.Function("mu_prev")(k_fn)
    mean = mu_prev + k_fn * (g_hat - mu_prev)
    derivative = sp.diff(mean, k_fn).subs(sp.Derivative(mu_prev, k_fn), s)
    assert sp.simplify(derivative - ((1 - k_fn) * s + (g_hat - mu_prev))) == 0
    log_density = -sp.log(2 * sp.pi * S) / 2 - (g_hat - mu_prev) ** 2 / (2 * S)
    score = sp.diff(log_density, k_fn).subs(sp.Derivative(mu_prev, k_fn), s)
    assert sp.simplify(score - (g_hat - mu_prev) * s / S) == 0


def _gaussian_moment(power):
    """E[v^power] for v ~ N(0, S)."""
    x = sp.Symbol("x", real=True)
    density = sp.exp(-(x**2) / (2 * S)) / sp.sqrt(2 * sp.pi * S)
    return sp.simplify(sp.integrate(x**power * density, (x, -sp.oo, sp.oo)))


def check_score_is_orthogonal_to_scale():
    # E[ (1/2)(v^2/S - 1) * v s / S ] = 0 for v ~ N(0, S) given s: the Fisher information
    # of (ln S, k) is diagonal. Also E[score_k] = 0 and E[score_k^2] = s^2 / S.
    cross = sp.expand((v**2 / S - 1) / 2 * v * s / S)
    expectation = sum(
        term.subs(v, 1) * _gaussian_moment(sp.degree(term, v)) for term in cross.as_ordered_terms()
    )
    assert sp.simplify(expectation) == 0
    assert _gaussian_moment(1) == 0
    assert sp.simplify(_gaussian_moment(2) * s**2 / S**2 - s**2 / S) == 0


def check_fisher_information():
    # (eq:kalman-fisher): stationary E[s^2] of s_t = (1 - k) s_{t-1} + v_t, v white of
    # variance S; dk/d ln(lambda); and the natural step of (eq:kalman-ratio-step).
    second_moment = sp.Symbol("E", positive=True)
    solution = sp.solve(sp.Eq(second_moment, (1 - k) ** 2 * second_moment + S), second_moment)
    assert sp.simplify(solution[0] - S / (k * (2 - k))) == 0
    phi = sp.Symbol("phi", real=True)
    gain_of_phi = gain_formula(sp.exp(phi))
    derivative = sp.diff(gain_of_phi, phi)
    expected = gain_of_phi * (1 - gain_of_phi) / (2 - gain_of_phi)
    for value in (-9, -2, 0, 3):  # a rational function of a surd: compare at points, exactly
        difference = (derivative - expected).subs(phi, value)
        assert abs(sp.N(difference, 50)) < sp.Float(10) ** -45
    # Natural gradient: F_phi^-1 dl/dphi with F_phi = F_k (dk/dphi)^2, dl/dphi = dk/dphi score.
    dk_dphi = k * (1 - k) / (2 - k)
    fisher_k = 1 / (k * (2 - k))
    natural = (dk_dphi * v * s / S) / (fisher_k * dk_dphi**2)
    assert sp.simplify(natural - (2 - k) ** 2 / (1 - k) * v * s / S) == 0


def check_prediction_error_has_one_minimum_at_the_kalman_gain():
    # (eq:kalman-fixed-point): the stationary mean-square innovation J(k) of a constant-gain
    # filter on data with true (q, r). Its error e_t = g_t - mu_t obeys
    # e_t = (1-k)(e_{t-1} + w_t) - k n_t, and v_t = e_{t-1} + w_t + n_t.
    error_variance = sp.Symbol("Ee", positive=True)
    solved = sp.solve(
        sp.Eq(error_variance, (1 - k) ** 2 * (error_variance + q) + k**2 * r), error_variance
    )[0]
    assert sp.simplify(solved - ((1 - k) ** 2 * q + k**2 * r) / (k * (2 - k))) == 0
    J = solved + q + r
    # J'(k) = 0  <=>  k^2 + lambda k - lambda = 0 (lambda = q/r), i.e. k = k(q/r), and J'
    # changes sign from - to + there (its numerator is a positive multiple of that quadratic).
    numerator = sp.factor(sp.together(sp.diff(J, k)))
    quadratic = k**2 + (q / r) * k - q / r
    ratio = sp.simplify(numerator / quadratic)
    assert ratio.free_symbols <= {k, q, r}
    for values in ({k: sp.Rational(1, 3), q: 2, r: 5}, {k: sp.Rational(9, 10), q: 1, r: 7}):
        assert ratio.subs(values) > 0
    gain = gain_formula(q / r)
    assert sp.simplify(sp.radsimp(J.subs(k, gain) - r / (1 - gain))) == 0


def check_scale_invariance():
    # (eq:kalman-scale-invariance): one step of the rule's recursions with every gradient
    # multiplied by c: mu, s scale by c, S by c^2, the score and the direction do not change.
    S_prev, s_prev, mu_prev = sp.symbols("S_prev s_prev mu_prev", positive=True)
    weight = sp.Symbol("w", positive=True)

    def step(scale):
        innovation = scale * g_hat - scale * mu_prev
        score = innovation * (scale * s_prev) / (scale**2 * S_prev)
        mean = scale * mu_prev + k * innovation
        variance = (scale**2 * S_prev + weight * (innovation**2 - scale**2 * S_prev)) * k * (1 - k)
        return score, mean / sp.sqrt(mean**2 + variance)

    for unscaled, scaled in zip(step(1), step(c)):
        assert sp.simplify(scaled - unscaled) == 0


def check_rule_functions_follow_the_formulas():
    # vsgd_bayes.rules.kalman evaluates these formulas (float64, random points).
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from vsgd_bayes.rules import kalman as kalman_rule

    rng = np.random.default_rng(0)
    log_ratio = rng.uniform(-25.0, 25.0, 200)
    gain, complement = (np.asarray(x) for x in kalman_rule.steady_state_gain(log_ratio))
    ratio = np.exp(log_ratio)
    # k^2 + lambda k - lambda = 0 relative to lambda; 1 - k = k^2/lambda as computed.
    np.testing.assert_allclose((gain**2 + ratio * gain) / ratio, 1.0, rtol=1e-13)
    np.testing.assert_allclose(complement + gain, 1.0, rtol=1e-13)
    innovation_variance = 10.0 ** rng.uniform(-8, 4, 200)
    drift, noise, posterior = (
        np.asarray(x) for x in kalman_rule.variances(innovation_variance, gain, complement)
    )
    np.testing.assert_allclose(drift / noise, ratio, rtol=1e-12)
    np.testing.assert_allclose(posterior, gain * noise, rtol=1e-14)
    innovation, sensitivity = rng.normal(size=200), rng.normal(size=200)
    score = np.asarray(kalman_rule.ratio_score(innovation, sensitivity, innovation_variance))
    stepped = np.asarray(
        kalman_rule.ratio_step(log_ratio, score, gain, complement, 0.01, np.inf)
    )
    expected = np.clip(
        log_ratio + 0.01 * (2 - gain) ** 2 / (1 - gain) * innovation * sensitivity
        / innovation_variance, -27.631021115928547, 27.631021115928547
    )
    # (2-k)^2/(1-k) near k = 1 loses digits when 1 - k is formed by subtraction: compare where
    # 1 - k is not tiny.
    usable = complement > 1e-6
    np.testing.assert_allclose(stepped[usable], expected[usable], rtol=1e-9, atol=1e-12)


CHECKS = [
    check_steady_state_gain,
    check_steady_state_filter_is_exact,
    check_profile_likelihood_is_the_prediction_error,
    check_score_and_sensitivity,
    check_score_is_orthogonal_to_scale,
    check_fisher_information,
    check_prediction_error_has_one_minimum_at_the_kalman_gain,
    check_scale_invariance,
    check_rule_functions_follow_the_formulas,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok {check.__name__}")
