"""vsgd_bayes.validation.kronecker: each check passes on the rule, fails on a broken twin."""

from unittest import mock

import pytest

from vsgd_bayes.rules import kronecker as rule
from vsgd_bayes.validation import kronecker as validation


def _refresh_rotating_rates_with_p(state):
    def rates(rate, row_transition, col_transition):
        return row_transition @ rate @ col_transition.T

    with mock.patch.object(rule, "rotate_rates", rates):
        return rule.refresh(state)


def _step_ignoring_basis_update_every(params, gradient, state, *, basis_update_every, **options):
    return rule.step(params, gradient, state, basis_update_every=1, **options)


def _posterior_update_rotating_in_without_transpose(gradient, state, **options):
    # The bug of writing L X R for L^T X R (the rotation into the basis).
    def rotate_in(matrix, row_basis, col_basis):
        return rule.rotate_out(matrix, row_basis, col_basis.T)

    with mock.patch.object(rule, "rotate_in", rotate_in):
        return rule.posterior_update(gradient, state, **options)


def _step_with_moments_missing_the_residual(params, gradient, state, **options):
    # The bug of keeping only the posterior-variance part of the expected noise moments
    # (eq:kronecker-moments without R~ R~^T): nothing of the noise's correlations is seen.
    original = rule.noise_moments

    def noise_moments(residual, gradient_variance):
        return original(0.0 * residual, gradient_variance)

    with mock.patch.object(rule, "noise_moments", noise_moments):
        return rule.step(params, gradient, state, **options)


@pytest.mark.parametrize(
    "check, updates",
    [
        ("refresh_keeps_mean", validation.Updates(refresh=_refresh_rotating_rates_with_p)),
        ("reduces_to_vsgd", validation.Updates(step=_step_ignoring_basis_update_every)),
        (
            "local_optimum",
            validation.Updates(posterior_update=_posterior_update_rotating_in_without_transpose),
        ),
        ("basis_recovery", validation.Updates(step=_step_with_moments_missing_the_residual)),
    ],
)
def test_check_passes_and_broken_twin_fails(check, updates):
    (correct,) = validation.run_checks(seed=1, cases=10, only=[check])
    assert correct.passed, correct
    (broken,) = validation.run_checks(seed=1, cases=10, updates=updates, only=[check])
    assert not broken.passed, broken


def test_the_method_is_registered_for_vsgd_bayes_validate():
    from vsgd_bayes.validation import METHODS

    method = METHODS["kronecker-vsgd"]
    assert method.run_checks is validation.run_checks and method.json_key == "kronecker_checks"
