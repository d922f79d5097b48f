"""vsgd_bayes.validation.factored: every check passes on the rule and fails on a broken twin."""

import jax.numpy as jnp
import pytest

from vsgd_bayes.rules import factored as rule
from vsgd_bayes.validation import METHODS
from vsgd_bayes.validation import factored as validation


def _swapped_precisions(gradient_mean_prev, drift_precision, noise_precision, gradient):
    return rule.local_update(gradient_mean_prev, noise_precision, drift_precision, gradient)


def _row_target_without_the_half(prior_rate, column_expectation, residual):
    return prior_rate + jnp.sum(column_expectation[None, :] * residual, axis=1)


def _column_target_without_the_rows(prior_shape, row_expectation, residual):
    return rule.column_target(prior_shape, jnp.ones_like(row_expectation), residual)


def _blend_with_rho_squared(rate, target, step_size):
    return (1.0 - step_size) * rate + step_size**2 * target


def _gauge_the_wrong_way(row_rate, column_shape, column_rate):
    scale = jnp.mean(rule.factor_expectation(column_shape, column_rate))
    return row_rate * scale, column_rate * scale


def _elbo_with_a_wrong_entropy(q, *problem):
    return rule.one_step_elbo(q, *problem) + 0.5 * jnp.sum(jnp.log(q.gradient_variance))


def _step_with_one_exponent(params, gradient, state, *, kappa1, kappa2, **options):
    return rule.step(params, gradient, state, kappa1=kappa1, kappa2=kappa1, **options)


# That every check passes on the rule (seed 0, 50 cases) is asserted by the CLI test of
# tests/test_validation.py, which runs every method of validation.METHODS.
@pytest.mark.parametrize("check, updates", [
    ("local_stationary", validation.Updates(local_update=_swapped_precisions)),
    ("global_stationary", validation.Updates(row_target=_row_target_without_the_half)),
    ("global_stationary", validation.Updates(column_target=_column_target_without_the_rows)),
    ("natural_gradient", validation.Updates(svi_blend=_blend_with_rho_squared)),
    ("natural_gradient", validation.Updates(row_target=_row_target_without_the_half)),
    ("coordinate_ascent", validation.Updates(local_update=_swapped_precisions)),
    ("gauge_invariance", validation.Updates(gauge=_gauge_the_wrong_way)),
    ("elbo_estimator", validation.Updates(one_step_elbo=_elbo_with_a_wrong_entropy)),
    ("svi_converges", validation.Updates(row_target=_row_target_without_the_half)),
    ("reduces_to_vsgd", validation.Updates(step=_step_with_one_exponent)),
])
def test_broken_update_fails_its_check(check, updates):
    (result,) = validation.run_checks(seed=1, cases=20, updates=updates, only=[check])
    assert not result.passed, result
    if check != "svi_converges":  # the correct rule at the same seed (SVI: by the CLI test)
        (correct,) = validation.run_checks(seed=1, cases=20, only=[check])
        assert correct.passed, correct


def test_the_method_is_registered_for_vsgd_bayes_validate():
    method = METHODS["factored-vsgd"]
    assert method.run_checks is validation.run_checks and method.json_key == "factored_checks"


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"Invalid cases: 0"):
        validation.run_checks(0, 0)
    with pytest.raises(ValueError, match=r"Invalid only: \['nope'\]"):
        validation.run_checks(0, 5, only=["nope"])
