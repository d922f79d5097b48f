"""benchmarks/pair_against.py: paired differences against any row, signs by the metric's
direction, and a clear error for a row that is not there."""

import json

import pytest
from scripts import load_script


@pytest.fixture(scope="module")
def pair_against():
    return load_script("benchmarks/pair_against.py")


def _result(higher_is_better, a, b):
    return {"task": "t", "metric": "m", "higher_is_better": higher_is_better,
            "summary": {"a": {"test_metrics": a, "test_metrics_at_best_val": a},
                        "b": {"test_metrics": b, "test_metrics_at_best_val": b}}}


@pytest.mark.parametrize("higher_is_better, sign", [(True, 1.0), (False, -1.0)])
def test_pairs_and_signs(pair_against, higher_is_better, sign):
    row = pair_against.pair(_result(higher_is_better, [1.0, 2.0, 3.5], [0.0, 1.0, 2.0]), "a", "b")
    end = row["end"]
    # differences 1, 1, 1.5: mean 7/6, sd 0.2887, SE 0.1667
    assert end["mean"] == pytest.approx(7 / 6) and end["pairs"] == 3
    assert end["standard_error"] == pytest.approx(0.28867513 / 3**0.5)
    assert end["better_in_standard_errors"] == pytest.approx(sign * 7.0, rel=1e-6)


def test_an_absent_row_is_named(pair_against):
    with pytest.raises(ValueError, match=r"Invalid optimizer: 'c' is not in the results of t"):
        pair_against.pair(_result(True, [1.0], [1.0]), "c", "b")


def test_cli_writes_json(pair_against, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": [_result(False, [2.0, 3.0], [1.0, 1.0])]}))
    out = tmp_path / "pairs.json"
    assert pair_against.main([str(path), "--optimizer", "a", "--reference", "b",
                              "--json", str(out)]) == 0
    pairs = json.loads(out.read_text())["pairs"]
    assert pairs[0]["end"]["mean"] == pytest.approx(1.5)
    assert "| t | m ↓ |" in capsys.readouterr().out


def test_a_task_without_checkpoints_has_no_best_val_pair(pair_against):
    result = _result(True, [1.0, 2.0], [0.0, 0.0])
    for row in result["summary"].values():
        del row["test_metrics_at_best_val"]
    row = pair_against.pair(result, "a", "b")
    assert row["at_best_val"] is None and row["end"]["mean"] == pytest.approx(1.5)
