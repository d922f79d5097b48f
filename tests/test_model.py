"""Tests of vsgd_bayes.models.vsgd: site names, plate, shapes, simulation, log-density."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.handlers import seed, trace
from numpyro.infer.util import log_density
from scipy import stats

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.models import vsgd as model
from vsgd_bayes.rules.elbo import OneStepVariational


def test_one_step_sites_plate_and_shapes():
    tr = trace(seed(model.one_step_model, 0)).get_trace(
        jnp.zeros(4), jnp.ones(4), prior_strength=0.5, variance_ratio=3.0, init="reference"
    )
    assert [name for name, site in tr.items() if site["type"] == "sample"] == [
        "w_g", "w_ghat", "g", "g_hat"]
    assert tr["coordinates"]["type"] == "plate" and tr["coordinates"]["args"][0] == 4
    for name in ("w_g", "w_ghat", "g", "g_hat"):
        assert tr[name]["value"].shape == (4,)
        assert tr[name]["cond_indep_stack"][0].name == "coordinates"
    assert tr["g_hat"]["is_observed"]
    # a_0 = gamma + 5e-5 up to the authors' float32 rounding of 2 gamma + 1 + 1e-4 (6e-8).
    concentration = float(tr["w_g"]["fn"].base_dist.concentration)
    assert concentration == pytest.approx(hp.prior_shape(0.5, "reference"), rel=1e-15)
    assert concentration == pytest.approx(0.5 + 5e-5, rel=2e-7)
    assert float(tr["w_ghat"]["fn"].base_dist.rate) == pytest.approx(1.5, rel=1e-15)


def test_prior_shape_defaults_to_gamma_and_rejects_both():
    assert model.resolve_prior_shape(0.3) == 0.3
    assert model.resolve_prior_shape(0.3, init="reference") == pytest.approx(0.30005)
    with pytest.raises(ValueError, match=r"prior_shape=0\.1, init='paper'"):
        model.resolve_prior_shape(0.3, 0.1, "paper")
    with pytest.raises(ValueError, match=r"Invalid init: 'foo'"):
        model.resolve_prior_shape(0.3, init="foo")


def test_one_step_log_density_matches_scipy():
    mean_prev, gradient = np.array([0.2, -1.0]), np.array([0.5, 3.0])
    values = {"w_g": np.array([2.0, 0.3]), "w_ghat": np.array([0.7, 5.0]),
              "g": np.array([0.1, 0.4])}
    gamma, ratio, a0 = 0.8, 4.0, 1.3
    log_joint, _ = log_density(
        model.one_step_model, (jnp.asarray(mean_prev), jnp.asarray(gradient)),
        dict(prior_strength=gamma, variance_ratio=ratio, prior_shape=a0), values)
    expected = (
        stats.gamma.logpdf(values["w_g"], a0, scale=1 / gamma).sum()
        + stats.gamma.logpdf(values["w_ghat"], a0, scale=1 / (ratio * gamma)).sum()
        + stats.norm.logpdf(values["g"], mean_prev, 1 / np.sqrt(values["w_g"])).sum()
        + stats.norm.logpdf(gradient, values["g"], 1 / np.sqrt(values["w_ghat"])).sum()
    )
    assert float(log_joint) == pytest.approx(expected, rel=1e-12)


def test_guide_parameters_and_initial_values():
    start = OneStepVariational(*(jnp.full(3, v) for v in (0.5, 4.0, 2.0, 3.0, 0.6, 0.7)))
    tr = trace(seed(model.one_step_guide, 0)).get_trace(
        jnp.zeros(3), jnp.ones(3), prior_strength=1.0, variance_ratio=2.0, initial=start)
    params = {name: site["value"] for name, site in tr.items() if site["type"] == "param"}
    assert set(params) == {"gradient_mean", "gradient_scale", "drift_shape", "drift_rate",
                           "noise_shape", "noise_rate"}
    np.testing.assert_allclose(params["gradient_scale"], 2.0)  # sqrt of the variance 4
    np.testing.assert_allclose(params["noise_rate"], 0.7)
    assert [n for n, s in tr.items() if s["type"] == "sample"] == ["w_g", "w_ghat", "g"]
    # guide_variational inverts `initial` (sigma^2 from the scale).
    for field, expected, actual in zip(start._fields, start, model.guide_variational(params)):
        np.testing.assert_allclose(actual, expected, rtol=1e-15, err_msg=field)


def test_sequential_model_log_density_matches_scipy():
    observed = np.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.0]])
    g = np.array([[0.2, -0.1], [0.0, 0.3], [-0.3, 0.2]])
    w_g, w_ghat, gamma, ratio = np.array([4.0, 9.0]), np.array([1.0, 2.0]), 1.0, 3.0
    log_joint, _ = log_density(
        model.sequential_model, (3, 2),
        dict(prior_strength=gamma, variance_ratio=ratio, observed=jnp.asarray(observed)),
        {"w_g": jnp.asarray(w_g), "w_ghat": jnp.asarray(w_ghat), "g": jnp.asarray(g)})
    previous = np.vstack([np.zeros(2), g[:-1]])
    expected = (
        stats.gamma.logpdf(w_g, gamma, scale=1 / gamma).sum()
        + stats.gamma.logpdf(w_ghat, gamma, scale=1 / (ratio * gamma)).sum()
        + stats.norm.logpdf(g, previous, 1 / np.sqrt(w_g)).sum()
        + stats.norm.logpdf(observed, g, 1 / np.sqrt(w_ghat)).sum()
    )
    assert float(log_joint) == pytest.approx(expected, rel=1e-12)


def test_simulation_recovers_known_precisions():
    drift_precision, noise_precision = jnp.array([100.0, 4.0]), jnp.array([1.0, 25.0])
    true, observed = model.simulate_gradient_stream(
        jax.random.PRNGKey(0), 4000, 2, drift_precision, noise_precision)
    assert true.shape == observed.shape == (4000, 2)
    drift_variance = np.var(np.diff(np.vstack([np.zeros((1, 2)), true]), axis=0), axis=0)
    noise_variance = np.var(np.asarray(observed - true), axis=0)
    # A sample variance of n = 4000 normals has relative sd sqrt(2/n) = 2.2 %: 10 % is 4.5 sd.
    np.testing.assert_allclose(drift_variance, 1 / drift_precision, rtol=0.1)
    np.testing.assert_allclose(noise_variance, 1 / noise_precision, rtol=0.1)


def test_sequential_model_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"Invalid num_steps: 0"):
        model.sequential_model(0)
    with pytest.raises(ValueError, match=r"Invalid observed: shape \(2, 1\)"):
        model.sequential_model(3, 1, observed=jnp.zeros((2, 1)))
