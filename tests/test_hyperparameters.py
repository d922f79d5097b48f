"""Tests of vsgd_bayes.hyperparameters: defaults, validation, schedules, prior/posterior shapes."""

import math

import numpy as np
import pytest

from vsgd_bayes import hyperparameters as hp


def test_defaults_are_the_authors():
    assert hp.DEFAULTS == {
        "lr": 0.1,
        "variance_ratio": 30.0,
        "prior_strength": 1e-8,
        "kappa1": 0.81,
        "kappa2": 0.9,
        "weight_decay": 0.0,
        "eps": 1e-8,
        "init": "reference",
    }
    hp.validate_hyperparameters()  # the defaults are valid
    assert hp.VSGDHyperparameters().as_dict() == hp.DEFAULTS


BAD_INPUTS = [
    ("lr", -0.1, r"Invalid lr: -0\.1 \(must be >= 0\)"),
    ("eps", -1e-8, r"Invalid eps: -1e-08 \(must be >= 0\)"),
    ("weight_decay", -0.01, r"Invalid weight_decay: -0\.01 \(must be >= 0\)"),
    ("prior_strength", 0.0, r"Invalid prior_strength: 0\.0 \(must be > 0\)"),
    ("prior_strength", -1e-8, r"Invalid prior_strength: -1e-08 \(must be > 0\)"),
    ("variance_ratio", 0.0, r"Invalid variance_ratio: 0\.0 \(must be > 0\)"),
    ("kappa1", 0.5, r"Invalid kappa1: 0\.5 \(must be in \(0\.5, 1\]\)"),
    ("kappa2", 1.01, r"Invalid kappa2: 1\.01 \(must be in \(0\.5, 1\]\)"),
    ("lr", float("nan"), r"Invalid lr: nan \(must be finite\)"),
    ("prior_strength", float("inf"), r"Invalid prior_strength: inf \(must be finite\)"),
    ("variance_ratio", "30", r"Invalid variance_ratio: '30' \(must be a real scalar\)"),
    ("eps", True, r"Invalid eps: True \(must be a real scalar\)"),
    ("init", "foo", r"Invalid init: 'foo' \(must be one of \('reference', 'paper'\)\)"),
]


@pytest.mark.parametrize("name, value, message", BAD_INPUTS)
def test_bad_inputs_raise_value_error_naming_argument_and_value(name, value, message):
    with pytest.raises(ValueError, match=message):
        hp.validate_hyperparameters(**{name: value})
    with pytest.raises(ValueError, match=message):
        hp.VSGDHyperparameters(**{name: value})


def test_boundary_values_are_accepted():
    hp.validate_hyperparameters(lr=0.0, eps=0.0, weight_decay=0.0, kappa1=1.0, kappa2=0.51)
    hp.validate_hyperparameters(lr=np.float32(0.01), prior_strength=np.float64(1e-3))
    hp.check_hyperparameter("lr", lambda step: 0.1)  # an optax schedule is not checked


def test_step_sizes_are_robbins_monro():
    rho1, rho2 = hp.step_sizes(1, 0.81, 0.9)
    assert (rho1, rho2) == (1.0, 1.0)  # step 1 overwrites the rates
    steps = np.arange(1, 11, dtype=float)
    rho1, rho2 = hp.step_sizes(steps, 0.81, 0.9)
    np.testing.assert_allclose(rho1, np.exp(-0.81 * np.log(steps)), rtol=1e-15)
    np.testing.assert_allclose(rho2, np.exp(-0.9 * np.log(steps)), rtol=1e-15)
    assert np.all(np.diff(rho1) < 0)


@pytest.mark.parametrize("init, offset", [("paper", 0.0), ("reference", 5e-5)])
def test_prior_and_posterior_shapes(init, offset):
    gamma = 1e-3
    assert hp.prior_shape(gamma, init) == pytest.approx(gamma + offset, rel=1e-15)
    assert hp.posterior_shape(gamma, init) == pytest.approx(gamma + offset + 0.5, rel=1e-15)
    assert hp.shape_before_step(1, gamma, init) == hp.prior_shape(gamma, init)
    for step in (2, 3, 100):
        assert hp.shape_before_step(step, gamma, init) == hp.posterior_shape(gamma, init)
    assert hp.prior_rates(gamma, 30.0) == (gamma, 30.0 * gamma)


def test_reference_first_step_variances_match_the_spec():
    # The authors' code: with defaults the reference step-1 variances are ~2.0e-4 and ~6.0e-3.
    gamma, ratio = 1e-8, 30.0
    a0 = hp.prior_shape(gamma, "reference")
    assert gamma / a0 == pytest.approx(2.0 * gamma / (2.0 * gamma + 1e-4), rel=1e-12)
    assert math.isclose(ratio * gamma / a0, 6.0e-3, rel_tol=1e-3)
