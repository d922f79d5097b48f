"""The instrument of benchmarks/gradient_models.py (issue 19, part 1): its filters, scores and
checks of the check on simulated streams with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from scripts import load_script


@pytest.fixture(scope="module")
def gm():
    return load_script("benchmarks/gradient_models.py")


def test_the_checks_of_the_check_pass(gm):
    result = gm.self_check()  # asserts inside: nominal coverage of the true model, a narrow twin
    assert result["narrow_twin_coverage_0.95"] < 0.75


def test_the_random_walk_filter_is_the_textbook_filter(gm):
    # The grid filter at one point (lam = q/r) against a direct scalar Kalman filter in units
    # of r, started as the instrument starts (g = the first observation, P = r).
    rng = np.random.default_rng(3)
    steps, n, start = 300, 4, 200
    observations = np.cumsum(rng.normal(scale=0.1, size=(steps, n)), axis=0) + rng.normal(
        size=(steps, n))
    lam = 1e-2
    split = start + 50
    points = [(lam, 0.0, 0.0)]
    _, _, m, v, held_v, held_s = gm.run_filter(
        "random-walk", observations, np.zeros((steps, n)), start, split, points,
        np.zeros(n, dtype=int))
    fit_from = start - gm.BURN_IN
    g, p = observations[fit_from - 1].copy(), np.ones(n)
    means = []
    for t in range(fit_from, steps + 1):
        predicted = p + lam
        if t >= split:
            means.append((g.copy(), predicted.copy()))
        if t == steps:
            break
        gain = predicted / (predicted + 1.0)
        g = g + gain * (observations[t] - g)
        p = (1.0 - gain) * predicted
    np.testing.assert_allclose(m, np.stack([a for a, _ in means]), rtol=1e-12)
    np.testing.assert_allclose(v, np.stack([b for _, b in means]), rtol=1e-12)


def test_a_wrong_model_loses_the_held_out_likelihood(gm):
    # Broken twin of the comparison: on a step-following stream, the random walk must score a
    # lower held-out log-likelihood than the step-following model (and equal to itself).
    results = gm.compare(gm.simulated_stream("step-following", seed=1))
    assert results["random-walk per coordinate"]["heldout_log_likelihood_vs_random_walk"] == 0
    gain = results["step-following per tensor"]["heldout_log_likelihood_vs_random_walk"]
    assert gain > 0.05, gain


@pytest.mark.parametrize("model", ["random-walk", "local-trend", "step-following"])
def test_grids_span_the_random_walks_ratios_and_a_quiet_second_state(gm, model):
    # Every model's grid holds every q/r of the random walk's grid and a point with no noise
    # on its second state (constant curvature; a velocity that only decays), so the models
    # are compared on the same ratios.
    points = gm.grid(model)
    assert any(second == 0.0 for _, second, _ in points)
    assert len({lam for lam, _, _ in points}) == len(gm.RATIOS)
