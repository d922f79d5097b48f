"""Checks for 06_parameter_update.md: the step mu / sqrt(mu^2 + sigma^2) and its limits.

Run: ``python derivations/checks/parameter_update.py``.
"""

from __future__ import annotations

import sympy as sp

mu = sp.Symbol("mu", real=True)
variance, lr, eps, scale = sp.symbols("variance lr eps scale", positive=True)


def direction(mean=mu, var=variance, epsilon=0):
    """mu / (sqrt(mu^2 + sigma^2) + eps) (eq:parameter-step without weight decay)."""
    return mean / (sp.sqrt(mean**2 + var) + epsilon)


def check_step_is_bounded_by_learning_rate():
    # (eq:step-bound): 1 - d^2 = sigma^2 / (mu^2 + sigma^2) > 0, and eps >= 0 only shrinks it.
    slack = sp.simplify(1 - direction() ** 2)
    assert sp.simplify(slack - variance / (mu**2 + variance)) == 0
    assert slack.is_positive
    # With eps > 0 the step is the eps = 0 step times r / (r + eps), r = sqrt(mu^2 + sigma^2).
    ratio = sp.simplify(direction(epsilon=eps) / direction())
    radius = sp.sqrt(mu**2 + variance)
    assert sp.simplify(ratio - radius / (radius + eps)) == 0
    assert sp.simplify(ratio - 1).is_negative and ratio.is_positive


def check_sign_limit():
    # (eq:sign-limit): sigma^2 -> 0 gives sign(mu): sign-SGD.
    assert sp.limit(direction(mean=sp.Symbol("m", positive=True)), variance, 0) == 1
    assert sp.limit(direction(mean=-sp.Symbol("m", positive=True)), variance, 0) == -1


def check_signal_to_noise_limit():
    # (eq:snr-limit): for sigma^2 >> mu^2 the step is mu / sigma to first order in mu.
    series = sp.series(direction(), mu, 0, 2).removeO()
    assert sp.simplify(series - mu / sp.sqrt(variance)) == 0


def check_scale_invariance():
    # (eq:scale-invariance): (c mu, c^2 sigma^2) gives the same direction when eps = 0.
    assert sp.simplify(direction(scale * mu, scale**2 * variance) - direction()) == 0


def check_decoupled_weight_decay():
    # (eq:parameter-step): decay then step equals vsgd_bayes.rules.vsgd.parameter_step.
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from vsgd_bayes.rules import vsgd as rule

    theta, decay = sp.symbols("theta decay", real=True)
    formula = sp.lambdify(
        (theta, mu, variance, lr, decay, eps),
        theta * (1 - lr * decay) - lr * direction(epsilon=eps),
        "numpy",
    )
    rng = np.random.default_rng(7)
    theta_v, mean_v = rng.normal(size=32), rng.normal(size=32)
    variance_v = rng.uniform(1e-6, 2.0, size=32)
    expected = formula(theta_v, mean_v, variance_v, 0.1, 0.01, 1e-8)
    got = rule.parameter_step(theta_v, mean_v, variance_v, 0.1, 0.01, 1e-8)
    # The same float64 operations.
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-14, atol=1e-16)
    assert np.all(np.abs(np.asarray(got) - theta_v * (1 - 0.1 * 0.01)) < 0.1)  # eq:step-bound


CHECKS = [
    check_step_is_bounded_by_learning_rate,
    check_sign_limit,
    check_signal_to_noise_limit,
    check_scale_invariance,
    check_decoupled_weight_decay,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
