"""benchmarks/peer_ablation.py: each ablation row switches off exactly its ingredient."""

import pytest
import torch
from scripts import load_script


@pytest.fixture(scope="module")
def ablation():
    return load_script("benchmarks/peer_ablation.py")


def _evaluated_weights(spec):
    layer = torch.nn.Linear(3, 1, bias=False)
    optimizer = spec.build(layer.parameters(), lr=0.1, weight_decay=0.0)
    spec.set_mode(optimizer, True)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.ones(2, 3)).sum().backward()
        optimizer.step()
    spec.set_mode(optimizer, False)  # what the runner does before an evaluation
    return layer.weight.detach().clone()


def test_rows_switch_off_one_ingredient_each(ablation):
    from vsgd_bayes.apps.bench.optimizers import OPTIMIZERS

    rows = ablation.ablation_rows()
    sf = OPTIMIZERS["sf-adamw"]
    # at y: the same optimizer and warm-up, evaluated where the gradients are taken
    at_y, averaged = _evaluated_weights(rows["sf-adamw-at-y"]), _evaluated_weights(sf)
    assert rows["sf-adamw-at-y"].schedule == sf.schedule == "warmup"
    assert not torch.equal(at_y, averaged)  # check of the check: x and y differ after 3 steps
    assert rows["sf-adamw-no-warmup"].schedule is None
    assert rows["sf-adamw-no-warmup"].set_mode is sf.set_mode
    assert rows["adamw-warmup"].schedule == "warmup"
    assert rows["adamw-warmup"].build is OPTIMIZERS["adamw"].build
    assert rows["vsgd-warmup"].schedule == "warmup"
    assert rows["vsgd-warmup"].build is OPTIMIZERS["vsgd"].build
    assert "sf-adamw-at-y" not in OPTIMIZERS  # the registry itself is left alone on import


def test_the_kalman_predictive_row_is_kalman_vsgd_with_the_predictive_step(ablation):
    spec = ablation.ablation_rows()["kalman-vsgd-predictive"]
    layer = torch.nn.Linear(3, 1)
    optimizer = spec.build(layer.parameters(), lr=0.1, weight_decay=0.0)
    assert type(optimizer).__name__ == "KalmanVSGD"
    assert optimizer.param_groups[0]["step_variance"] == "predictive"
