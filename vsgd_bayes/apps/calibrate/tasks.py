"""The calibration tasks: the bench tasks' data and models, plus the digits MLP.

Each task adds to a bench task (``vsgd_bayes.apps.bench.tasks``) the batches whose mean loss
is the *full-batch* objective, so that its gradient is the exact gradient g*:

* ``digits-mlp``: MLP 64-64-64-10 with tanh on the digits (pixels / 16), cross-entropy, batch
  64, 300 steps; g* over the whole training split (1078 images, one batch).
* ``digits-cnn``: the bench's small CNN, batch 64, 300 steps; g* over the whole training split.
* ``char-lm``: the bench's character transformer, batch 16 windows of 64 characters, 250
  steps. Mini-batches draw window starts uniformly from the training text (~320k positions);
  g* is the gradient over a fixed subset of ``true_gradient_windows`` = 1024 windows drawn once
  without replacement (seed 0), i.e. 65,536 predicted characters. Its own error is measured at
  every checkpoint from its two disjoint halves (``metrics.subset_error``); the variance it
  adds is ~ batch/1024 = 1/64 of one mini-batch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from vsgd_bayes.apps.bench.tasks import SPLIT_SEED, CharLM, DigitsCNN, _digits_splits

__all__ = ["CalibrationSettings", "DigitsMLP", "CALIBRATION_TASKS", "make_calibration_task"]


@dataclass(frozen=True)
class CalibrationSettings:
    """Budget of one calibration run.

    Attributes:
        steps: training steps (the last checkpoint is at or after it; the run continues
            ``drift_steps`` more steps to measure the drift).
        batch_size: training and fresh mini-batch size.
        checkpoints: number of log-spaced checkpoints.
        minibatches: M, fresh mini-batch gradients per checkpoint.
        drift_steps: K, steps after each checkpoint whose g* measure the drift.
    """

    steps: int
    batch_size: int
    checkpoints: int = 6
    minibatches: int = 32
    drift_steps: int = 4


class DigitsMLP:
    """Digits with ``Linear(64, 64) - Tanh - Linear(64, 64) - Tanh - Linear(64, 10)``."""

    name = "digits-mlp"

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.data = {
            split: (images.flatten(1), labels)
            for split, (images, labels) in _digits_splits(self.device).items()
        }

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
        ).to(self.device)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
        pixels, labels = self.data["train"]
        index = torch.randint(len(labels), (batch_size,), generator=generator).to(self.device)
        return pixels[index], labels[index]

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        pixels, labels = batch
        return F.cross_entropy(model(pixels), labels)


class _WholeTrainingSplit:
    """g* over the whole training split, in one batch (its mean loss is the objective)."""

    true_gradient_is_subset = False
    quick_overrides: ClassVar[dict[str, Any]] = {}

    def true_gradient_batches(self) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(self.data["train"])]


class CalibrationMLP(_WholeTrainingSplit, DigitsMLP):
    settings = CalibrationSettings(steps=300, batch_size=64)
    quick_settings = CalibrationSettings(steps=12, batch_size=64, checkpoints=5,
                                         minibatches=16, drift_steps=2)


class CalibrationCNN(_WholeTrainingSplit, DigitsCNN):
    settings = CalibrationSettings(steps=300, batch_size=64)
    quick_settings = CalibrationSettings(steps=12, batch_size=64, checkpoints=5,
                                         minibatches=16, drift_steps=2)


class CalibrationCharLM(CharLM):
    settings = CalibrationSettings(steps=250, batch_size=16)
    quick_settings = CalibrationSettings(steps=12, batch_size=16, checkpoints=5,
                                         minibatches=16, drift_steps=2)
    true_gradient_is_subset = True
    #: Windows of the fixed subset g* is computed on, and how many go into one forward pass.
    true_gradient_windows = 1024
    chunk_windows = 128
    #: ``--quick``: a 256-window subset in 4 chunks.
    quick_overrides: ClassVar[dict[str, Any]] = {
        "true_gradient_windows": 256, "chunk_windows": 64
    }

    def true_gradient_batches(self) -> list[tuple[torch.Tensor, ...]]:
        """Equal chunks of the fixed window subset; the first half of the chunks and the second
        half are the two disjoint halves of ``metrics.subset_error``."""
        if not hasattr(self, "_subset"):
            tokens = self.data["train"]
            generator = torch.Generator().manual_seed(SPLIT_SEED)
            starts = torch.randperm(len(tokens) - self.context - 1, generator=generator)
            starts = starts[: self.true_gradient_windows].unsqueeze(1)
            windows = tokens[(starts + torch.arange(self.context + 1)).to(self.device)]
            chunks = self.true_gradient_windows // self.chunk_windows
            if chunks * self.chunk_windows != self.true_gradient_windows or chunks % 2:
                raise ValueError(
                    f"Invalid true_gradient_windows: {self.true_gradient_windows} (must be an even "
                    f"number of chunks of {self.chunk_windows} windows)"
                )
            self._subset = [
                (chunk[:, :-1], chunk[:, 1:]) for chunk in windows.split(self.chunk_windows)
            ]
        return self._subset


CALIBRATION_TASKS = {
    task.name: task for task in (CalibrationMLP, CalibrationCNN, CalibrationCharLM)
}


def make_calibration_task(name: str, device: str = "cpu", **overrides):
    """Build the task ``name`` (one of :data:`CALIBRATION_TASKS`); ``overrides`` set class
    attributes on the instance (e.g. ``true_gradient_windows=512`` for a cheaper char-lm)."""
    if name not in CALIBRATION_TASKS:
        raise ValueError(f"Invalid task: {name!r} (must be one of {tuple(CALIBRATION_TASKS)})")
    task = CALIBRATION_TASKS[name](device)
    for key, value in overrides.items():
        if not hasattr(task, key):
            raise ValueError(f"Invalid override: {key!r} is not an attribute of task {name!r}")
        setattr(task, key, value)
    return task
