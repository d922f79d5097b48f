"""``vsgd-bayes demo --quick``: the main job runs, prints its tables and reports failures."""

from vsgd_bayes.apps import demo


def test_demo_quick_runs_validation_and_training(capsys):
    assert demo.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out  # the validation table's last line
    lines = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.startswith(("VSGD ", "AdamW "))
    }
    assert set(lines) == {"VSGD", "AdamW"}
    for name, fields in lines.items():
        accuracy = float(fields[2])
        # 60 steps of batch 64 on the digits: far above chance (0.1); see benchmarks/RESULTS.md.
        assert 0.5 < accuracy <= 1.0, (name, accuracy)
    assert out.rstrip().endswith("demo passed")


def test_demo_fails_when_validation_fails(monkeypatch, capsys):
    from vsgd_bayes.apps import validate

    monkeypatch.setattr(validate, "main", lambda argv: 1)
    assert demo.main(["--quick", "--steps", "2"]) == 1
    assert "validation FAILED" in capsys.readouterr().out


def test_demo_fails_when_training_diverges(monkeypatch, capsys):
    # A learning rate of 1e6 for SGD-like steps sends the CNN's loss to inf/nan or far above
    # the untrained model's; either way the demo must report divergence.
    monkeypatch.setattr(demo, "DEMO_LR", {"vsgd": 3e-3, "sgd": 1e6})
    assert demo.main(["--skip-validation", "--steps", "20"]) == 1
    out = capsys.readouterr().out
    assert "DIVERGED" in out and out.rstrip().endswith("demo FAILED")
