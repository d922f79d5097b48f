"""Executes the text notebooks of ``notebooks/`` with their small (CI) settings.

Each notebook is a jupytext "percent" file, run by ``docs/execute_notebooks.py`` (through the
session fixture ``executed_notebooks`` of ``conftest.py``, which the documentation test shares)
on a kernel of this interpreter. A notebook writes its key numbers to the JSON file named by
``VSGD_NOTEBOOK_RESULTS``; the tests check that no cell fails and that those numbers make
sense.
"""

from __future__ import annotations

import math


def execute_notebook(name: str, executed_notebooks) -> dict:
    """Runs notebooks/<name> (once per session) and returns the numbers it recorded."""
    notebook, results = executed_notebooks(name)
    # execute() raised CellExecutionError at the first failing cell; no error output remains.
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == []
    return results


def test_derivation_walkthrough(executed_notebooks):
    results = execute_notebook("01_derivation_walkthrough.py", executed_notebooks)
    for key in [
        "rmse_observed",
        "rmse_kalman",
        "rmse_oracle_streaming",
        "rmse_vsgd_reference",
        "rmse_vsgd_paper",
    ]:
        assert math.isfinite(results[key]) and results[key] > 0.0, key
    # The Kalman filter is the exact (minimum mean-square error) filter for known precisions,
    # so over 1800 steps x 8 coordinates no causal filter beats it.
    for key in ["rmse_oracle_streaming", "rmse_vsgd_reference", "rmse_vsgd_paper"]:
        assert results[key] > results["rmse_kalman"], key
    # At this gradient scale (1e-3 drift, 1e-2 noise) both inits filter: they beat the raw
    # observations and stay within a factor 2.5 of the exact filter (measured: ~1.5-1.7).
    for init in ["reference", "paper"]:
        assert results[f"rmse_vsgd_{init}"] < results["rmse_observed"], init
        assert results[f"rmse_vsgd_{init}"] < 2.5 * results["rmse_kalman"], init
    # Dropping the uncertainty of mu_{t-1} makes the streaming gain smaller than Kalman's.
    assert results["oracle_streaming_gain"] < results["kalman_gain"]
    # The learned gains that section 6 reads are computed there and lie in (0, 1).
    assert all(0.0 < gain < 1.0 for gain in results["learned_gain_late"].values())
    # The Kalman filter is calibrated by construction (std of z = 1 up to sampling error).
    assert abs(results["z_std_kalman"] - 1.0) < 0.1
    # NUTS (unknown precisions) and the Kalman filter (known precisions) see the same 40
    # observations: their means of g_T differ by less than 3 posterior standard deviations.
    assert results["nuts_last_sd"] > 0.0
    gap = abs(results["nuts_last_mean"] - results["kalman_short_last_mean"])
    assert gap < 3.0 * max(results["nuts_last_sd"], results["kalman_short_last_sd"])


def test_validate_against_elbo(executed_notebooks):
    results = execute_notebook("02_validate_against_elbo.py", executed_notebooks)
    # Every exact CAVI update maximises the ELBO over its factor: no decrease beyond float64
    # round-off of an ELBO of size ~14 (1e-12), and 25 rounds reach cavi_optimum.
    assert results["cavi_min_increment"] > -1e-12
    assert 0.0 <= results["cavi_final_gap"] < 1e-8
    # SVI cannot beat the optimum; it ends within 1e-3 (relative) of it (measured 1.1e-4: the
    # remaining Monte-Carlo jitter of its parameters, a few % at the final step size).
    optimum = results["cavi_optimum_elbo"]
    assert results["svi_final_elbo"] <= optimum + 1e-9
    assert optimum - results["svi_final_elbo"] < 1e-3 * abs(optimum)
    # The natural-gradient step equals the SVI blend to float64 round-off (measured ~2e-15).
    assert results["natural_gradient_max_error"] < 1e-12
    # NumPyro's Monte-Carlo ELBO agrees with the closed form within 4 standard errors.
    assert results["mc_elbo_standard_error"] > 0.0
    assert (
        abs(results["mc_elbo"] - results["closed_form_elbo"])
        < 4.0 * results["mc_elbo_standard_error"]
    )
    # The same checks as `vsgd-bayes validate`, all passing.
    from vsgd_bayes.validation import CHECKS

    assert [check["name"] for check in results["run_checks"]] == list(CHECKS)
    assert "composed_step" in CHECKS
    assert results["run_checks_all_passed"] is True
    # The optax VSGD and Adam both raise the ELBO of the snippet's SVI problem.
    assert len(results["snippet"]) >= 2
    for name, trace in results["snippet"].items():
        assert math.isfinite(trace["last"]) and trace["last"] > trace["first"], name


def test_train_with_vsgd(executed_notebooks):
    results = execute_notebook("03_train_with_vsgd.py", executed_notebooks)
    # An MLP on digits reaches ~0.95-0.98; 0.85 leaves room for seeds and thread counts.
    for name in ["VSGD", "AdamW", "SGD-momentum"]:
        assert results["test_accuracy"][name] > 0.85, name
    # beta_1 = b_ghat / (b_g + b_ghat) lies in (0, 1) for every coordinate.
    assert 0.0 < results["momentum_min"] <= results["momentum_max"] < 1.0
    # The numbers its prose refers to are computed (not typed) and are in range.
    assert 0.0 < results["momentum_quartiles"][0] <= results["momentum_quartiles"][2] < 1.0
    assert 0.0 < results["ratio_quartiles"][0] <= results["ratio_quartiles"][2]
    assert 0.0 < results["ratio_spike_share"] <= 1.0 and results["ratio_spike_value"] > 0.0
    assert 0.0 <= results["share_signal_to_noise_above_1"] <= 1.0


def test_calibration(executed_notebooks):
    results = execute_notebook("04_calibration.py", executed_notebooks)
    synthetic = results["synthetic"]
    # The exact filter is calibrated within 2 points at every level (20,000 coordinates:
    # sampling sd <= 0.35 points); sigma x 3 and sigma / 3 are flagged.
    for level, observed in synthetic["exact filter"]["coverage"].items():
        assert abs(observed - float(level)) <= 0.02, level
    assert abs(synthetic["exact filter"]["noise_ratio"] - 1.0) < 0.05
    assert synthetic["σ × 3"]["verdict"] == "over-covering"
    assert synthetic["σ / 3"]["verdict"] == "under-covering"
    final = results["mlp_final"]
    assert set(final) == {"vsgd", "vsgd-paper", "constant-vsgd", "kalman-vsgd", "factored-vsgd",
                          "kronecker-vsgd", "curvature-kalman-vsgd", "adamw", "sgd"}
    for name in ("vsgd", "vsgd-paper", "constant-vsgd", "kalman-vsgd", "factored-vsgd",
                 "kronecker-vsgd"):
        assert 0.0 <= final[name]["coverage_0.95"] <= 1.0, name
        assert 0.0 < final[name]["momentum_median"] < 1.0, name
    assert 0.0 <= final["curvature-kalman-vsgd"]["coverage_0.95"] <= 1.0
    for name in final:
        ratio = final[name]["estimation_ratio"]
        assert math.isfinite(ratio) and ratio > 0, name
    # The paper start's absolute prior (variance ~1) dwarfs this MLP's gradient noise at step 1.
    assert results["mlp_first_paper_noise"] > 3.0
    # Zero gradients through the real VSGD: beta_1 stays strictly between 1/2 and K_g/(1+K_g).
    for name, momentum in results["zero_stream_momentum"].items():
        assert 0.5 < momentum < 30 / 31, name
