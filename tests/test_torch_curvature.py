"""CurvatureKalmanVSGD (torch) against the JAX rule, its posterior, and PyTorch's toy problem.

The generic optimizer behaviours (paths, state dicts, hooks, dtypes, errors) run from its row
in ``tests/test_torch_battery.py``; here: float64 parity of both paths with
:func:`vsgd_bayes.rules.curvature.step` (parameters and every state entry, both step
variances, both curvature steps, maximize, skipped gradients), ``gradient_posterior`` against
:func:`vsgd_bayes.rules.curvature.posterior_variances` and its predictive against the next
step's innovation, the base rate that sets the curvature's starting ratio, and the toy problem.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules import curvature as curvature_rule
from vsgd_bayes.torch import CurvatureKalmanVSGD

#: Both sides evaluate the same float64 expressions in the same order (the foreach path on
#: lists too): rounding only, ~1e-16 per operation, amplified by the filter over 15 steps
#: (measured 3e-15 to 2e-14 at 40 steps); 1e-11 of each array's largest value leaves a margin.
RULE_RELATIVE_TOLERANCE = 1e-11


@pytest.fixture(autouse=True, scope="module")
def float64_jax():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(initial=0.0), np.finfo(np.float64).tiny)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


def random_settings(rng: np.random.Generator) -> dict:
    return dict(
        lr=float(10 ** rng.uniform(-3, 0)),
        initial_drift_to_noise=float(10 ** rng.uniform(-4, 1)),
        initial_curvature_drift_to_noise=float(10 ** rng.uniform(-4, 0)),
        ratio_step_scale=float(rng.uniform(0.0, 4.0)),
        max_ratio_change=float(rng.uniform(0.1, 3.0)),
        kappa=float(rng.uniform(0.55, 1.0)),
        weight_decay=float(rng.choice([0.0, rng.uniform(0.0, 0.1)])),
        eps=float(rng.choice([0.0, 1e-8])),
    )


def run_against_rule(settings, foreach, maximize, seed, steps=15):
    """Largest relative error of the parameters and of every state entry against the rule,
    on a stream whose gradient follows the parameters (a quadratic plus noise)."""
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (5,), ()]
    start = [rng.normal(size=s) for s in shapes]
    params = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in start]
    optimizer = CurvatureKalmanVSGD(params, **settings, maximize=maximize, foreach=foreach)
    rule_params = [jnp.asarray(x) for x in start]
    rule_states = [
        curvature_rule.init_state(p, settings["lr"], settings["initial_drift_to_noise"],
                                  settings["initial_curvature_drift_to_noise"])
        for p in rule_params
    ]
    rule_settings = {k: v for k, v in settings.items() if not k.startswith("initial_")}
    curvature = [rng.uniform(0.5, 3.0, size=s) for s in shapes]
    scale = 10 ** rng.uniform(-3, 2)
    errors = {}
    for t in range(steps):
        for i, (param, shape) in enumerate(zip(params, shapes)):
            if i == 1 and t in (2, 3):  # no gradient: skipped, its step does not advance
                param.grad = None
                continue
            grad = scale * (curvature[i] * param.detach().numpy() + rng.normal(size=shape))
            param.grad = torch.tensor(grad, dtype=torch.float64)
            observed = -grad if maximize else grad
            rule_params[i], rule_states[i] = curvature_rule.step(
                rule_params[i], jnp.asarray(observed), rule_states[i], **rule_settings
            )
        optimizer.step()
    for i, param in enumerate(params):
        errors[f"param {i}"] = relative_error(param.detach(), rule_params[i])
        state = optimizer.state[param]
        assert tuple(state) == curvature_rule.CurvatureKalmanVSGDState._fields
        assert int(state["step"]) == int(rule_states[i].step)
        for key in curvature_rule.CurvatureKalmanVSGDState._fields[1:]:
            errors[f"param {i} {key}"] = relative_error(state[key], getattr(rule_states[i], key))
    return errors


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_every_path_equals_the_rule_params_and_every_state_entry(foreach, maximize):
    rng = np.random.default_rng(11)
    for stream in range(4):
        settings = random_settings(rng)
        settings["step_variance"] = ("predictive", "posterior")[stream % 2]
        settings["curvature_step"] = ("none", "trust_region")[stream // 2]
        errors = run_against_rule(settings, foreach, maximize, seed=100 + stream)
        worst = max(errors, key=errors.get)
        assert errors[worst] <= RULE_RELATIVE_TOLERANCE, (stream, worst, errors[worst])


def test_the_parity_check_sees_a_wrong_hyperparameter():
    # check of the check: the rule run with another ratio step scale than the optimizer
    # differs far beyond the tolerance (the comparison reads every state entry)
    settings = dict(lr=0.1, initial_drift_to_noise=1.0, initial_curvature_drift_to_noise=1e-2,
                    ratio_step_scale=2.0, max_ratio_change=1.0, kappa=0.8, weight_decay=0.0,
                    eps=0.0)
    errors = run_against_rule(settings, foreach=False, maximize=False, seed=3)
    assert max(errors.values()) <= RULE_RELATIVE_TOLERANCE
    original = curvature_rule.step

    def drifted(*args, **kwargs):
        return original(*args, **{**kwargs, "ratio_step_scale": 2.2})

    curvature_rule.step = drifted
    try:
        errors = run_against_rule(settings, foreach=False, maximize=False, seed=3)
    finally:
        curvature_rule.step = original
    assert errors["param 0 log_drift_to_noise"] > 1e3 * RULE_RELATIVE_TOLERANCE


def test_gradient_posterior_is_the_rules_plug_in_posterior_and_predicts_the_next_gradient():
    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(6, dtype=torch.float64, generator=generator))
    optimizer = CurvatureKalmanVSGD([param], lr=0.01)
    state = curvature_rule.init_state(jnp.asarray(param.detach().numpy()), lr=0.01)
    for _ in range(30):
        grad = 2.0 * param.detach() + torch.randn(6, dtype=torch.float64, generator=generator)
        point = jnp.asarray(param.detach().numpy())
        param.grad = grad
        optimizer.step()
        _, state = curvature_rule.posterior_update(jnp.asarray(grad.numpy()), point, state)
    posterior = optimizer.gradient_posterior(param)
    drift, curvature_drift, noise, gradient_variance, curvature_variance = (
        curvature_rule.posterior_variances(state)
    )
    expected = dict(
        mean=state.gradient_mean, variance=gradient_variance,
        curvature_mean=state.curvature_mean, curvature_variance=curvature_variance,
        cross_covariance=state.noise_variance * state.cross_covariance,
        drift_variance=drift, curvature_drift_variance=curvature_drift, noise_variance=noise,
    )
    for key, value in expected.items():
        assert relative_error(getattr(posterior, key), value) <= RULE_RELATIVE_TOLERANCE, key
    # The predictive of the next mini-batch gradient at the next displacement is the rule's
    # (m^-_g, r S~) [curvature-predict], [curvature-innovation], before the ratios move.
    displacement = param.detach() - optimizer.state[param]["previous_point"]
    mean, variance = posterior.predictive(displacement)
    predicted = curvature_rule.predict(curvature_rule.moments_of(state),
                                       jnp.asarray(displacement.numpy()),
                                       *curvature_rule.ratios_of(state))
    _, relative_variance = curvature_rule.innovation(0.0, predicted)
    assert relative_error(mean, predicted.gradient_mean) <= RULE_RELATIVE_TOLERANCE
    assert relative_error(variance, state.noise_variance * relative_variance) <= (
        RULE_RELATIVE_TOLERANCE
    )
    # check of the check: the predictive at zero displacement is another number here
    assert relative_error(posterior.predictive(0.0)[0], predicted.gradient_mean) > 1e-6


def test_gradient_posterior_errors():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = CurvatureKalmanVSGD([param], lr=0.1)
    with pytest.raises(ValueError, match="has no CurvatureKalmanVSGD state yet"):
        optimizer.gradient_posterior(param)
    with pytest.raises(ValueError, match="not in this optimizer"):
        optimizer.gradient_posterior(torch.nn.Parameter(torch.zeros(2)))


def test_the_curvature_ratio_starts_in_units_of_the_base_rate():
    # lambda_h,0 = value / lr^2 with the group's base rate: a scheduler's initial_lr when it
    # has recorded one (a warm-up's small first rate would inflate lambda_h,0 by its square)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = CurvatureKalmanVSGD([param], lr=0.1, initial_curvature_drift_to_noise=1e-2)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: (t + 1) / 10)  # first lr 0.01
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    param.grad = torch.ones(3)
    optimizer.step()
    ratio = math.exp(optimizer.state[param]["log_curvature_drift_to_noise"][0].item())
    # one step moves ln lambda_h by at most max_ratio_change = 1 from ln(1e-2 / 0.1^2) = 0
    assert abs(math.log(ratio)) <= 1.0 + 1e-6
    # without a scheduler the first rate is the base rate; lr = 0 counts as 1
    assert hp.curvature.initial_log_curvature_drift_to_noise(1e-2, 0.01) == pytest.approx(
        math.log(1e-2) - 2.0 * math.log(0.01)
    )
    assert hp.curvature.initial_log_curvature_drift_to_noise(1e-2, 0.0) == pytest.approx(
        math.log(1e-2)
    )


def test_scale_invariance_of_the_torch_step():
    # eps = 0: a loss scaled by c > 0 gives the same parameters (the rule's claim, on torch)
    def run(c):
        generator = torch.Generator().manual_seed(5)
        param = torch.nn.Parameter(torch.randn(20, dtype=torch.float64, generator=generator))
        optimizer = CurvatureKalmanVSGD([param], lr=0.05, curvature_step="trust_region")
        for _ in range(25):
            noise = torch.randn(20, dtype=torch.float64, generator=generator)
            param.grad = c * (1.5 * param.detach() + noise)
            optimizer.step()
        return param.detach()

    reference = run(1.0)
    for c in (1e-3, 1e3):
        torch.testing.assert_close(run(c), reference, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ robustness target
def _toy_loss_ratio(seed: int, lr: float = 0.1, **options) -> float:
    # PyTorch's optimizer tests: 20 steps on the noiseless sum((W x + b)^2) from a random start.
    generator = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(10, 5, generator=generator))
    bias = torch.nn.Parameter(torch.randn(10, generator=generator))
    inputs = torch.randn(5, generator=generator)
    optimizer = CurvatureKalmanVSGD([weight, bias], lr=lr, **options)

    def closure():
        optimizer.zero_grad()
        loss = (weight.mv(inputs) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        optimizer.step(closure)
    return closure().item() / initial


@pytest.mark.parametrize("curvature_step", hp.CURVATURE_STEPS)
@pytest.mark.parametrize("foreach", [False, True])
def test_toy_problem_reduces_the_loss_on_20_seeds_at_lr_0_1(foreach, curvature_step):
    ratios = [_toy_loss_ratio(seed, foreach=foreach, curvature_step=curvature_step)
              for seed in range(20)]
    assert all(math.isfinite(r) and r < 1.0 for r in ratios), ratios


def test_toy_problem_check_fails_when_maximising():
    # check of the check: the same loop ascending the loss does not reduce it
    ratios = [_toy_loss_ratio(seed, maximize=True) for seed in range(5)]
    assert all(r > 1.0 for r in ratios), ratios
