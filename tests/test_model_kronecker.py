"""Tests of vsgd_bayes.models.kronecker: sites, the log density by hand, the VSGD limit, the
simulator's noise covariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.handlers import seed, trace
from numpyro.infer.util import log_density
from scipy import stats

from vsgd_bayes.models import kronecker as model
from vsgd_bayes.models import vsgd as vsgd_model
from vsgd_bayes.validation.harness import random_orthogonal

ROWS, COLUMNS = 3, 4


def _values(seed_value=0):
    rng = np.random.default_rng(seed_value)
    return dict(
        prev=rng.normal(size=(ROWS, COLUMNS)),
        observed=rng.normal(size=(ROWS, COLUMNS)),
        g=rng.normal(size=ROWS * COLUMNS),
        w_g=rng.gamma(2.0, 1.0, size=(ROWS, COLUMNS)),
        w_ghat=rng.gamma(2.0, 1.0, size=(ROWS, COLUMNS)),
        row_basis=random_orthogonal(rng, ROWS),
        col_basis=random_orthogonal(rng, COLUMNS),
    )


def test_sites_plates_and_shapes():
    with jax.enable_x64(True):
        tr = trace(seed(model.one_step_model, 0)).get_trace(
            jnp.zeros((ROWS, COLUMNS)), jnp.ones((ROWS, COLUMNS)), prior_strength=0.5
        )
    assert [n for n, s in tr.items() if s["type"] == "sample"] == ["w_g", "w_ghat", "g", "g_hat"]
    assert tr["w_g"]["value"].shape == (ROWS, COLUMNS)
    assert tr["g"]["value"].shape == (ROWS * COLUMNS,)
    assert tr["g_hat"]["is_observed"]
    assert [f.name for f in tr["w_g"]["cond_indep_stack"]] == ["columns", "rows"]


def test_log_density_is_the_closed_form():
    values = _values()
    gamma, ratio, shape = 0.7, 3.0, 0.9
    with jax.enable_x64(True):
        density, _ = log_density(
            model.one_step_model,
            (jnp.asarray(values["prev"]), jnp.asarray(values["observed"])),
            dict(
                row_basis=jnp.asarray(values["row_basis"]),
                col_basis=jnp.asarray(values["col_basis"]),
                prior_strength=gamma,
                variance_ratio=ratio,
                prior_shape=shape,
            ),
            {"w_g": values["w_g"], "w_ghat": values["w_ghat"], "g": values["g"]},
        )
    q = np.kron(values["row_basis"], values["col_basis"])
    expected = (
        stats.gamma.logpdf(values["w_g"], shape, scale=1 / gamma).sum()
        + stats.gamma.logpdf(values["w_ghat"], shape, scale=1 / (ratio * gamma)).sum()
        + stats.multivariate_normal.logpdf(
            values["g"], values["prev"].reshape(-1), q @ np.diag(1 / values["w_g"].ravel()) @ q.T
        )
        + stats.multivariate_normal.logpdf(
            values["observed"].reshape(-1),
            values["g"],
            q @ np.diag(1 / values["w_ghat"].ravel()) @ q.T,
        )
    )
    assert float(density) == pytest.approx(expected, rel=1e-12)
    # The unit-Jacobian rotation: the same density as independent normals of Q^T g.
    rotated = lambda x: q.T @ x  # noqa: E731
    by_coordinate = (
        stats.gamma.logpdf(values["w_g"], shape, scale=1 / gamma).sum()
        + stats.gamma.logpdf(values["w_ghat"], shape, scale=1 / (ratio * gamma)).sum()
        + stats.norm.logpdf(
            rotated(values["g"]),
            rotated(values["prev"].ravel()),
            1 / np.sqrt(values["w_g"].ravel()),
        ).sum()
        + stats.norm.logpdf(
            rotated(values["observed"].ravel()),
            rotated(values["g"]),
            1 / np.sqrt(values["w_ghat"].ravel()),
        ).sum()
    )
    assert float(density) == pytest.approx(by_coordinate, rel=1e-12)


def test_identity_basis_is_vsgds_model():
    values = _values(1)
    options = dict(prior_strength=0.3, variance_ratio=5.0, init="reference")
    with jax.enable_x64(True):
        kronecker, _ = log_density(
            model.one_step_model,
            (jnp.asarray(values["prev"]), jnp.asarray(values["observed"])),
            options,
            {"w_g": values["w_g"], "w_ghat": values["w_ghat"], "g": values["g"]},
        )
        vsgd, _ = log_density(
            vsgd_model.one_step_model,
            (jnp.asarray(values["prev"].ravel()), jnp.asarray(values["observed"].ravel())),
            options,
            {"w_g": values["w_g"].ravel(), "w_ghat": values["w_ghat"].ravel(), "g": values["g"]},
        )
    assert float(kronecker) == pytest.approx(float(vsgd), rel=1e-12)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"Invalid gradient_mean_prev: shape \(3,\)"):
        seed(model.one_step_model, 0)(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"Invalid bases"):
        seed(model.one_step_model, 0)(jnp.zeros((2, 3)), row_basis=jnp.eye(3))


def test_simulated_noise_is_matrix_normal():
    rng = np.random.default_rng(2)
    u = rng.normal(size=(3, 3))
    u = u @ u.T + np.eye(3)
    v = rng.normal(size=(2, 2))
    v = v @ v.T + np.eye(2)
    with jax.enable_x64(True):
        true, observed = model.simulate_matrix_normal_stream(
            jax.random.PRNGKey(0), 40000, u, v, drift_scale=0.01, initial_gradient=np.ones((3, 2))
        )
    true, observed = np.asarray(true), np.asarray(observed)
    assert np.allclose(true[0], 1.0, atol=0.1)
    noise = (observed - true).reshape(len(true), -1)
    covariance = noise.T @ noise / len(noise)
    # Sampling error of a covariance from 4e4 draws: ~1% of its scale.
    assert np.max(np.abs(covariance - np.kron(u, v))) < 0.05 * np.max(np.kron(u, v))
    steps = np.diff(true, axis=0)
    assert np.std(steps) == pytest.approx(0.01, rel=0.02)
