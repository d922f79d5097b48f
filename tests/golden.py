"""Loader for the golden trajectories recorded from the authors' implementation (tests/data).

See tests/data/README.md for the format. Hyperparameters are translated from the authors'
argument names (ghattg, ps, tau1, tau2) to this project's names.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

DATA_DIR = pathlib.Path(__file__).parent / "data"
SCENARIOS = ("defaults", "custom")

#: authors' argument name -> this project's name
ARGUMENT_NAMES = {
    "lr": "lr",
    "ghattg": "variance_ratio",
    "ps": "prior_strength",
    "tau1": "kappa1",
    "tau2": "kappa2",
    "weight_decay": "weight_decay",
    "eps": "eps",
}

#: Tolerances on max |delta theta| in units of the learning rate (tests/data/README.md): the
#: authors' code rounds its constants to float32, which exact float64 constants do not.
FLOAT64_TOLERANCE = 1e-3
FLOAT32_TOLERANCE = 1e-2


@dataclass(frozen=True)
class GoldenParameter:
    init: np.ndarray  # shape S
    grads: np.ndarray  # (steps, *S): gradient fed at each step
    params: np.ndarray  # (steps, *S): parameters after each step
    mu: np.ndarray  # (steps, *S): posterior mean of the true gradient after each step


@dataclass(frozen=True)
class GoldenScenario:
    name: str
    hyperparameters: Dict[str, float]  # in this project's names
    steps: int
    parameters: List[GoldenParameter]

    @property
    def lr(self) -> float:
        return self.hyperparameters["lr"]


def load(name: str) -> GoldenScenario:
    meta = json.loads((DATA_DIR / f"{name}.json").read_text())
    arrays = np.load(DATA_DIR / f"{name}.npz")
    hyperparameters = {ARGUMENT_NAMES[k]: float(v) for k, v in meta["hyperparameters"].items()}
    count = len({key.split("_")[0] for key in arrays.files})
    parameters = [
        GoldenParameter(*(arrays[f"p{i}_{field}"] for field in ("init", "grads", "params", "mu")))
        for i in range(count)
    ]
    return GoldenScenario(name, hyperparameters, int(meta["steps"]), parameters)
