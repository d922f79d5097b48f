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


# reference: gamma + 5e-5 up to the float32 rounding of 2a = 2 gamma + 1 + 1e-4 (half an ulp
# of 1.0021 in float32, 6e-8, is 3e-5 of a_0 ~ 1e-3 and 6e-8 of a ~ 0.5); paper: exact.
@pytest.mark.parametrize(
    "init, offset, rel_prior, rel_posterior",
    [("paper", 0.0, 1e-15, 1e-15), ("reference", 5e-5, 3e-5, 6e-8)],
)
def test_prior_and_posterior_shapes(init, offset, rel_prior, rel_posterior):
    gamma = 1e-3
    assert hp.prior_shape(gamma, init) == pytest.approx(gamma + offset, rel=rel_prior)
    assert hp.posterior_shape(gamma, init) == pytest.approx(gamma + offset + 0.5, rel=rel_posterior)
    assert hp.shape_before_step(1, gamma, init) == hp.prior_shape(gamma, init)
    for step in (2, 3, 100):
        assert hp.shape_before_step(step, gamma, init) == hp.posterior_shape(gamma, init)


def test_paper_constants_are_exact():
    assert hp.prior_shape(1e-3, "paper") == 1e-3
    assert hp.prior_rates(1e-3, 30.0, "paper") == (1e-3, 30.0 * 1e-3)


@pytest.mark.parametrize("gamma, ratio", [(1e-8, 30.0), (1e-3, 10.0), (0.7, 4.0)])
def test_reference_constants_are_the_authors_float32(gamma, ratio):
    # The authors' code holds pa2 = 2 gamma + 1 + 1e-4, pbg2 = 2 gamma and pbhg2 = 2 K_g gamma
    # as float32 tensors; a_0 = (pa2 - 1) / 2 and the prior rates are pbg2 / 2, pbhg2 / 2,
    # exactly (the subtraction and halvings are exact), also in float32.
    pa2, pbg2, pbhg2 = (
        float(np.float32(x)) for x in (2 * gamma + 1 + 1e-4, 2 * gamma, 2 * ratio * gamma)
    )
    a0 = hp.prior_shape(gamma, "reference")
    assert a0 == (pa2 - 1.0) / 2.0
    assert hp.posterior_shape(gamma, "reference") == pa2 / 2.0
    assert hp.prior_rates(gamma, ratio, "reference") == (pbg2 / 2.0, pbhg2 / 2.0)
    assert hp.prior_rates(gamma, ratio) == hp.prior_rates(gamma, ratio, "reference")  # default
    for value in (a0, a0 + 0.5, *hp.prior_rates(gamma, ratio, "reference")):
        assert float(np.float32(value)) == value  # no further rounding in a float32 run


def test_reference_rounding_with_the_defaults():
    # derivations/05_first_step.md: in float32 2a_0 - 1 = 1.000166e-4 (not 1.0002e-4), so the
    # first-step variances b_0 / a_0 are 3.4e-5 larger (relative) than with exact constants.
    gamma, ratio = 1e-8, 30.0
    a0 = hp.prior_shape(gamma, "reference")
    assert f"{2 * a0:.7g}" == "0.0001000166"
    exact = np.array([gamma, ratio * gamma]) / (gamma + hp.REFERENCE_SHAPE_OFFSET)
    rounded = np.array(hp.prior_rates(gamma, ratio, "reference")) / a0
    np.testing.assert_allclose(rounded / exact - 1.0, 3.4e-5, rtol=0.01)


def test_authors_float32_keeps_the_type_of_arrays():
    values = np.array([1e-8, 1.1])
    rounded = hp.authors_float32(values)
    assert rounded.dtype == np.float64
    np.testing.assert_array_equal(rounded, values.astype(np.float32).astype(np.float64))
    assert isinstance(hp.authors_float32(1e-8), float)
    # Arrays of gammas give the same constants as one gamma at a time.
    shapes = hp.prior_shape(np.array([1e-8, 1e-3]), "reference")
    assert list(shapes) == [hp.prior_shape(1e-8, "reference"), hp.prior_shape(1e-3, "reference")]


def test_reference_first_step_variances_match_the_spec():
    # The authors' code: with defaults the reference step-1 variances are ~2.0e-4 and ~6.0e-3.
    gamma, ratio = 1e-8, 30.0
    a0 = hp.prior_shape(gamma, "reference")
    drift_prior_rate, noise_prior_rate = hp.prior_rates(gamma, ratio, "reference")
    # 2e-5: the float32 rounding of the authors' constants (3.4e-5 relative, see above).
    assert drift_prior_rate / a0 == pytest.approx(2.0 * gamma / (2.0 * gamma + 1e-4), rel=5e-5)
    assert math.isclose(noise_prior_rate / a0, 6.0e-3, rel_tol=1e-3)
