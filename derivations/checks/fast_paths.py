"""Checks for 09_fast_paths.md: the single-pass algebraic form equals the textbook form.

Textbook form: eq:local-variance, eq:local-mean, eq:global-targets with the expected
precisions a/b. Single-pass form: the gain k = b_g / (b_g + b_ghat) (the shape cancels), the
innovation e = g_hat - mu_{t-1}, mu = mu_{t-1} + k e, sigma^2 = k b_ghat / a,
(mu - mu_{t-1})^2 = k^2 e^2, (mu - g_hat)^2 = (1 - k)^2 e^2, beta_1 = 1 - k. Also the authors'
expanded residuals (sigma^2 + mu^2 - 2 mu mu_{t-1} + mu_{t-1}^2).

Run: ``python derivations/checks/fast_paths.py``.
"""

from __future__ import annotations

import sympy as sp

mean_prev, gradient = sp.symbols("mean_prev gradient", real=True)
shape, drift_rate, noise_rate, prior_strength, ratio = sp.symbols(
    "shape drift_rate noise_rate prior_strength variance_ratio", positive=True
)
half = sp.Rational(1, 2)


def textbook():
    """(mu, sigma^2, b'_g, b'_ghat) from the CAVI formulas as written in the paper."""
    drift_precision, noise_precision = shape / drift_rate, shape / noise_rate
    variance = 1 / (drift_precision + noise_precision)
    mean = variance * (drift_precision * mean_prev + noise_precision * gradient)
    drift_target = prior_strength + half * (variance + (mean - mean_prev) ** 2)
    noise_target = ratio * prior_strength + half * (variance + (mean - gradient) ** 2)
    return mean, variance, drift_target, noise_target


def single_pass():
    """The same four quantities from k and e (eq:fast-gain ... eq:fast-targets)."""
    gain = drift_rate / (drift_rate + noise_rate)
    innovation = gradient - mean_prev
    mean = mean_prev + gain * innovation
    variance = gain * noise_rate / shape
    drift_target = prior_strength + half * (variance + gain**2 * innovation**2)
    noise_target = ratio * prior_strength + half * (variance + (1 - gain) ** 2 * innovation**2)
    return mean, variance, drift_target, noise_target


def check_single_pass_equals_textbook():
    for fast, slow in zip(single_pass(), textbook()):
        assert sp.simplify(fast - slow) == 0, (fast, slow)


def check_momentum_is_one_minus_gain():
    # mu_t = beta_1 mu_{t-1} + (1 - beta_1) g_hat with beta_1 = b_ghat / (b_g + b_ghat).
    mean = textbook()[0]
    beta1 = noise_rate / (drift_rate + noise_rate)
    assert sp.simplify(mean - (beta1 * mean_prev + (1 - beta1) * gradient)) == 0


def check_authors_expanded_residuals():
    # sigma^2 + mu^2 - 2 mu m + m^2 = sigma^2 + (mu - m)^2, for m = mu_{t-1} and m = g_hat.
    mean, variance, drift_target, noise_target = textbook()
    second_moment = variance + mean**2
    assert (
        sp.simplify(
            2 * prior_strength
            + second_moment
            - 2 * mean * mean_prev
            + mean_prev**2
            - 2 * drift_target
        )
        == 0
    )
    assert (
        sp.simplify(
            2 * ratio * prior_strength
            + second_moment
            - 2 * gradient * mean
            + gradient**2
            - 2 * noise_target
        )
        == 0
    )


def check_scaled_denominator_and_rates():
    # eq:fast-scaled: with S = a sigma^2 = k b_ghat, the parameter step and the rate updates
    # the foreach path evaluates equal the direct forms (any a, mu, S, eps, eta, rho).
    mean, variance = sp.symbols("mean variance", positive=True)
    eps, lr, rho, rate, square = sp.symbols("eps lr rho rate square", positive=True)
    scaled = shape * variance
    direct = lr * mean / (sp.sqrt(mean**2 + variance) + eps)
    folded = lr * sp.sqrt(shape) * mean / (sp.sqrt(scaled + shape * mean**2) + sp.sqrt(shape) * eps)
    assert sp.simplify(direct - folded) == 0
    # b <- (1 - rho) b + rho (gamma + (sigma^2 + r^2) / 2), evaluated as
    # (rho gamma + (1 - rho) b) + (rho / 2 / a) S + (rho / 2) r^2
    direct_rate = (1 - rho) * rate + rho * (prior_strength + half * (variance + square))
    folded_rate = (
        (rho * prior_strength + (1 - rho) * rate)
        + rho * half / shape * scaled
        + rho * half * square
    )
    assert sp.simplify(direct_rate - folded_rate) == 0
    _, variance_single, _, _ = single_pass()
    assert (
        sp.simplify(shape * variance_single - drift_rate * noise_rate / (drift_rate + noise_rate))
        == 0
    )


def check_single_pass_matches_rule_numerically():
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from vsgd_bayes.rules import vsgd as rule

    fast = sp.lambdify(
        (mean_prev, drift_rate, noise_rate, gradient, shape, prior_strength, ratio),
        single_pass(),
        "numpy",
    )
    rng = np.random.default_rng(9)
    size = 64
    args = (
        rng.normal(size=size),
        rng.uniform(1e-6, 2.0, size=size),
        rng.uniform(1e-6, 2.0, size=size),
        rng.normal(size=size),
    )
    mean, variance = rule.local_update(*args, 0.50005001)
    targets = rule.global_targets(mean, variance, args[0], args[3], 1e-8, 30.0)
    expected = fast(*args, 0.50005001, 1e-8, 30.0)
    # Different float64 operation order; the residual (mu - g_hat)^2 = (1-k)^2 e^2 avoids a
    # cancellation that the textbook form has, so allow 1e-10 relative.
    for got, want in zip((mean, variance, *targets), expected):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-14)


CHECKS = [
    check_single_pass_equals_textbook,
    check_momentum_is_one_minus_gain,
    check_authors_expanded_residuals,
    check_scaled_denominator_and_rates,
    check_single_pass_matches_rule_numerically,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
