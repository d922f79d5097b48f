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


def adam_blend_step_size(beta, t):
    """rho_t = (1 - beta) / (1 - beta^t) (eq:adam-bias-correction-blend)."""
    return (1 - beta) / (1 - beta**t)


def check_adam_bias_correction_is_a_blend():
    # m_t = beta m_{t-1} + (1 - beta) g_t, m_0 = 0, m_hat_t = m_t / (1 - beta^t) equals the blend
    # m_hat_t = (1 - rho_t) m_hat_{t-1} + rho_t g_t with rho_t = (1 - beta)/(1 - beta^t), for
    # symbolic beta and gradients; rho_1 = 1 (so m_hat_0 does not matter) and the kernel
    # weights W_{t,s} = rho_s prod_{r>s} (1 - rho_r) are (1 - beta) beta^(t-s) / (1 - beta^t).
    beta = sp.Symbol("beta", positive=True)
    gradients = sp.symbols(f"g1:{HORIZON + 1}", real=True)
    assert sp.simplify(adam_blend_step_size(beta, 1) - 1) == 0
    moment, blended = sp.Integer(0), sp.Symbol("m_hat_0", real=True)
    for t in range(1, HORIZON + 1):
        moment = beta * moment + (1 - beta) * gradients[t - 1]
        rho = adam_blend_step_size(beta, t)
        blended = (1 - rho) * blended + rho * gradients[t - 1]
        assert sp.simplify(moment / (1 - beta**t) - blended) == 0, t
        weights = blend_weights([adam_blend_step_size(beta, s) for s in range(1, t + 1)])
        for s, weight in enumerate(weights, start=1):
            closed = (1 - beta) * beta ** (t - s) / (1 - beta**t)
            assert sp.simplify(weight - closed) == 0, (t, s)
    # rho_t -> 1 - beta (a constant step: no Robbins-Monro decay), and rho_t ~ 1/t while
    # t (1 - beta) << 1 (the running mean, kappa = 1): rho_t * t -> 1 as beta -> 1.
    t = sp.Symbol("t", positive=True)
    assert sp.limit(adam_blend_step_size(sp.Rational(9, 10), t), t, sp.oo) == sp.Rational(1, 10)
    assert sp.limit(adam_blend_step_size(beta, 7) * 7, beta, 1) == 1


def check_torch_adam_moments_follow_the_blend():
    # torch.optim.Adam's state: exp_avg / (1 - beta1^t) and exp_avg_sq / (1 - beta2^t) follow
    # the blends with rho = (1 - beta)/(1 - beta^t) of g and g^2 (float64, 30 steps, rtol 1e-12:
    # a few roundings per step).
    import numpy as np
    import torch

    betas = (0.9, 0.999)
    rng = np.random.default_rng(3)
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=1e-3, betas=betas)
    first = second = np.zeros(5)
    for t in range(1, 31):
        gradient = rng.normal(size=5) * 10.0 ** rng.uniform(-3, 3)
        x.grad = torch.from_numpy(gradient.copy())
        optimizer.step()
        state = optimizer.state[x]
        first = first + adam_blend_step_size(betas[0], t) * (gradient - first)
        second = second + adam_blend_step_size(betas[1], t) * (gradient**2 - second)
        np.testing.assert_allclose(state["exp_avg"].numpy() / (1 - betas[0] ** t), first,
                                   rtol=1e-12)
        np.testing.assert_allclose(state["exp_avg_sq"].numpy() / (1 - betas[1] ** t), second,
                                   rtol=1e-12)


CHECKS = [
    check_unrolled_rate_equals_recursion,
    check_rate_weights_sum_to_one,
    check_rate_weights_for_power_schedule,
    check_unrolled_mean_equals_recursion,
    check_adam_bias_correction_is_a_blend,
    check_torch_adam_moments_follow_the_blend,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
