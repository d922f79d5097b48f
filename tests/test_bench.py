"""Tests of the benchmark tasks, the selection protocol and ``vsgd-bayes bench``."""

import json
import math

import pytest
import torch

from vsgd_bayes.apps.bench import cli, runner
from vsgd_bayes.apps.bench.budget import TaskSettings, scale_budget
from vsgd_bayes.apps.bench.cartpole import CartPolePG, returns_to_go
from vsgd_bayes.apps.bench.contrastive import augment, fit_linear_probe, nt_xent
from vsgd_bayes.apps.bench.optimizers import OPTIMIZERS, RunInfo, make_optimizer
from vsgd_bayes.apps.bench.tasks import (
    VAE,
    CharLM,
    CharTransformer,
    DigitsCNN,
    DigitsVAE,
    make_task,
    stdlib_text,
)


def test_digits_splits_are_disjoint_and_fixed():
    a, b = DigitsCNN(), DigitsCNN()
    sizes = {split: len(labels) for split, (_, labels) in a.data.items()}
    assert sizes == {"train": 1078, "val": 359, "test": 360}  # 60/20/20 of 1797
    flat = {split: images.flatten(1) for split, (images, _) in a.data.items()}
    # No image of the test split appears in the training split (rows compared exactly).
    assert not (torch.cdist(flat["test"], flat["train"]) == 0).all(dim=1).any()
    for split in a.data:
        assert torch.equal(a.data[split][0], b.data[split][0])
    assert a.data["train"][0].min() >= 0 and a.data["train"][0].max() <= 1


def test_stdlib_corpus_is_deterministic_and_split_contiguously():
    text = stdlib_text()
    assert text == stdlib_text() and 100_000 < len(text) <= 400_000
    assert "Return" in text  # docstrings, not source code
    task = CharLM()
    sizes = [len(task.data[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == len(text) and sizes[0] == int(0.8 * len(text))
    decoded = "".join(task.vocabulary[i] for i in task.data["val"][:50].tolist())
    assert decoded == text[sizes[0] : sizes[0] + 50]


def test_char_transformer_is_causal():
    torch.manual_seed(0)
    model = CharTransformer(vocabulary=11, context=16).eval()
    tokens = torch.randint(11, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 11
    # Logits before position 10 must not see the changed future tokens.
    assert torch.allclose(model(tokens)[:, :10], model(changed)[:, :10], atol=1e-6)
    assert not torch.allclose(model(tokens)[:, 10:], model(changed)[:, 10:], atol=1e-3)


def test_vae_negative_elbo_matches_torch_distributions():
    torch.manual_seed(0)
    model = VAE().double()
    pixels = torch.rand(5, 64, dtype=torch.float64)
    noise = torch.randn(5, 8, dtype=torch.float64)
    mean, log_std = model.encoder(pixels).chunk(2, dim=-1)
    posterior = torch.distributions.Normal(mean, log_std.exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    z = mean + log_std.exp() * noise
    logits = model.decoder(z)
    # Continuous Bernoulli-style cross-entropy on grey levels: -[x log p + (1-x) log(1-p)].
    reconstruction = -(
        pixels * torch.nn.functional.logsigmoid(logits)
        + (1 - pixels) * torch.nn.functional.logsigmoid(-logits)
    ).sum(-1)
    expected = reconstruction + torch.distributions.kl_divergence(posterior, prior).sum(-1)
    # float64, same operations up to reordering: agreement to rounding.
    assert torch.allclose(model.negative_elbo(pixels, noise), expected, rtol=1e-12, atol=1e-10)


def test_make_optimizer_builds_every_name_and_rejects_others():
    layer = torch.nn.Linear(2, 1)
    run = RunInfo(train_size=100, total_steps=10)
    names = [
        type(make_optimizer(name, layer.parameters(), lr=1e-3, run=run)).__name__
        for name in OPTIMIZERS
    ]
    assert names == [
        "VSGD",
        "ConstantVSGD",
        "KalmanVSGD",
        "FactoredVSGD",
        "CurvatureKalmanVSGD",
        "CurvatureKalmanVSGD",  # curvature-kalman-vsgd-tr: the trust-region step
        "KroneckerVSGD",
        "VSGD",  # sf-vsgd: VSGD with schedule_free_momentum
        "AdamW",
        "SGD",
        "Adafactor",
        "AdamWScheduleFree",
        "SOAP",
        "IVON",
    ]
    trust_region = make_optimizer("curvature-kalman-vsgd-tr", layer.parameters(), lr=1e-3)
    assert trust_region.param_groups[0]["curvature_step"] == "trust_region"
    sf_vsgd = make_optimizer("sf-vsgd", layer.parameters(), lr=1e-3)
    assert sf_vsgd.param_groups[0]["schedule_free_momentum"] == 0.9
    # IVON's effective sample size is the training-set size: it refuses to guess one.
    with pytest.raises(ValueError, match="training-set size"):
        make_optimizer("ivon", layer.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="Invalid optimizer: 'adam'"):
        make_optimizer("adam", layer.parameters(), lr=1e-3)


def test_every_grid_has_six_log_spaced_points_over_two_and_a_half_decades():
    for spec in OPTIMIZERS.values():
        grid = spec.lr_grid
        assert len(grid) >= 6 and math.log10(grid[-1] / grid[0]) >= 2.5 - 1e-3  # 3-digit rounding
        ratios = [b / a for a, b in zip(grid, grid[1:])]
        assert max(ratios) / min(ratios) < 1.01  # log-spaced up to the rounding


def test_train_once_is_reproducible_per_seed():
    task = make_task("digits-vae")
    settings = DigitsVAE.quick_settings
    a = runner.train_once(task, "vsgd", 3e-3, 1, settings)
    b = runner.train_once(task, "vsgd", 3e-3, 1, settings)
    c = runner.train_once(task, "vsgd", 3e-3, 2, settings)
    assert a["test_metric"] == b["test_metric"] and a["curve"] == b["curve"]
    assert a["test_metric"] != c["test_metric"]
    # Training lowers the negative ELBO below its first evaluation (the model does learn).
    assert a["curve"][-1]["val_metric"] < a["curve"][0]["val_metric"] or a["test_metric"] < 60


class FakeTask:
    """A task whose validation metric is a known function of log10(lr): a parabola peaking at
    ``10**peak`` (or, with ``peak=None``, rising with lr forever), plus a small seed effect;
    rates above ``diverge_above`` diverge. Instant, so the protocol's logic is tested alone."""

    name, metric, higher_is_better = "fake", "score", True
    settings = quick_settings = TaskSettings(steps=10, batch_size=1, eval_every=5)

    def __init__(self, peak: float | None, diverge_above: float = math.inf) -> None:
        self.peak, self.diverge_above, self.calls = peak, diverge_above, []

    def run_training(self, optimizer, lr, seed, settings, progress=False):
        self.calls.append((optimizer, lr, seed))
        x = math.log10(lr)
        value = x if self.peak is None else -((x - self.peak) ** 2)
        value += 1e-3 * (seed % 7)  # seeds differ, far less than neighbouring rates do
        diverged = lr > self.diverge_above
        curve = [
            {"step": s, "train_loss": 1.0, "val_metric": value * s / 10, "val_loss": 0.0}
            for s in (5, 10)
        ]
        metric = math.nan if diverged else value
        return {
            "optimizer": optimizer,
            "lr": lr,
            "seed": seed,
            "steps": 10,
            "diverged": diverged,
            "ms_per_step": 2.0,
            "ms_per_optimizer_step": 1.0,
            "curve": curve,
            "val_metric": metric,
            "test_metric": metric + 0.5 * (optimizer == "vsgd"),
            "test_loss": 0.0,
        }


GRID = [1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1, 3.16e-1]


def _select(task, grid=GRID, max_extensions=4):
    return runner.select_learning_rate(
        lambda lr, seed: task.run_training("adamw", lr, seed, None),
        grid,
        [0, 1],
        True,
        max_extensions,
    )


def test_selection_inside_the_grid_adds_nothing():
    result = _select(FakeTask(peak=-2.0))
    assert result["lr"] == 1e-2 and result["extensions"] == [] and not result["at_edge"]
    assert len(result["runs"]) == 2 * len(GRID)


def test_check_of_the_check_a_best_rate_at_the_edge_extends_the_grid_until_inside():
    # The metric peaks at 10**-4.2, below the grid: the lowest point wins and must be extended
    # down, point by point, until the best is no longer the lowest tried (1e-4, then 3.16e-5).
    result = _select(FakeTask(peak=-4.2))
    assert [e["lr"] for e in result["extensions"]] == pytest.approx(
        [3.16e-4, 1e-4, 3.16e-5], rel=1e-2
    )
    assert {e["edge"] for e in result["extensions"]} == {"low"}
    assert result["lr"] == pytest.approx(1e-4, rel=1e-2) and not result["at_edge"]
    # The same at the top edge.
    result = _select(FakeTask(peak=0.2))  # 1.0 beats 3.16 and 0.316
    assert [e["edge"] for e in result["extensions"]] == ["high", "high"]
    assert result["lr"] == pytest.approx(1.0, rel=1e-2) and not result["at_edge"]


def test_extension_stops_at_the_cap_and_says_the_best_is_still_at_the_edge():
    result = _select(FakeTask(peak=None), max_extensions=3)  # better and better with lr
    assert [e["edge"] for e in result["extensions"]] == ["high"] * 3
    assert result["at_edge"] and result["lr"] == max(r["lr"] for r in result["runs"])


def test_a_rate_with_a_diverged_run_is_never_chosen_and_stops_the_extension():
    # Would peak above the grid, but everything above 0.2 diverges: 0.1 is chosen, inside.
    result = _select(FakeTask(peak=1.0, diverge_above=0.2))
    assert result["lr"] == 1e-1 and result["extensions"] == [] and not result["at_edge"]
    assert result["scores"][3.16e-1] is None
    everything = _select(FakeTask(peak=-2.0, diverge_above=0.0))
    assert everything["lr"] is None and everything["extensions"] == []


def test_selection_chooses_by_the_mean_over_seeds():
    # Seed 1 alone would prefer 1e-2 (+0.05 there), the mean over seeds 0 and 1 prefers 1e-3.
    values = {
        (1e-3, 0): 1.0,
        (1e-3, 1): 1.0,
        (1e-2, 0): 0.9,
        (1e-2, 1): 1.05,
        (1e-1, 0): 0.0,
        (1e-1, 1): 0.0,
    }
    result = runner.select_learning_rate(
        lambda lr, seed: {"val_metric": values[lr, seed], "diverged": False},
        [1e-3, 1e-2, 1e-1],
        [0, 1],
        True,
        0,
    )
    assert result["lr"] == 1e-3 and result["scores"][1e-2] == pytest.approx(0.975)


def test_paired_difference_on_known_numbers():
    values, reference = [1.0, 2.0, 3.0, 4.0, 5.0, math.nan], [0.0, 0.0, 1.0, 1.0, 2.0, 7.0]
    result = runner.paired_difference(values, reference)
    # Differences 1, 2, 2, 3, 3 (the NaN pair left out): mean 2.2, sample variance 0.7.
    assert result["pairs"] == 5 and result["mean"] == pytest.approx(2.2)
    assert result["standard_error"] == pytest.approx(math.sqrt(0.7 / 5))
    with pytest.raises(ValueError, match="Invalid pairs"):
        runner.paired_difference([1.0], [1.0, 2.0])


def test_protocol_final_seeds_are_fresh_and_paired_against_adamw():
    task = FakeTask(peak=-2.0)
    result = runner.run_task(
        task,
        optimizers=["vsgd", "adamw"],
        log=None,
        progress=False,
        lr_grids={"vsgd": GRID, "adamw": GRID},
    )
    protocol = result["protocol"]
    assert protocol["selection_seeds"] == [0, 1] and len(protocol["final_seeds"]) == 5
    assert not set(protocol["selection_seeds"]) & set(protocol["final_seeds"])
    for name in ("vsgd", "adamw"):
        row = result["summary"][name]
        selection = {
            r["seed"]
            for r in result["runs"]
            if r["optimizer"] == name and r["stage"] == "selection"
        }
        final = [r for r in result["runs"] if r["optimizer"] == name and r["stage"] == "final"]
        assert selection == {0, 1} and [r["seed"] for r in final] == protocol["final_seeds"]
        assert row["lr"] == 1e-2 and all(r["lr"] == 1e-2 for r in final)
        assert row["test_metrics"] == [r["test_metric"] for r in final]
    # The fake task's VSGD is 0.5 better on every seed: paired difference exactly 0.5, SE 0.
    paired = result["summary"]["vsgd"]["vs_adamw"]
    assert paired["mean"] == pytest.approx(0.5) and paired["standard_error"] == pytest.approx(
        0.0, abs=1e-12
    )
    assert "vs_adamw" not in result["summary"]["adamw"]
    # Each curve goes from value / 2 (step 5) to value (step 10), value = 1e-3 * (seed % 7) at
    # the peak; the final seeds 1000..1004 give seed % 7 = 6, 0, 1, 2, 3: mean value 2.4e-3.
    assert result["summary"]["adamw"]["val_change_last_fifth"] == pytest.approx(1.2e-3)
    assert "| fake | score ↑ | VSGD | 0.01 (0.001–0.316) |" in runner.format_table([result])


def test_results_run_in_parts_merge_into_the_joint_run():
    def run(names):
        return runner.run_task(
            FakeTask(peak=-2.0),
            optimizers=names,
            log=None,
            progress=False,
            lr_grids={name: GRID for name in names},
        )

    joint = run(["vsgd", "adamw"])
    merged = runner.merge_results([run(["adamw"]), run(["vsgd"])])
    assert list(merged["summary"]) == ["vsgd", "adamw"]  # the registry's order
    assert merged["summary"] == joint["summary"]  # including the recomputed paired difference
    with pytest.raises(ValueError, match="an optimizer appears twice"):
        runner.merge_results([run(["adamw"]), run(["adamw"])])


def test_budget_scales_steps_and_evaluation_together():
    settings = TaskSettings(steps=1500, batch_size=64, eval_every=100)
    assert scale_budget(settings, 0.1) == TaskSettings(steps=150, batch_size=64, eval_every=10)
    assert scale_budget(settings, 1e-6) == TaskSettings(steps=1, batch_size=64, eval_every=1)
    for bad in (0, -1.0, math.nan, "1"):
        with pytest.raises(ValueError, match="Invalid budget"):
            scale_budget(settings, bad)


def test_huge_learning_rate_is_reported_as_diverged():
    task = make_task("digits-vae")
    run = runner.train_once(task, "sgd", 1e6, 0, DigitsVAE.quick_settings)
    assert (
        run["diverged"]
        and math.isnan(run["test_metric"])
        and run["steps"] < DigitsVAE.quick_settings.steps
    )


def test_returns_to_go_on_known_numbers():
    assert returns_to_go([1.0, 1.0, 1.0], gamma=0.5) == [1.75, 1.5, 1.0]
    assert returns_to_go([], gamma=0.9) == []


def test_nt_xent_matches_a_direct_loop():
    torch.manual_seed(0)
    z = torch.randn(6, 5, dtype=torch.float64)
    unit = z / z.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        logits = [float(unit[i] @ unit[k]) / 0.5 for k in range(6) if k != i]
        total += -float(unit[i] @ unit[positive]) / 0.5 + math.log(sum(math.exp(v) for v in logits))
    assert nt_xent(z, temperature=0.5).item() == pytest.approx(total / 6, rel=1e-12)  # float64
    # Check of the check: pairing the wrong rows gives a different loss.
    assert nt_xent(z[[0, 1, 2, 4, 3, 5]], temperature=0.5).item() != pytest.approx(
        total / 6, rel=1e-6
    )


def test_linear_probe_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 5, generator=generator, dtype=torch.float64)
    labels = torch.arange(60) % 3
    features[:, 0] += labels  # informative but not separable
    weight, bias = fit_linear_probe(features, labels, classes=3, inverse_regularisation=0.5)
    reference = LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000).fit(
        features.numpy(), labels.numpy()
    )
    # Same strictly convex objective, both solved to tight tolerances: the minimisers agree.
    ours = torch.softmax(features @ weight + bias, 1).numpy()
    assert abs(ours - reference.predict_proba(features.numpy())).max() < 1e-6


def test_augment_is_the_identity_without_randomness_and_moves_pixels_with_it():
    images = DigitsCNN().data["val"][0][:8]
    generator = torch.Generator().manual_seed(0)
    # Zero rotation, shift and noise: bilinear resampling on the pixel centres returns the image.
    same = augment(images, generator, max_degrees=0.0, max_shift=0.0, noise=0.0)
    assert torch.allclose(same, images, atol=1e-5)
    moved = augment(images, generator)
    assert moved.shape == images.shape and (moved - images).abs().mean() > 0.05


def test_cartpole_agent_is_reproducible_and_learns():
    task = CartPolePG()
    settings = TaskSettings(steps=4_000, batch_size=4, eval_every=2_000)
    a = task.run_training("adamw", 1e-2, 3, settings)
    b = task.run_training("adamw", 1e-2, 3, settings)
    assert a["val_metric"] == b["val_metric"] and a["curve"] == b["curve"] and a["steps"] <= 4_000
    # A uniformly random policy lasts ~22 steps on CartPole; 4000 steps of learning beat it.
    assert a["val_metric"] > 30 and a["steps_to_solved"] is None
    assert CartPolePG.summarize([a, b])["note"] == "475 reached 0/2 (not reached)"
    solved = CartPolePG.summarize(
        [{"steps_to_solved": 10}, {"steps_to_solved": 30}, {"steps_to_solved": None}]
    )
    assert solved["note"] == "475 reached 2/3, median 20 steps"


@pytest.mark.parametrize("task", ["cartpole-pg", "digits-contrastive"])
def test_new_tasks_quick_cli_run(task, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                task,
                "--quick",
                "--selection-seeds",
                "1",
                "--seeds",
                "2",
                "--optimizers",
                "vsgd,adamw",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    result = report["results"][0]
    assert result["task"] == task and f"| {task} |" in printed
    assert result["protocol"]["final_seeds"] == [1000, 1001]
    for name in ("vsgd", "adamw"):
        row = result["summary"][name]
        assert row["grid"] == list(OPTIMIZERS[name].lr_grid) and row["lr"] is not None
        assert len(row["test_metrics"]) == 2
    assert "vs_adamw" in result["summary"]["vsgd"]
    assert (out / f"{task}_curves.png").stat().st_size > 10_000


def test_cli_writes_table_json_and_curves(tmp_path, capsys):
    out, path = tmp_path / "out", tmp_path / "r.json"
    assert (
        cli.main(
            [
                "digits-vae",
                "--quick",
                "--selection-seeds",
                "1",
                "--seeds",
                "1",
                "--optimizers",
                "adamw,sgd",
                "--steps",
                "20",
                "--out",
                str(out),
                "--json",
                str(path),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| digits-vae | neg_elbo ↓ | AdamW |" in printed
    report = json.loads(path.read_text())
    assert report["results"][0]["settings"]["steps"] == 20
    assert set(report["results"][0]["summary"]) == {"adamw", "sgd"}
    assert (out / "digits-vae_curves.png").stat().st_size > 10_000
    assert json.loads((out / "results.json").read_text())["table"] == report["table"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["digits-cnn", "--optimizers", "adam"], "Invalid --optimizers: 'adam'"),
        (["digits-cnn", "--seeds", "0"], "Invalid --seeds: 0"),
        (["digits-cnn", "--selection-seeds", "0"], "Invalid --selection-seeds: 0"),
        (["digits-cnn", "--budget", "0"], "Invalid --budget: 0.0"),
        (["digits-cnn", "--max-extensions", "-1"], "Invalid --max-extensions: -1"),
        (["mnist"], "invalid choice: 'mnist'"),
    ],
)
def test_cli_rejects_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(args)
    assert message in capsys.readouterr().err
