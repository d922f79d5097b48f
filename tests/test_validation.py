"""Tests of vsgd_bayes.validation: the checks pass, the CLI writes JSON, broken updates fail."""

import json

import jax.numpy as jnp
import pytest

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.apps import validate
from vsgd_bayes.rules import vsgd as rule
from vsgd_bayes.rules.elbo import one_step_elbo, one_step_elbo_terms
from vsgd_bayes.validation import factored as factored_validation
from vsgd_bayes.validation import kalman as kalman_validation
from vsgd_bayes.validation import vsgd as validation


def test_cli_passes_and_writes_json(tmp_path, capsys):
    path = tmp_path / "validate.json"
    assert validate.main(["--json", str(path)]) == 0
    checks = json.loads(path.read_text())["checks"]
    assert [c["name"] for c in checks] == list(validation.CHECKS)
    for check in checks:
        assert {"name", "cases", "worst_error", "tolerance", "passed"} <= set(check)
        assert check["passed"] is True and check["cases"] >= 50
    kalman_checks = json.loads(path.read_text())["kalman_checks"]
    assert [c["name"] for c in kalman_checks] == list(kalman_validation.CHECKS)
    assert all(check["passed"] is True for check in kalman_checks)
    factored_checks = json.loads(path.read_text())["factored_checks"]
    assert [c["name"] for c in factored_checks] == list(factored_validation.CHECKS)
    assert all(check["passed"] is True for check in factored_checks)
    assert "all checks passed" in capsys.readouterr().out


def _wrong_weights(gradient_mean_prev, drift_rate, noise_rate, gradient, shape):
    # Swapped precisions: the classic bug.
    return rule.local_update(gradient_mean_prev, noise_rate, drift_rate, gradient, shape)


def _wrong_targets(mean, variance, mean_prev, gradient, prior_strength, variance_ratio):
    drift, noise = rule.global_targets(mean, variance, mean_prev, gradient, prior_strength,
                                       variance_ratio)
    return drift, noise + 0.5 * variance  # a full sigma^2 instead of half


def _wrong_blend(rate, target, step_size):
    return (1.0 - step_size) * rate + step_size**2 * target


def _wrong_elbo(q, *problem):
    # Forgot the entropy of q(g), 1/2 ln(2 pi e sigma^2).
    return one_step_elbo(q, *problem) - jnp.sum(one_step_elbo_terms(q, *problem).gradient_entropy)


def _posterior_update_without_the_first_shape(gradient, state, *, variance_ratio, prior_strength,
                                             kappa1, kappa2, init):
    # Forgets the switch: divides by a_0 + 1/2 at step 1 too (instead of a_0).
    t = state.step + 1
    shape = hp.posterior_shape(prior_strength, init)
    mean, variance = rule.local_update(
        state.gradient_mean, state.drift_rate, state.noise_rate, gradient, shape)
    drift_target, noise_target = rule.global_targets(
        mean, variance, state.gradient_mean, gradient, prior_strength, variance_ratio)
    drift_step_size, noise_step_size = hp.step_sizes(t.astype(gradient.dtype), kappa1, kappa2)
    return variance, rule.VSGDState(
        t, mean, rule.svi_blend(state.drift_rate, drift_target, drift_step_size),
        rule.svi_blend(state.noise_rate, noise_target, noise_step_size))


def _step_with_one_exponent(params, gradient, state, *, kappa1, kappa2, **options):
    # Blends the noise rate with t^-kappa1 instead of t^-kappa2.
    return rule.step(params, gradient, state, kappa1=kappa1, kappa2=kappa1, **options)


@pytest.mark.parametrize("check, updates", [
    ("composed_step",
     validation.Updates(posterior_update=_posterior_update_without_the_first_shape)),
    ("composed_step", validation.Updates(step=_step_with_one_exponent)),
    ("local_stationary", validation.Updates(local_update=_wrong_weights)),
    ("global_stationary", validation.Updates(global_targets=_wrong_targets)),
    ("natural_gradient", validation.Updates(global_targets=_wrong_targets)),
    ("natural_gradient", validation.Updates(svi_blend=_wrong_blend)),
    ("coordinate_ascent", validation.Updates(local_update=_wrong_weights)),
    ("elbo_estimator", validation.Updates(one_step_elbo=_wrong_elbo)),
    ("svi_converges", validation.Updates(local_update=_wrong_weights)),
    ("svi_converges", validation.Updates(global_targets=_wrong_targets)),
])
def test_broken_update_fails_its_check(check, updates):
    (result,) = validation.run_checks(seed=1, cases=20, updates=updates, only=[check])
    assert not result.passed, result
    (correct,) = validation.run_checks(seed=1, cases=20, only=[check])
    assert correct.passed, correct


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"Invalid cases: 0"):
        validation.run_checks(0, 0)
    with pytest.raises(ValueError, match=r"Invalid only: \['nope'\]"):
        validation.run_checks(0, 5, only=["nope"])


def test_importing_validation_leaves_jax_in_32_bits():
    # A fresh interpreter: the suite's conftest switches x64 on for every other test.
    import subprocess
    import sys

    code = (
        "import jax, jax.numpy as jnp\n"
        "import vsgd_bayes.validation as v\n"
        "assert jnp.zeros(1).dtype == jnp.float32, 'import switched x64 on'\n"
        "r = v.run_checks(seed=0, cases=2, only=['local_stationary'])\n"
        "assert r[0].passed, r[0]\n"
        "assert jnp.zeros(1).dtype == jnp.float32, 'run_checks left x64 on'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
