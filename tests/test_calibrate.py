"""Tests of ``vsgd-bayes calibrate``: the instrument on a stream with a known answer (and a
deliberately wrong posterior that it must flag), the posterior providers, the harvesting on a
real network, and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vsgd_bayes.apps.calibrate import cli, metrics, synthetic
from vsgd_bayes.apps.calibrate.harvest import (
    calibrate_run,
    checkpoint_steps,
    true_gradient,
)
from vsgd_bayes.apps.calibrate.optimizers import (
    CALIBRATED_OPTIMIZERS,
    adam_first_moment,
    constant_vsgd_posterior,
    curvature_posterior,
    gradient_posterior_method,
    kronecker_posterior,
    optimizer_row,
    sgd_normalised_buffer,
)
from vsgd_bayes.apps.calibrate.tasks import make_calibration_task


@pytest.fixture(scope="module")
def kalman():
    # 20,000 coordinates: a coverage's sampling sd is <= 0.0035, so 2 points is > 5 sd.
    return synthetic.kalman_checkpoint(coordinates=20_000, steps=200, minibatches=32, seed=0)


def _metrics(checkpoint, posterior):
    return metrics.checkpoint_metrics(
        checkpoint.true_gradient, checkpoint.minibatch_gradients, posterior
    )


def test_exact_filter_is_reported_calibrated(kalman):
    result = _metrics(kalman, kalman.posterior)
    z = result["z_predictive"]
    for level, observed in z["coverage"].items():
        assert abs(observed - float(level)) <= 0.02, level  # the stated tolerance: 2 points
    assert z["verdict"] == "calibrated"
    # Robust scale and std of N(0, 1) draws: sampling error ~0.01 at n = 2e4.
    assert abs(z["robust_scale"] - 1.0) < 0.05 and abs(z["std"] - 1.0) < 0.05
    # Noise ratio within 5% (the chi-square median bias at M = 32 is +2.2%, listed as ideal).
    assert abs(10 ** result["noise"]["log10_ratio"]["median"] - 1.0) < 0.05
    assert abs(result["noise"]["log10_ratio"]["median"] - result["noise"]["ideal_median"]) < 0.01
    # Drift against 4 steps of g*: the median matches the chi^2_4 ideal within 0.02 decades
    # (the median of 2e4 log-ratios has sd ~0.003 here).
    drift = metrics.drift_calibration(kalman.posterior.drift_variance,
                                      kalman.following_true_gradients)
    assert abs(drift["log10_ratio"]["median"] - drift["ideal_median"]) < 0.02
    # The exact filter beats a fresh mini-batch here (its error is P_t + q < r).
    assert result["estimation"]["ratio"] < 1.0


def test_the_posterior_variance_alone_under_covers_the_next_gradient(kalman):
    # sigma_t of g_t omits one step of drift: the reason z uses sigma_t^2 + q (module doc).
    coverage = _metrics(kalman, kalman.posterior)["z_posterior"]["coverage"]
    assert coverage["0.95"] < 0.95 - 0.02


@pytest.mark.parametrize("factor, verdict", [(3.0, "over-covering"), (1 / 3, "under-covering")])
def test_a_wrongly_scaled_posterior_is_flagged(kalman, factor, verdict):
    wrong = synthetic.scale_posterior(kalman.posterior, factor)
    result = _metrics(kalman, wrong)
    assert result["z_predictive"]["verdict"] == verdict
    # The robust scale sees 1/factor; the noise ratio factor^2 (within 5%).
    assert abs(result["z_predictive"]["robust_scale"] * factor - 1.0) < 0.05
    assert abs(10 ** result["noise"]["log10_ratio"]["median"] / factor**2 - 1.0) < 0.05


def test_heavy_tails_are_reported_mixed():
    rng = np.random.default_rng(1)
    z = rng.standard_t(df=1.0, size=20_000) * 0.3  # narrow core, Cauchy tails
    result = metrics.posterior_calibration(np.zeros_like(z), np.ones_like(z), z)
    assert result["verdict"] == "mixed"
    assert result["std"] > 10 * result["robust_scale"]


def test_posterior_variance_is_the_kalman_and_the_vsgd_posterior_variance():
    q, r = np.array([0.1, 2.0]), np.array([1.0, 0.5])
    beta = r / (q + r)  # VSGD's momentum b_ghat / (b_g + b_ghat)
    vsgd = metrics.Posterior(np.zeros(2), q, r, beta)
    np.testing.assert_allclose(metrics.posterior_variance(vsgd), 1.0 / (1.0 / q + 1.0 / r))
    np.testing.assert_allclose(metrics.predictive_variance(vsgd), 1.0 / (1.0 / q + 1.0 / r) + q)
    prior = np.array([0.3, 4.0])  # Kalman: gain K = P^-/(P^- + r), P = (1 - K) P^-
    gain = prior / (prior + r)
    kalman = metrics.Posterior(np.zeros(2), q, r, 1.0 - gain)
    np.testing.assert_allclose(metrics.posterior_variance(kalman), (1.0 - gain) * prior)


@pytest.mark.parametrize("dof", [1, 4, 31])
def test_chi2_median_matches_monte_carlo(dof):
    draws = np.random.default_rng(2).chisquare(dof, 400_000) / dof
    # The median of 4e5 draws has sd < 2.5e-3 / sqrt(dof) here; 1 / 4.5 of 2e-3 at dof 1.
    assert abs(np.median(draws) - metrics.chi2_median_over_dof(dof)) < 4e-3 / math.sqrt(dof)


def test_subset_error_estimates_the_error_of_the_halves_mean():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=50_000)
    halves = truth + rng.normal(0.0, 0.2, (2, 50_000))  # each half: variance 0.04
    batches = truth + rng.normal(0.0, 1.0, (8, 50_000))
    result = metrics.subset_error(halves[0], halves[1], batches)
    # The mean of the halves has variance 0.02 per coordinate; sampling error < 1%.
    assert abs(result["subset_error"] / (0.02 * 50_000) - 1.0) < 0.03
    assert abs(result["ratio"] - 0.02) < 0.002


def test_checkpoints_are_log_spaced_from_one_and_leave_room_for_the_drift():
    steps = checkpoint_steps(300, 6, 5)
    assert steps[0] == 1 and steps[-1] == 300 and len(steps) == 6
    assert min(np.diff(steps)) >= 5
    with pytest.raises(ValueError, match="Invalid checkpoints"):
        checkpoint_steps(300, 1, 5)


def test_baseline_estimates_are_normalised_averages():
    # With a constant gradient c every normalised average must return c exactly.
    for name, estimate in (("adamw", adam_first_moment), ("sgd", sgd_normalised_buffer)):
        weight = torch.nn.Parameter(torch.zeros(3))
        optimizer = optimizer_row(name).build([weight], 1e-3)
        for step in range(1, 6):
            weight.grad = torch.tensor([1.0, -2.0, 0.5])
            optimizer.step()
            torch.testing.assert_close(estimate(optimizer, weight, step),
                                       torch.tensor([1.0, -2.0, 0.5]), msg=name)


def test_constant_vsgd_posterior_matches_its_update():
    from vsgd_bayes.hyperparameters import constant_posterior_shape

    weight = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = optimizer_row("constant-vsgd").build([weight], 1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        weight.grad = torch.randn(4, dtype=torch.float64, generator=generator)
        optimizer.step()
    posterior = constant_vsgd_posterior(optimizer, weight)
    ratio = optimizer.param_groups[0]["variance_ratio"]
    state = optimizer.state[weight]
    shape = constant_posterior_shape(optimizer.param_groups[0]["prior_strength"], "reference")
    # sigma^2 = (a/b (1 + 1/K_g))^-1: the ConstantVSGD local update's variance.
    expected = (shape / state["rate"] * (1.0 + 1.0 / ratio)) ** -1
    numpy = metrics.Posterior(*(t.numpy() for t in posterior))
    np.testing.assert_allclose(metrics.posterior_variance(numpy), expected.numpy(), rtol=1e-12)
    np.testing.assert_allclose(numpy.momentum, ratio / (1.0 + ratio))


def test_kalman_vsgd_posterior_is_the_filters_posterior_and_prediction():
    from vsgd_bayes.torch.kalman import steady_state_gain

    weight = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = optimizer_row("kalman-vsgd").build([weight], 1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        weight.grad = 0.01 + 0.1 * torch.randn(4, dtype=torch.float64, generator=generator)
        optimizer.step()
    posterior = gradient_posterior_method(optimizer, weight)
    state = optimizer.state[weight]
    gain, _ = steady_state_gain(state["log_drift_to_noise"])
    variance = state["innovation_variance"]
    numpy = metrics.Posterior(*(t.numpy() for t in posterior))
    # The metric's sigma^2 = (1 - beta) r is the filter's P = S k (1 - k); sigma^2 + q = S k,
    # the predicted variance P^- of the next true gradient (11, eq:kalman-variances).
    np.testing.assert_allclose(metrics.posterior_variance(numpy),
                               (variance * gain * (1 - gain)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(metrics.predictive_variance(numpy), (variance * gain).numpy(),
                               rtol=1e-12)
    # momentum is the weight mu_t gets at the next step: mu_{t+1} = beta mu_t + (1 - beta) g.
    weight.grad = torch.tensor([0.5, -0.2, 0.0, 1.0], dtype=torch.float64)
    optimizer.step()
    expected = posterior.momentum * posterior.mean + (1 - posterior.momentum) * weight.grad
    torch.testing.assert_close(state["gradient_mean"], expected, rtol=1e-12, atol=0.0)


def test_curvature_posterior_is_the_filters_own_prediction_at_the_current_point():
    weight = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = optimizer_row("curvature-kalman-vsgd").build([weight], 1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        weight.grad = 0.3 * weight.detach() + 0.1 * torch.randn(4, dtype=torch.float64,
                                                                generator=generator)
        optimizer.step()
    numpy = metrics.Posterior(*(t.numpy() for t in curvature_posterior(optimizer, weight)))
    noise_variance = optimizer.state[weight]["noise_variance"].clone()
    unmoved = optimizer.gradient_posterior(weight).mean.numpy().copy()
    # The next step's filter predicts g at the current point with m^- and r P^-_gg
    # (eq:curvature-predict); read them back from its update: P_gg = K_g = P^-_gg / (P^-_gg + 1)
    # and m_g = m^- + K_g (g_hat - m^-).
    weight.grad = torch.tensor([0.5, -0.2, 0.0, 1.0], dtype=torch.float64)
    optimizer.step()
    state = optimizer.state[weight]
    gain = state["gradient_variance"]
    predicted_mean = (state["gradient_mean"] - gain * weight.grad) / (1.0 - gain)
    np.testing.assert_allclose(numpy.mean, predicted_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(metrics.predictive_variance(numpy),
                               (noise_variance * gain / (1.0 - gain)).numpy(), rtol=1e-10)
    # Check of the check: the posterior mean at the previous point (not moved along the
    # curvature) is not that prediction.
    assert not np.allclose(unmoved, predicted_mean.numpy(), rtol=1e-3)


def test_kronecker_posterior_gives_the_exact_marginals_of_the_basis_posterior():
    from vsgd_bayes.hyperparameters import posterior_shape
    from vsgd_bayes.torch import KroneckerVSGD

    weight = torch.nn.Parameter(torch.zeros(5, 4, dtype=torch.float64))
    optimizer = KroneckerVSGD([weight], lr=1e-2, basis_update_every=3)
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(5, 5, dtype=torch.float64, generator=generator)
    for _ in range(13):  # four refreshes: both bases far from the identity
        weight.grad = mixing @ torch.randn(5, 4, dtype=torch.float64, generator=generator)
        optimizer.step()
    state = optimizer.state[weight]
    assert not torch.allclose(state["row_basis"].abs(), torch.eye(5, dtype=torch.float64))
    posterior = kronecker_posterior(optimizer, weight)
    numpy = metrics.Posterior(*(t.numpy() for t in posterior))
    # The dense covariances in the parameter's own coordinates, Q diag(v~) Q^T with
    # Q = L (x) R acting on the row-major vec, computed independently of the module.
    basis = torch.kron(state["row_basis"], state["col_basis"])
    shape = posterior_shape(optimizer.defaults["prior_strength"], optimizer.defaults["init"])
    drift, noise = state["drift_rate"] / shape, state["noise_rate"] / shape
    basis_posterior = drift * noise / (drift + noise)  # (1 - beta~) r~

    def marginal(variance):
        return torch.diagonal(basis @ torch.diag(variance.flatten()) @ basis.t()).view(5, 4)

    np.testing.assert_allclose(metrics.posterior_variance(numpy),
                               marginal(basis_posterior).numpy(), rtol=1e-10)
    np.testing.assert_allclose(metrics.predictive_variance(numpy),
                               marginal(basis_posterior + drift).numpy(), rtol=1e-10)
    np.testing.assert_allclose(numpy.noise_variance, marginal(noise).numpy(), rtol=1e-10)
    np.testing.assert_allclose(numpy.mean, (basis @ state["gradient_mean"].flatten()).view(5, 4)
                               .numpy(), rtol=1e-10)
    # Check of the check: the optimizer's rotated-back momentum, read as the metric reads a
    # momentum, does not give the marginal posterior variance.
    plain = metrics.Posterior(*(t.numpy() for t in optimizer.gradient_posterior(weight)))
    assert not np.allclose(metrics.posterior_variance(plain), marginal(basis_posterior).numpy(),
                           rtol=1e-3)


def test_every_row_declares_rates_for_every_task_and_one_metric_source():
    for row in CALIBRATED_OPTIMIZERS:
        assert set(row.learning_rates) == {"digits-mlp", "digits-cnn", "char-lm"}, row.name
        assert row.posterior is not None or row.estimate is not None, row.name
    assert optimizer_row("vsgd").posterior is gradient_posterior_method
    assert optimizer_row("kalman-vsgd").posterior is gradient_posterior_method
    assert optimizer_row("kalman-vsgd").learning_rates == optimizer_row("vsgd").learning_rates
    with pytest.raises(ValueError, match="Invalid optimizer: 'adam'"):
        optimizer_row("adam")


def test_harvest_measures_the_exact_gradient_and_the_minibatch_noise():
    torch.manual_seed(0)
    task = make_calibration_task("digits-mlp")
    model = task.build_model().double()
    params = list(model.parameters())
    pixels, labels = (t.double() if t.is_floating_point() else t for t in task.data["train"])
    # g* against the mean of the 1078 per-example gradients, computed one by one.
    per_example = np.stack([
        np.concatenate([g.reshape(-1).numpy() for g in torch.autograd.grad(
            torch.nn.functional.cross_entropy(model(pixels[i : i + 1]), labels[i : i + 1]),
            params)])
        for i in range(len(labels))
    ])
    task.data["train"] = (pixels, labels)
    exact, _, halves = true_gradient(task, model, params)
    assert halves is None
    np.testing.assert_allclose(exact, per_example.mean(axis=0), atol=1e-12)
    # Batches of 64 drawn with replacement: Var(ĝ) = population variance / 64 per coordinate.
    generator = torch.Generator().manual_seed(1)
    from vsgd_bayes.apps.calibrate.harvest import flat_gradient

    batches = np.stack([flat_gradient(task.loss(model, task.sample_batch(generator, 64), None),
                                      params) for _ in range(64)])
    population = per_example.var(axis=0) / 64
    result = metrics.noise_calibration(population, batches)
    # Median over ~9k coordinates of log10(true / s^2), chi^2_63 sampling: ideal +0.005.
    assert abs(result["log10_ratio"]["median"] - result["ideal_median"]) < 0.02


def test_end_to_end_digits_mlp_tiny():
    task = make_calibration_task("digits-mlp")
    settings = type(task).quick_settings
    expected_steps = checkpoint_steps(settings.steps, settings.checkpoints,
                                      settings.drift_steps + 1)
    runs = {}
    for name in ("vsgd", "vsgd-paper", "sgd"):
        run = runs[name] = calibrate_run(task, optimizer_row(name), seed=0, settings=settings)
        assert not run["diverged"]
        assert [c["step"] for c in run["checkpoints"]] == expected_steps
        for record in run["checkpoints"]:
            assert math.isfinite(record["metrics"]["estimation"]["ratio"])
            if name == "sgd":
                assert record["drift"] is None and "z_predictive" not in record["metrics"]
                continue
            coverage = record["metrics"]["z_predictive"]["coverage"]
            assert all(0.0 <= value <= 1.0 for value in coverage.values())
            assert 0.0 < record["metrics"]["momentum"]["median"] < 1.0
            assert record["drift"]["steps"] == settings.drift_steps
    # The paper start's step-1 prior variance is ~1 against gradients ~1e-3..1e-1 on this MLP:
    # its noise variance overstates s^2 by orders of magnitude (measured 10^5.4 at step 1).
    first = runs["vsgd-paper"]["checkpoints"][0]["metrics"]["noise"]["log10_ratio"]["median"]
    assert first > 3.0


def test_cli_quick_writes_json_table_and_figures(tmp_path, capsys):
    out, json_path = tmp_path / "calibration", tmp_path / "elsewhere" / "full.json"
    code = cli.main(["digits-mlp", "--quick", "--seeds", "2", "--out", str(out),
                     "--json", str(json_path), "--no-progress"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert json.loads(json_path.read_text()) == report  # --json FILE: the same results
    assert set(report) >= {"command", "machine", "wall_seconds", "settings", "table", "results"}
    by_optimizer = report["results"]["digits-mlp"]
    assert set(by_optimizer) == {row.name for row in CALIBRATED_OPTIMIZERS}
    vsgd = by_optimizer["vsgd"]
    assert len(vsgd["runs"]) == 2 and vsgd["has_posterior"]
    final = vsgd["aggregate"][-1]
    assert final["seeds"] == 2
    for key in ("noise_log10_median", "drift_log10_median", "coverage_0.95", "robust_scale",
                "z_std", "estimation_ratio", "momentum_median"):
        assert final[key]["min"] <= final[key]["mean"] <= final[key]["max"], key
    assert "coverage_0.95" not in by_optimizer["adamw"]["aggregate"][-1]
    assert "estimation_ratio" in by_optimizer["adamw"]["aggregate"][-1]
    for name in ("digits-mlp_reliability.png", "digits-mlp_metrics.png", "table.md"):
        assert (out / name).stat().st_size > 0, name
    assert "| digits-mlp | VSGD (reference start) |" in capsys.readouterr().out


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["digits-mlp", "--optimizers", "adam"])
    assert "Invalid --optimizers: 'adam'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["digits-mlp", "--minibatches", "1"])
    assert "Invalid --minibatches: 1" in capsys.readouterr().err


def test_dispatcher_knows_calibrate(capsys):
    from vsgd_bayes.apps import cli as dispatcher

    assert dispatcher.main([]) == 2
    assert "calibrate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as raised:
        dispatcher.main(["calibrate", "--help"])
    assert raised.value.code == 0
    assert "digits-mlp" in capsys.readouterr().out


def test_measuring_leaves_the_training_trajectory_unchanged():
    task = make_calibration_task("digits-mlp")
    settings = type(task).quick_settings
    row = optimizer_row("vsgd")
    run = calibrate_run(task, row, seed=3, settings=settings)
    measured = {record["step"]: record["loss"] for record in run["checkpoints"]}
    # The same seed trained without any measurement: the full-batch losses at the checkpoints
    # must be the same numbers (measurements use their own generator and never write .grad).
    torch.manual_seed(3)
    model = task.build_model()
    optimizer = row.build(list(model.parameters()), row.learning_rates["digits-mlp"])
    generator = torch.Generator().manual_seed(3)
    for step in range(1, max(measured) + 1):
        loss = task.loss(model, task.sample_batch(generator, settings.batch_size), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in measured:
            with torch.no_grad():
                full = task.loss(model, task.true_gradient_batches()[0], None).item()
            assert full == measured[step], step


def test_bench_and_calibrate_share_one_output_convention(tmp_path):
    from vsgd_bayes.apps.bench import cli as bench_cli
    from vsgd_bayes.apps.output import write_results

    for parser, task in ((bench_cli.build_parser(), "digits-cnn"),
                         (cli.build_parser(), "digits-mlp")):
        args = parser.parse_args([task, "--json", "a.json", "--out", "d"])
        assert (args.json_path, args.out) == ("a.json", "d"), parser.prog
        args = parser.parse_args([task])
        assert (args.json_path, args.out) == (None, None), parser.prog
    assert write_results({"x": 1}, None, None) == []  # neither option: nothing written
    written = write_results({"x": 1}, str(tmp_path / "d"), str(tmp_path / "e" / "f.json"))
    assert written == [str(tmp_path / "d" / "results.json"), str(tmp_path / "e" / "f.json")]
    assert all(json.loads(open(path).read()) == {"x": 1} for path in written)
