"""The paper's training loop: iterations, step schedule, evaluation, exact checkpoint/resume.

One run trains ``config.iterations`` mini-batch steps with the learning rate halved every
``config.lr_halving_every`` iterations (``StepLR``, stepped per iteration), evaluates the test
accuracy every ``config.eval_every`` iterations, and writes a checkpoint every
``config.checkpoint_every`` iterations and whenever it stops. Resuming restores the model,
the optimizer, the scheduler, the random number generators, the iteration counter and the log,
and the batch order and augmentation of iteration i depend only on (seed, i), so that an
interrupted run continues exactly as an uninterrupted one (bitwise on the CPU).

Example:
    >>> from vsgd_bayes.apps.paper.train import EXPERIMENTS
    >>> EXPERIMENTS["cifar100-vgg16"].iterations
    30000
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vsgd_bayes.apps.bench.optimizers import make_optimizer
from vsgd_bayes.apps.paper.data import Dataset, augment, normalize
from vsgd_bayes.apps.paper.models import build_model

__all__ = [
    "Experiment",
    "EXPERIMENTS",
    "DEFAULT_LR",
    "RunConfig",
    "train",
    "evaluate",
    "CHECKPOINT_NAME",
]


@dataclass(frozen=True)
class Experiment:
    """One of the paper's setups (the authors' configuration files)."""

    dataset: str
    model: str
    batch_size: int
    iterations: int
    lr_halving_every: int


EXPERIMENTS: dict[str, Experiment] = {
    "cifar100-vgg16": Experiment("cifar100", "vgg16_bn", 256, 30_000, 10_000),
    "cifar100-convmixer": Experiment("cifar100", "convmixer", 256, 30_000, 10_000),
    "cifar100-resnext18": Experiment("cifar100", "resnext18", 128, 30_000, 10_000),
    # Tiny ImageNet batch sizes of the authors' configuration files.
    "tinyimagenet-vgg19": Experiment("tinyimagenet", "vgg19_bn", 128, 60_000, 20_000),
    "tinyimagenet-convmixer": Experiment("tinyimagenet", "convmixer", 128, 60_000, 20_000),
    "tinyimagenet-resnext18": Experiment("tinyimagenet", "resnext18", 64, 60_000, 20_000),
}

#: Default learning rates: VSGD's own default (the authors' 0.1), torch's AdamW default, and
#: the usual 0.1 for SGD with momentum. The paper tunes them; pass ``--lr`` to do so.
DEFAULT_LR = {"vsgd": 0.1, "constant-vsgd": 0.1, "adamw": 1e-3, "sgd": 0.1}

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run's trajectory (a resumed run must have the same)."""

    experiment: str
    optimizer: str
    lr: float
    weight_decay: float
    batch_size: int
    iterations: int
    lr_halving_every: int
    seed: int
    width_multiplier: float
    eval_every: int
    checkpoint_every: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _seed_for(seed: int, purpose: int, index: int) -> int:
    # A well-mixed 63-bit seed for (run seed, purpose, index); independent of Python's hash.
    return int(
        np.random.SeedSequence([seed, purpose, index]).generate_state(2, dtype=np.uint64)[0]
        >> np.uint64(1)
    )


class BatchSchedule:
    """Epoch-wise shuffled batches (last partial batch dropped); batch i depends on (seed, i)."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if batch_size > size:
            raise ValueError(
                f"Invalid batch_size: {batch_size!r} (larger than the {size} training images)"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_epoch = size // batch_size
        self._epoch, self._order = -1, None

    def indices(self, iteration: int) -> torch.Tensor:
        epoch, position = divmod(iteration, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(_seed_for(self.seed, 0, epoch))
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator)
        return self._order[position * self.batch_size : (position + 1) * self.batch_size]

    def augmentation_generator(self, iteration: int) -> torch.Generator:
        return torch.Generator().manual_seed(_seed_for(self.seed, 1, iteration))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, batch_size: int = 500) -> dict[str, float]:
    """Test loss and accuracy (no augmentation, BatchNorm in inference mode)."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(data.test_labels), batch_size):
        images = normalize(data.test_images[start : start + batch_size], data.mean, data.std)
        labels = data.test_labels[start : start + batch_size]
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    model.train(was_training)
    count = len(data.test_labels)
    return {"test_loss": total_loss / count, "test_accuracy": correct / count}


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    # Write to a temporary file in the same directory, then rename: a crash leaves either the
    # old file or the new one, never a truncated one.
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=".tmp-", suffix=os.path.basename(path)
    )
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_log(
    path: str | None, config: RunConfig, records: list[dict[str, Any]], finished: bool
) -> None:
    if path is None:
        return
    payload = {"config": config.as_dict(), "finished": finished, "records": records}

    def write(temporary: str) -> None:
        with open(temporary, "w") as stream:
            json.dump(payload, stream, indent=1)

    _atomic_write(path, write)


def train(
    config: RunConfig,
    data: Dataset,
    device: str = "cpu",
    checkpoint_dir: str | None = None,
    log_path: str | None = None,
    max_iterations: int | None = None,
    log: Callable[[str], None] | None = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Train (or resume) the run ``config`` on ``data``; return the final state summary.

    Args:
        config: the run's definition (must equal the checkpoint's when resuming).
        data: the data set, already loaded (it is moved to ``device``).
        device: torch device.
        checkpoint_dir: where ``checkpoint.pt`` is written; an existing one is resumed.
        log_path: JSON log (config and one record per evaluation), rewritten atomically.
        max_iterations: stop after this many iterations *in this call* (then checkpoint); the
            schedule still runs to ``config.iterations`` when resumed.
        log: called with one line per evaluation (``None``: silent).
        progress: show a tqdm bar.

    Returns:
        ``{"iteration", "finished", "records", "model", "optimizer"}`` (the last two are the
        live objects, for tests and callers that want the weights).
    """
    device = torch.device(device)
    experiment = EXPERIMENTS[config.experiment]
    data = data.to(device)
    torch.manual_seed(config.seed)
    model = build_model(experiment.model, data.num_classes, config.width_multiplier).to(device)
    optimizer = make_optimizer(
        config.optimizer, model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.lr_halving_every, gamma=0.5
    )
    iteration, records = 0, []
    running = {"loss_sum": 0.0, "count": 0}
    checkpoint_path = os.path.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir else None
    if checkpoint_path and os.path.exists(checkpoint_path):
        # Loaded on the CPU: the RNG states must stay CPU byte tensors; load_state_dict copies
        # the weights and the optimizer state onto the parameters' device.
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if checkpoint["config"] != config.as_dict():
            differing = sorted(
                k for k in config.as_dict() if checkpoint["config"].get(k) != config.as_dict()[k]
            )
            raise ValueError(
                f"Invalid checkpoint_dir: {checkpoint_dir!r} holds a run with a different "
                "configuration "
                f"(differs in {differing}); use another --checkpoint-dir"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"])
        iteration, records, running = (
            checkpoint["iteration"],
            checkpoint["records"],
            checkpoint["running"],
        )
        if log is not None:
            log(f"resumed from {checkpoint_path} at iteration {iteration}")

    def save_checkpoint() -> None:
        if checkpoint_path is None:
            return
        payload = {
            "config": config.as_dict(),
            "iteration": iteration,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "records": records,
            "running": running,
        }
        _atomic_write(checkpoint_path, lambda temporary: torch.save(payload, temporary))

    schedule = BatchSchedule(len(data.train_labels), config.batch_size, config.seed)
    stop_at = (
        config.iterations
        if max_iterations is None
        else min(config.iterations, iteration + max_iterations)
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=config.iterations,
            initial=iteration,
            desc=f"{config.experiment} {config.optimizer}",
        )
    started = time.perf_counter()
    model.train()
    while iteration < stop_at:
        index = schedule.indices(iteration).to(device)
        images = augment(data.train_images[index], schedule.augmentation_generator(iteration))
        images = normalize(images, data.mean, data.std)
        loss = F.cross_entropy(model(images), data.train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        iteration += 1
        value = loss.item()
        running["loss_sum"] += value
        running["count"] += 1
        if bar is not None:
            bar.update(1)
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at iteration {iteration}: loss {value}")
        if iteration % config.eval_every == 0 or iteration == config.iterations:
            record = {
                "iteration": iteration,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": running["loss_sum"] / running["count"],
                **evaluate(model, data),
                "seconds_this_session": time.perf_counter() - started,
            }
            running = {"loss_sum": 0.0, "count": 0}
            records.append(record)
            _write_log(log_path, config, records, iteration == config.iterations)
            if log is not None:
                log(json.dumps(record))
        if iteration % config.checkpoint_every == 0 and iteration < stop_at:
            save_checkpoint()
    if bar is not None:
        bar.close()
    save_checkpoint()
    finished = iteration == config.iterations
    _write_log(log_path, config, records, finished)
    return {
        "iteration": iteration,
        "finished": finished,
        "records": records,
        "model": model,
        "optimizer": optimizer,
    }
