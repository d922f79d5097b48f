"""benchmarks/optimizer_memory.py: the state layouts it computes the scaling figure from agree
with the state_dict() measurement, and a wrong layout is caught (check of the check)."""

import pytest
from scripts import load_script

SMALL_SHAPES = {"mixed": [(8, 3, 3, 3), (8,), (5, 4), (), (6, 2, 2)], "square": [(16, 16)] * 2,
                # one side above KroneckerVSGD's max_basis_dim (2048), one of length 1
                "long": [(2100, 3), (1, 7)]}


@pytest.fixture(scope="module")
def memory():
    return load_script("benchmarks/optimizer_memory.py")


def test_layouts_agree_with_the_measurement(memory):
    table = memory.measure(SMALL_SHAPES)
    for rows in table.values():
        for name, row in rows.items():
            assert row["computed_bytes"] == row["state_bytes"], name
    # the numbers the issue states: Adam 2x, VSGD 3x, Kalman 4x (+ step counters)
    square = table["square"]
    assert square["Adam"]["ratio"] == pytest.approx(2.0, abs=0.01)
    assert square["VSGD"]["ratio"] == pytest.approx(3.0, abs=0.01)
    assert square["FactoredVSGD"]["state_bytes"] == 4 * 2 * (16 * 16 + 2 * 32 + 1)
    # Curvature Kalman VSGD: 21 values per coordinate and the step (issue 19)
    assert square["CurvatureKalmanVSGD"]["ratio"] == pytest.approx(21.0, abs=0.01)
    # Kronecker VSGD (issue 21): VSGD's 3N, a basis and a moment per side, the step
    assert square["KroneckerVSGD"]["state_bytes"] == 4 * 2 * (3 * 256 + 4 * 16**2 + 1)
    # ... and no basis for a side above max_basis_dim or of length 1
    assert table["long"]["KroneckerVSGD"]["state_bytes"] == 4 * (3 * 6300 + 2 * 3**2 + 1
                                                                 + 3 * 7 + 2 * 7**2 + 1)
    # SOAP: exp_avg, exp_avg_sq and GG, Q for every side, no step counter in the state
    assert square["SOAP"]["state_bytes"] == 4 * 2 * (2 * 256 + 4 * 16**2)


def test_a_wrong_layout_is_caught(memory, monkeypatch):
    original = memory.state_values

    def wrong(name, shape):  # as if FactoredVSGD kept VSGD's three values per coordinate
        if name == "FactoredVSGD":
            return original("VSGD", shape)
        return original(name, shape)

    monkeypatch.setattr(memory, "state_values", wrong)
    table = memory.measure(SMALL_SHAPES)
    assert table["square"]["FactoredVSGD"]["computed_bytes"] != (
        table["square"]["FactoredVSGD"]["state_bytes"])
    assert memory.main(["--quick"]) == 1  # the script itself fails on the mismatch


def test_scaling_curve_meets_the_memory_target_from_1e5_parameters(memory):
    curves = memory.scaling([10**5, 10**6, 10**8])
    assert all(ratio <= 1.05 for ratio in curves["FactoredVSGD"])
    assert curves["FactoredVSGD"] == sorted(curves["FactoredVSGD"], reverse=True)
