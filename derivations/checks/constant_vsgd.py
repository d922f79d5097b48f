"""Checks for 07_constant_vsgd.md: Constant VSGD (tied precisions w_ghat = w / K_g).

The CAVI optimum of the tied model is derived from its closed-form ELBO (stationary point in
the mean, the variance, the shape and the rate), reduced to the EMA form with beta = K_g/(1+K_g),
compared with Adam's first-moment recursion and with ``vsgd_bayes.constant_rule``.

Run: ``python derivations/checks/constant_vsgd.py``.
"""

from __future__ import annotations

import sympy as sp

mu, mean_prev, gradient = sp.symbols("mu mean_prev gradient", real=True)
variance, shape, rate, prior_shape, prior_rate, ratio = sp.symbols(
    "variance shape rate prior_shape prior_rate variance_ratio", positive=True
)
half = sp.Rational(1, 2)


def elbo():
    """ELBO of one step of the tied model: w ~ Gamma(a_0, gamma), g ~ N(mu_{t-1}, 1/w),
    g_hat ~ N(g, K_g / w); q(g) = N(mu, sigma^2), q(w) = Gamma(a, b)."""
    expected_log_w = sp.digamma(shape) - sp.log(rate)
    expected_w = shape / rate
    drift = half * expected_log_w - half * expected_w * (variance + (mu - mean_prev) ** 2)
    noise = half * (expected_log_w - sp.log(ratio)) - half * expected_w / ratio * (
        variance + (mu - gradient) ** 2
    )
    entropy = half * sp.log(2 * sp.pi * sp.E * variance)
    kl = (
        (shape - prior_shape) * sp.digamma(shape)
        - sp.loggamma(shape)
        + sp.loggamma(prior_shape)
        + prior_shape * (sp.log(rate) - sp.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )
    return drift + noise - sp.log(2 * sp.pi) + entropy - kl


def gain():
    """k = 1 / (1 + K_g)."""
    return 1 / (1 + ratio)


def local_optimum():
    """(mu_t, sigma_t^2) of eq:constant-mean and eq:constant-variance."""
    return mean_prev + gain() * (gradient - mean_prev), (1 - gain()) * rate / shape


def global_optimum(mean, var):
    """(a', b') of eq:constant-target."""
    target_rate = (
        prior_rate
        + half * (var + (mean - mean_prev) ** 2)
        + half * (var + (mean - gradient) ** 2) / ratio
    )
    return prior_shape + 1, target_rate


def check_local_optimum_is_stationary():
    objective = elbo()
    mean, var = local_optimum()
    for variable in (mu, variance):
        derivative = sp.diff(objective, variable).subs({mu: mean, variance: var})
        assert sp.simplify(derivative) == 0, (variable, derivative)


def check_global_optimum_is_stationary():
    objective = elbo()
    target_shape, target_rate = global_optimum(mu, variance)
    for variable in (shape, rate):
        derivative = sp.diff(objective, variable).subs({shape: target_shape, rate: target_rate})
        assert sp.simplify(derivative) == 0, (variable, derivative)


def check_ema_coefficient():
    # (eq:constant-mean): mu_t = beta mu_{t-1} + (1 - beta) g_hat_t, beta = K_g / (1 + K_g).
    mean, _ = local_optimum()
    beta = ratio / (1 + ratio)
    assert sp.simplify(mean - (beta * mean_prev + (1 - beta) * gradient)) == 0
    assert beta.subs(ratio, 9) == sp.Rational(9, 10)


def check_variance_is_one_minus_gain_times_rate_over_shape():
    # (eq:constant-variance): 1 / (E[w] (1 + 1/K_g)) = (1 - k) b / a.
    _, var = local_optimum()
    assert sp.simplify(1 / (shape / rate * (1 + 1 / ratio)) - var) == 0


def check_mean_equals_adam_first_moment():
    # Unroll both recursions for 6 steps with symbolic gradients from mu_0 = m_0 = 0.
    beta1 = sp.Symbol("beta1", positive=True)
    gradients = sp.symbols("g1:7", real=True)
    vsgd_mean, adam_moment = sp.Integer(0), sp.Integer(0)
    # One VSGD step as a function of (mu_{t-1}, g_hat_t), with K_g = beta1 / (1 - beta1).
    one_step = sp.simplify(local_optimum()[0].subs(ratio, beta1 / (1 - beta1)))
    for g in gradients:
        vsgd_mean = one_step.subs({mean_prev: vsgd_mean, gradient: g})
        adam_moment = beta1 * adam_moment + (1 - beta1) * g
        assert sp.expand(vsgd_mean - adam_moment) == 0


def check_sgd_momentum_form():
    # mu_t = (1 - beta) m_t with the heavy-ball buffer m_t = beta m_{t-1} + g_hat_t.
    beta = sp.Symbol("beta", positive=True)
    gradients = sp.symbols("g1:6", real=True)
    mean, buffer = sp.Integer(0), sp.Integer(0)
    for g in gradients:
        mean = beta * mean + (1 - beta) * g
        buffer = beta * buffer + g
        assert sp.expand(mean - (1 - beta) * buffer) == 0


def check_rate_recursion_is_adamnc_average():
    # b_t = (1 - rho_t) b_{t-1} + rho_t b'_t is v_t = beta2_t v_{t-1} + (1 - beta2_t) x_t with
    # beta2_t = 1 - rho_t; for rho_t = 1/t (kappa = 1) it is the running mean (AdamNC, AdaGrad).
    targets = sp.symbols("x1:7", positive=True)
    rate_value = sp.Integer(0)
    for t, target in enumerate(targets, start=1):
        rate_value = (1 - sp.Rational(1, t)) * rate_value + sp.Rational(1, t) * target
        assert sp.simplify(rate_value - sum(targets[:t]) / t) == 0


def check_constant_rule_matches():
    import numpy as np

    import jax

    jax.config.update("jax_enable_x64", True)
    from vsgd_bayes import constant_rule

    local = sp.lambdify((mean_prev, rate, gradient, shape, ratio), local_optimum(), "numpy")
    mean_s, var_s = sp.symbols("mean_s var_s", real=True)
    target = sp.lambdify(
        (mean_s, var_s, mean_prev, gradient, prior_rate, ratio),
        global_optimum(mean_s, var_s)[1],
        "numpy",
    )
    rng = np.random.default_rng(8)
    mean_prev_v, gradient_v = rng.normal(size=32), rng.normal(size=32)
    rate_v = rng.uniform(1e-4, 2.0, size=32)
    shape_v, ratio_v, strength = 1.00005001, 9.0, 1e-8
    expected_mean, expected_variance = local(mean_prev_v, rate_v, gradient_v, shape_v, ratio_v)
    got_mean, got_variance = constant_rule.local_update(
        mean_prev_v, rate_v, gradient_v, shape_v, ratio_v
    )
    # Same formulas, different float64 operation order: a few ulps.
    np.testing.assert_allclose(np.asarray(got_mean), expected_mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(got_variance), expected_variance, rtol=1e-12)
    got_target = constant_rule.global_target(
        expected_mean, expected_variance, mean_prev_v, gradient_v, strength, ratio_v
    )
    expected_target = target(
        expected_mean, expected_variance, mean_prev_v, gradient_v, strength, ratio_v
    )
    np.testing.assert_allclose(np.asarray(got_target), expected_target, rtol=1e-12)
    assert float(constant_rule.momentum(9.0)) == 0.9 and float(constant_rule.gain(9.0)) == 0.1
    assert abs(constant_rule.posterior_shape(1e-8, "paper") - (1e-8 + 1.0)) < 1e-15


CHECKS = [
    check_local_optimum_is_stationary,
    check_global_optimum_is_stationary,
    check_ema_coefficient,
    check_variance_is_one_minus_gain_times_rate_over_shape,
    check_mean_equals_adam_first_moment,
    check_sgd_momentum_form,
    check_rate_recursion_is_adamnc_average,
    check_constant_rule_matches,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
