"""Tests of the budget check: curve states and the best-validation checkpoint."""

import math

import pytest
import torch
from torch import nn

from vsgd_bayes.apps.bench import runner
from vsgd_bayes.apps.bench.budget import TaskSettings
from vsgd_bayes.apps.bench.curves import NOISE_MULTIPLE, curve_state, late_change


def _run(values, diverged=False):
    return {
        "diverged": diverged,
        "curve": [{"step": 10 * (i + 1), "val_metric": v} for i, v in enumerate(values)],
    }


def test_late_change_is_the_mean_curve_change_over_the_last_fifth():
    # Points at steps 10..50: the last at or before 80 % (40) is index 3.
    runs = [_run([9.0, 8.0, 7.0, 6.0, 5.0]), _run([9.0, 8.0, 7.0, 4.0, 2.0])]
    assert late_change(runs) == pytest.approx((5.0 + 2.0) / 2 - (6.0 + 4.0) / 2)
    assert math.isnan(late_change([_run([1.0])]))
    assert math.isnan(late_change([_run([1.0, 2.0], diverged=True)]))


@pytest.mark.parametrize(
    "finals, higher_is_better, state",
    [
        # Final values 1.0 and 1.2: SE = 0.1, so a change beyond 0.2 is not flat.
        ((1.0, 1.2), False, "flat"),  # change -0.1 (< 2 SE)
        ((1.0, 1.2), True, "flat"),
    ],
)
def test_a_change_within_two_standard_errors_is_flat(finals, higher_is_better, state):
    runs = [_run([5.0, 4.0, 3.0, 1.2, finals[0]]), _run([5.0, 4.0, 3.0, 1.2, finals[1]])]
    result = curve_state(runs, higher_is_better)
    assert result["change"] == pytest.approx(-0.1)
    assert result["noise"] == pytest.approx(0.2 / math.sqrt(2) / math.sqrt(2))
    assert result["state"] == state


def test_check_of_the_check_a_change_beyond_the_noise_is_improving_or_worsening():
    # The same runs with the late change made three times the threshold, both ways.
    se = 0.1
    jump = 3 * NOISE_MULTIPLE * se
    down = [
        _run([5.0, 4.0, 3.0, 2.0, 2.0 - jump - 0.1]),
        _run([5.0, 4.0, 3.0, 2.0, 2.0 - jump + 0.1]),
    ]
    up = [
        _run([5.0, 4.0, 3.0, 2.0, 2.0 + jump - 0.1]),
        _run([5.0, 4.0, 3.0, 2.0, 2.0 + jump + 0.1]),
    ]
    assert curve_state(down, higher_is_better=False)["state"] == "improving"
    assert curve_state(down, higher_is_better=True)["state"] == "worsening"
    assert curve_state(up, higher_is_better=False)["state"] == "worsening"
    assert curve_state(up, higher_is_better=True)["state"] == "improving"
    assert curve_state(down[:1], higher_is_better=False)["state"] == "unknown"  # one seed


class PassingTask:
    """A supervised task whose one weight w walks from 0 towards 10 (loss (w - 10)² / 2), with
    validation metric |w - 5| (best when w passes 5, worse after) and test metric w itself;
    the validation loss records w, so the weight at every curve point is known."""

    name, metric, higher_is_better = "passing", "distance", False
    settings = quick_settings = TaskSettings(steps=60, batch_size=1, eval_every=5)
    device = torch.device("cpu")

    def build_model(self):
        model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(model.weight)
        return model

    def sample_batch(self, generator, batch_size):
        return (torch.ones(batch_size, 1),)

    def loss(self, model, batch, generator):
        return 0.5 * (model(batch[0]) - 10.0).pow(2).mean()

    @torch.no_grad()
    def evaluate(self, model, split):
        w = model.weight.item()
        return (abs(w - 5.0), w) if split == "val" else (w, 0.0)


def test_best_validation_checkpoint_restores_the_weights_of_the_best_step():
    run = runner.train_once(PassingTask(), "sgd", 0.01, 0, PassingTask.settings)
    curve = run["curve"]
    best = min(curve, key=lambda point: point["val_metric"])
    assert run["best_val_step"] == best["step"] < run["steps"]  # the curve passed its best
    assert run["best_val_metric"] == best["val_metric"]
    # The test metric is w: at the best step it is that step's weight, not the last one's.
    assert run["test_metric_at_best_val"] == pytest.approx(best["val_loss"], abs=1e-6)
    assert run["test_metric"] == pytest.approx(curve[-1]["val_loss"], abs=1e-6)
    assert run["test_metric_at_best_val"] < run["test_metric"] - 1.0


def test_best_validation_checkpoint_at_the_last_step_is_the_final_model():
    settings = TaskSettings(steps=10, batch_size=1, eval_every=5)  # w stays below 5
    run = runner.train_once(PassingTask(), "sgd", 0.01, 0, settings)
    assert run["best_val_step"] == 10
    assert run["test_metric_at_best_val"] == run["test_metric"]


def test_protocol_reports_and_pairs_the_best_checkpoint_and_merges_it():
    def run(names):
        return runner.run_task(
            PassingTask(),
            optimizers=names,
            final_seeds=2,
            selection_seeds=1,
            log=None,
            progress=False,
            # Both walk w monotonically past 5 (momentum 0.9 at 0.002 is overdamped here).
            lr_grids={"sgd": [0.002], "adamw": [0.15]},
        )

    joint = run(["sgd", "adamw"])
    row, reference = joint["summary"]["sgd"], joint["summary"]["adamw"]
    for summary in (row, reference):
        assert summary["best_val_steps"] and all(step < 60 for step in summary["best_val_steps"])
    assert row["curve_state"] == reference["curve_state"] == "worsening"  # |w - 5| grows
    differences = [
        a - b
        for a, b in zip(row["test_metrics_at_best_val"], reference["test_metrics_at_best_val"])
    ]
    assert row["vs_adamw_at_best_val"]["mean"] == pytest.approx(sum(differences) / 2)
    merged = runner.merge_results([run(["adamw"]), run(["sgd"])])
    timings = ("ms_per_step", "ms_per_optimizer_step")  # measured, so never equal twice

    def untimed(summary):
        return {
            name: {key: value for key, value in row.items() if key not in timings}
            for name, row in summary.items()
        }

    assert untimed(merged["summary"]) == untimed(joint["summary"])
    table = runner.format_table([joint])
    assert "(worsening)" in table and "at best val: − AdamW" in table
