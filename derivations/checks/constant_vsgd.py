"""Checks for 07_constant_vsgd.md: Constant VSGD (tied precisions w_ghat = w / K_g).

The CAVI optimum of the tied model is derived from its closed-form ELBO (stationary point in
the mean, the variance, the shape and the rate), reduced to the EMA form with beta = K_g/(1+K_g),
compared with Adam's first-moment recursion and with ``vsgd_bayes.rules.constant``.

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


def check_blend_is_not_a_running_max():
    # (eq:blend-not-max): b_t - b_{t-1} = rho_t (b'_t - b_{t-1}) is negative whenever the target
    # falls below the current rate, while AMSGrad's v_hat_t - v_hat_{t-1} = max(0, v_t -
    # v_hat_{t-1}) never is. Example: targets 1, 100, 1, 1, 1 with rho_t = t^-0.81.
    previous, target, rho = sp.symbols("b_prev b_target rho", positive=True)
    assert sp.expand((1 - rho) * previous + rho * target - previous
                     - rho * (target - previous)) == 0
    kappa = sp.Rational(81, 100)
    rates, running_max, rate_value, max_value = [], [], sp.Integer(0), sp.Integer(0)
    for t, target_value in enumerate([1, 100, 1, 1, 1], start=1):
        rho_t = sp.Integer(t) ** -kappa
        rate_value = (1 - rho_t) * rate_value + rho_t * target_value
        max_value = sp.Max(max_value, target_value)
        rates.append(float(rate_value))
        running_max.append(int(max_value))
    assert all(later < earlier for earlier, later in zip(rates[1:], rates[2:]))  # decreasing
    assert running_max == [1, 100, 100, 100, 100]


def check_running_mean_rate_meets_adamnc_condition_only_for_kappa_one():
    # (eq:adamnc-condition): kappa = 1: t b_t - (t - 1) b_{t-1} = b'_t > 0, so with
    # eta_t = eta / sqrt(t), sqrt(b_t) / eta_t = sqrt(t b_t) / eta never decreases.
    targets = sp.symbols("x1:7", positive=True)
    rate_value = sp.Integer(0)
    for t, target in enumerate(targets, start=1):
        previous = rate_value
        rate_value = (1 - sp.Rational(1, t)) * previous + sp.Rational(1, t) * target
        assert sp.simplify(t * rate_value - (t - 1) * previous - target) == 0
    # kappa < 1: t^kappa b_t - (t-1)^kappa b_{t-1} = b'_t - (1 - t^kappa + (t-1)^kappa) b_{t-1}
    # can be negative: targets 1 then 1e-8 with kappa = 0.81.
    kappa = sp.Rational(81, 100)
    t = sp.Symbol("t", positive=True)
    previous, target = sp.symbols("b_prev b_target", positive=True)
    rate_t = (1 - t**-kappa) * previous + t**-kappa * target
    difference = t**kappa * rate_t - (t - 1) ** kappa * previous
    assert sp.simplify(difference - (target - (1 - t**kappa + (t - 1) ** kappa) * previous)) == 0
    assert difference.subs({t: 2, previous: 1, target: sp.Rational(1, 10**8)}) < 0


def check_constant_vsgd_denominator_falls_after_a_spike():
    # On Reddi et al.'s stream (-10, ..., 1010, -10, ...) Constant VSGD's denominator
    # sqrt(mu_t^2 + sigma_t^2) jumps at the large gradient and falls back within ~1/(1 - beta)
    # steps (mu_t^2 forgets with beta = 0.9), like Adam's v_t with beta_2 = 0.99 and unlike
    # AMSGrad's running max.
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from vsgd_bayes import hyperparameters as hp
    from vsgd_bayes.rules import constant as constant_rule

    stream = np.full(120, -10.0)
    stream[60] = 1010.0
    state = constant_rule.init_state(jnp.zeros(1))
    denominators, v, v_hat, maxima = [], 0.0, 0.0, []
    for t, g in enumerate(stream, start=1):
        # The shape before step t: a_0 at step 1, a_0 + 1 afterwards (eq:constant-target).
        shape = hp.prior_shape(1e-8) if t == 1 else constant_rule.posterior_shape(1e-8)
        mean, variance = constant_rule.local_update(
            state.gradient_mean, state.rate, jnp.array([g]), shape, 9.0)
        _, state = constant_rule.step(jnp.zeros(1), jnp.array([g]), state, variance_ratio=9.0)
        assert float(state.gradient_mean[0]) == float(mean[0])  # the same local update
        denominators.append(float(jnp.sqrt(mean**2 + variance)[0]))
        v = 0.99 * v + 0.01 * g**2
        v_hat = max(v_hat, v)
        maxima.append(v_hat)
    peak = denominators[60]
    assert peak > 5 * denominators[59] and denominators[110] < 0.5 * peak
    assert all(b >= a for a, b in zip(maxima, maxima[1:]))


def check_constant_rule_matches():
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from vsgd_bayes.rules import constant as constant_rule

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
    check_blend_is_not_a_running_max,
    check_running_mean_rate_meets_adamnc_condition_only_for_kappa_one,
    check_constant_vsgd_denominator_falls_after_a_spike,
    check_constant_rule_matches,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
