"""benchmarks/scale_map.py: its measures are right, it runs, 10_scale_map.md quotes its output."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
from scripts import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
STORED = ROOT / "benchmarks" / "scale_map" / "scale_map.json"
NOTE = ROOT / "derivations" / "10_scale_map.md"


@pytest.fixture(scope="module")
def scale_map():
    return load_script("benchmarks/scale_map.py")


def test_warmup_length_finds_half_the_final_level(scale_map):
    # Step sizes ramp 0.1, 0.2, ..., 1.0 then stay at 1.0: half the final level at step 5.
    sizes = np.concatenate([np.linspace(0.1, 1.0, 10), np.ones(90)])
    assert scale_map.warmup_length(sizes) == (5, 1.0)
    # Check of the check: a start already at the final level has no warm-up.
    assert scale_map.warmup_length(np.ones(100))[0] == 1


def test_kalman_momentum_is_the_steady_state_of_the_filter(scale_map):
    # Iterate the Kalman filter's variance recursion to its fixed point and compare.
    for drift, noise in ((1e-4, 1.0), (1.0, 1.0), (3.0, 0.5)):
        predicted = noise
        for _ in range(10_000):
            posterior = predicted * noise / (predicted + noise)
            predicted = posterior + drift
        expected = 1.0 - predicted / (predicted + noise)
        assert scale_map.kalman_momentum(drift, noise) == pytest.approx(expected, rel=1e-9)
    # Known value: q = r gives 1 - k = (3 - sqrt 5) / 2 = 0.382.
    assert scale_map.kalman_momentum(1.0, 1.0) == pytest.approx((3 - math.sqrt(5)) / 2)


def test_quick_run_covers_the_grid_and_both_starts(scale_map, tmp_path, capsys):
    result = scale_map.main(["--quick", "--out", str(tmp_path)])
    assert len(result["map"]) == len(scale_map.SCALES) * len(scale_map.RATIOS)
    for row in result["map"] + result["stationary"]:
        for init in ("reference", "paper"):
            assert 0.0 < row[init]["beta1"] < 1.0 and row[init]["warmup"] >= 1
    assert (tmp_path / "scale_map.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "scale_map.json").read_text())["steps"] == 300
    assert "reference: b1" in capsys.readouterr().out


def test_note_quotes_the_stored_map(scale_map):
    stored = json.loads(STORED.read_text())
    assert stored["steps"] == 10_000 and stored["coordinates"] == 64  # the note's settings
    text = NOTE.read_text()
    start = text.index("<!-- scale-map-tables")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end scale-map-tables -->")
    assert text[start:end].strip() == scale_map.render_markdown(stored).strip()
