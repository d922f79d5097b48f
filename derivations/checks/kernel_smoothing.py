"""Checks for 08_kernel_smoothing.md: the unrolled recursions as one-sided kernel averages.

Run: ``python derivations/checks/kernel_smoothing.py``.
"""

from __future__ import annotations

import sympy as sp

HORIZON = 6


def blend_weights(step_sizes):
    """W_{t,s} = rho_s prod_{r=s+1}^{t} (1 - rho_r), s = 1..t (eq:rate-kernel)."""
    t = len(step_sizes)
    weights = []
    for s in range(t):
        weight = step_sizes[s]
        for r in range(s + 1, t):
            weight *= 1 - step_sizes[r]
        weights.append(weight)
    return weights


def check_unrolled_rate_equals_recursion():
    # b_t from the recursion (eq:svi-blend) equals sum_s W_{t,s} b'_s, any rho_2..rho_T.
    step_sizes = [sp.Integer(1)] + list(sp.symbols(f"rho2:{HORIZON + 1}", positive=True))
    targets = sp.symbols(f"target1:{HORIZON + 1}", positive=True)
    prior_rate = sp.Symbol("prior_rate", positive=True)
    rate = prior_rate
    for t in range(HORIZON):
        rate = (1 - step_sizes[t]) * rate + step_sizes[t] * targets[t]
        weights = blend_weights(step_sizes[: t + 1])
        assert sp.expand(rate - sum(w * b for w, b in zip(weights, targets))) == 0


def check_rate_weights_sum_to_one():
    # (eq:rate-kernel-normalised): sum_s W_{t,s} = 1 - prod_{r=1}^t (1 - rho_r) = 1 as rho_1 = 1.
    step_sizes = [sp.Integer(1)] + list(sp.symbols(f"rho2:{HORIZON + 1}", positive=True))
    for t in range(1, HORIZON + 1):
        assert sp.expand(sum(blend_weights(step_sizes[:t])) - 1) == 0


def check_rate_weights_for_power_schedule():
    # rho_t = t^-kappa: nonnegative weights summing to 1; kappa = 1 gives the uniform 1/t.
    kappa = sp.Rational(81, 100)
    for t in (1, 2, 5, 12):
        weights = blend_weights([sp.Integer(s) ** (-kappa) for s in range(1, t + 1)])
        assert all(w >= 0 for w in weights)
        assert abs(sp.N(sum(weights), 30) - 1) < sp.Float("1e-25")
        uniform = blend_weights([sp.Rational(1, s) for s in range(1, t + 1)])
        assert all(w == sp.Rational(1, t) for w in uniform)


def check_unrolled_mean_equals_recursion():
    # (eq:mean-kernel): mu_t = sum_s k_s prod_{r>s} (1 - k_r) g_hat_s + prod_r (1 - k_r) mu_0,
    # and the weights on the gradients sum to 1 - prod_r (1 - k_r).
    gains = sp.symbols(f"k1:{HORIZON + 1}", positive=True)
    gradients = sp.symbols(f"g1:{HORIZON + 1}", real=True)
    mean0 = sp.Symbol("mu0", real=True)
    mean = mean0
    for t in range(HORIZON):
        mean = mean + gains[t] * (gradients[t] - mean)
        weights = blend_weights(list(gains[: t + 1]))
        keep = sp.Mul(*[1 - k for k in gains[: t + 1]])
        assert sp.expand(mean - sum(w * g for w, g in zip(weights, gradients)) - keep * mean0) == 0
        assert sp.expand(sum(weights) - (1 - keep)) == 0


CHECKS = [
    check_unrolled_rate_equals_recursion,
    check_rate_weights_sum_to_one,
    check_rate_weights_for_power_schedule,
    check_unrolled_mean_equals_recursion,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
