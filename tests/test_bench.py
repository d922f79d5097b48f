"""Tests of the benchmark tasks, the selection protocol and ``vsgd-bayes bench``."""

import json
import math

import pytest
import torch

from vsgd_bayes.apps.bench import cli, runner
from vsgd_bayes.apps.bench.optimizers import OPTIMIZERS, make_optimizer
from vsgd_bayes.apps.bench.tasks import VAE, CharLM, CharTransformer, DigitsCNN, DigitsVAE, make_task, stdlib_text



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
    reconstruction = -(pixels * torch.nn.functional.logsigmoid(logits)
                       + (1 - pixels) * torch.nn.functional.logsigmoid(-logits)).sum(-1)
    expected = reconstruction + torch.distributions.kl_divergence(posterior, prior).sum(-1)
    # float64, same operations up to reordering: agreement to rounding.
    assert torch.allclose(model.negative_elbo(pixels, noise), expected, rtol=1e-12, atol=1e-10)


def test_make_optimizer_builds_every_name_and_rejects_others():
    layer = torch.nn.Linear(2, 1)
    names = [type(make_optimizer(name, layer.parameters(), lr=1e-3)).__name__ for name in OPTIMIZERS]
    assert names == ["VSGD", "ConstantVSGD", "AdamW", "SGD"]
    with pytest.raises(ValueError, match="Invalid optimizer: 'adam'"):
        make_optimizer("adam", layer.parameters(), lr=1e-3)


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


def test_protocol_chooses_on_validation_and_reuses_the_first_seed():
    result = runner.run_task("digits-cnn", optimizers=["vsgd", "adamw"], seeds=2, quick=True, log=None, progress=False)
    for name in ("vsgd", "adamw"):
        grid = [r for r in result["runs"] if r["optimizer"] == name and r["stage"] == "grid"]
        seeds = [r for r in result["runs"] if r["optimizer"] == name and r["stage"] == "seed"]
        assert [r["lr"] for r in grid] == runner.QUICK_LR_GRIDS[name]
        best = max(grid, key=lambda r: r["val_metric"])
        row = result["summary"][name]
        assert row["lr"] == best["lr"]
        assert [r["seed"] for r in seeds] == [1] and seeds[0]["lr"] == best["lr"]
        finals = [best["test_metric"], seeds[0]["test_metric"]]
        assert row["test_metrics"] == finals
        assert row["test_metric_mean"] == pytest.approx(sum(finals) / 2)
        assert row["test_metric_std"] == pytest.approx(abs(finals[0] - finals[1]) / math.sqrt(2))
        assert row["ms_per_step"] > row["ms_per_optimizer_step"] > 0
        # 40 quick steps already beat chance (0.1) by far on the digits.
        assert row["test_metric_mean"] > 0.5
    assert "| digits-cnn | accuracy ↑ | VSGD |" in runner.format_table([result])


def test_a_diverged_run_is_never_chosen():
    task = DigitsCNN
    diverged = {"diverged": True, "val_metric": math.nan}
    fine = {"diverged": False, "val_metric": 0.5}
    better = {"diverged": False, "val_metric": 0.6}
    assert not runner._better(task, diverged, None)
    assert runner._better(task, fine, None) and runner._better(task, better, fine)
    assert not runner._better(task, fine, better)
    assert runner._better(DigitsVAE, fine, better)  # lower is better for the negative ELBO


def test_huge_learning_rate_is_reported_as_diverged():
    task = make_task("digits-vae")
    run = runner.train_once(task, "sgd", 1e6, 0, DigitsVAE.quick_settings)
    assert run["diverged"] and math.isnan(run["test_metric"]) and run["steps"] < DigitsVAE.quick_settings.steps


def test_cli_writes_table_json_and_curves(tmp_path, capsys):
    out, path = tmp_path / "out", tmp_path / "r.json"
    assert cli.main(["digits-vae", "--quick", "--seeds", "1", "--optimizers", "adamw,sgd", "--steps", "20",
                     "--out", str(out), "--json", str(path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| digits-vae | neg_elbo ↓ | AdamW |" in printed
    report = json.loads(path.read_text())
    assert report["results"][0]["settings"]["steps"] == 20
    assert set(report["results"][0]["summary"]) == {"adamw", "sgd"}
    assert (out / "digits-vae_curves.png").stat().st_size > 10_000
    assert json.loads((out / "results.json").read_text())["table"] == report["table"]


@pytest.mark.parametrize("args, message", [
    (["digits-cnn", "--optimizers", "adam"], "Invalid --optimizers: 'adam'"),
    (["digits-cnn", "--seeds", "0"], "Invalid --seeds: 0"),
    (["mnist"], "invalid choice: 'mnist'"),
])
def test_cli_rejects_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(args)
    assert message in capsys.readouterr().err
