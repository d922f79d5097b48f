"""CIFAR-100 and Tiny ImageNet-200 read from their distributed layouts, plus augmentation.

Nothing is downloaded: ``--data-dir DIR`` must hold (or be) one of

* ``cifar-100-python/{train,test,meta}``: the "python version" pickles (``data``: N x 3072
  uint8 rows, channel-major 3 x 32 x 32; ``fine_labels``; ``meta`` has ``fine_label_names``);
* ``tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG,
  val/val_annotations.txt}`` (the validation split, labelled by ``val_annotations.txt``, is the
  test set as in the paper; class indices follow the sorted wnids).

Images are held in memory as uint8 tensors (N, 3, H, W). Augmentation is the standard one:
zero-pad 4 pixels, random crop back to H x W, random horizontal flip, then per-channel
normalisation. The authors' Tiny ImageNet pipeline also used random affine and colour jitter;
only crop + flip is done here (stated in the CLI help).

Example:
    >>> import torch
    >>> from vsgd_bayes.apps.paper.data import augment
    >>> images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    >>> augment(images, torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "load_cifar100",
    "load_tiny_imagenet",
    "load_dataset",
    "augment",
    "normalize",
]

CIFAR100_LAYOUT = "cifar-100-python/{train,test,meta} (the CIFAR-100 'python version' pickles)"
TINY_IMAGENET_LAYOUT = (
    "tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
    "val/val_annotations.txt}"
)


class DatasetNotFoundError(FileNotFoundError):
    """The data directory does not have the expected layout (the message names it)."""


@dataclass
class Dataset:
    """Images (uint8, N x 3 x H x W) and labels (int64) of both splits, and normalisation."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to(self, device: torch.device) -> Dataset:
        for field in ("train_images", "train_labels", "test_images", "test_labels"):
            setattr(self, field, getattr(self, field).to(device))
        return self


def _find(data_dir: str, folder: str, marker: str, layout: str) -> str:
    """``data_dir/folder`` if it has ``marker``, else ``data_dir`` itself if it has it."""
    for root in (os.path.join(data_dir, folder), data_dir):
        if os.path.exists(os.path.join(root, marker)):
            return root
    raise DatasetNotFoundError(
        f"Invalid data_dir: {data_dir!r} (expected {layout} under it; "
        f"{os.path.join(data_dir, folder, marker)!r} not found)"
    )


def load_cifar100(data_dir: str) -> Dataset:
    """CIFAR-100 (fine labels) from ``data_dir/cifar-100-python``."""
    root = _find(data_dir, "cifar-100-python", "train", CIFAR100_LAYOUT)
    splits = {}
    for split in ("train", "test"):
        path = os.path.join(root, split)
        if not os.path.exists(path):
            raise DatasetNotFoundError(
                f"Invalid data_dir: {data_dir!r} (expected {CIFAR100_LAYOUT}; {path!r} not found)"
            )
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"fine_labels"], dtype=np.int64)
        splits[split] = (torch.from_numpy(images.copy()), torch.from_numpy(labels))
    num_classes = 100
    meta = os.path.join(root, "meta")
    if os.path.exists(meta):
        with open(meta, "rb") as handle:
            num_classes = len(pickle.load(handle, encoding="bytes")[b"fine_label_names"])
    return Dataset(
        "cifar100",
        *splits["train"],
        *splits["test"],
        num_classes,
        # Per-channel statistics of the CIFAR-100 training images.
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    )


def _read_images(paths: list[str]) -> torch.Tensor:
    from PIL import Image

    def read(path: str) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

    # JPEG decoding releases the GIL, so threads help with the ~110k small files.
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(read, paths))
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1:
        raise ValueError(f"Invalid images: all must have the same size, found {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_tiny_imagenet(data_dir: str) -> Dataset:
    """Tiny ImageNet-200 from ``data_dir/tiny-imagenet-200`` (its val split is the test set)."""
    root = _find(data_dir, "tiny-imagenet-200", "wnids.txt", TINY_IMAGENET_LAYOUT)
    with open(os.path.join(root, "wnids.txt")) as handle:
        wnids = sorted(line.strip() for line in handle if line.strip())
    label_of = {wnid: index for index, wnid in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        folder = os.path.join(root, "train", wnid, "images")
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(
                f"Invalid data_dir: {data_dir!r} "
                f"(expected {TINY_IMAGENET_LAYOUT}; {folder!r} not found)"
            )
        names = sorted(name for name in os.listdir(folder) if name.endswith(".JPEG"))
        train_paths += [os.path.join(folder, name) for name in names]
        train_labels += [label_of[wnid]] * len(names)
    annotations = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.exists(annotations):
        raise DatasetNotFoundError(
            f"Invalid data_dir: {data_dir!r} "
            f"(expected {TINY_IMAGENET_LAYOUT}; {annotations!r} not found)"
        )
    test_paths, test_labels = [], []
    with open(annotations) as handle:
        for line in sorted(handle):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                continue
            test_paths.append(os.path.join(root, "val", "images", fields[0]))
            test_labels.append(label_of[fields[1]])
    if not train_paths or not test_paths:
        raise DatasetNotFoundError(
            f"Invalid data_dir: {data_dir!r} (no images found; expected {TINY_IMAGENET_LAYOUT})"
        )
    return Dataset(
        "tinyimagenet",
        _read_images(train_paths),
        torch.tensor(train_labels, dtype=torch.int64),
        _read_images(test_paths),
        torch.tensor(test_labels, dtype=torch.int64),
        len(wnids),
        # ImageNet statistics, as the authors' pipeline uses.
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


def load_dataset(name: str, data_dir: str) -> Dataset:
    """``"cifar100"`` or ``"tinyimagenet"`` from ``data_dir``."""
    if name == "cifar100":
        return load_cifar100(data_dir)
    if name == "tinyimagenet":
        return load_tiny_imagenet(data_dir)
    raise ValueError(f"Invalid dataset: {name!r} (must be 'cifar100' or 'tinyimagenet')")


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images -> float32, scaled to [0, 1], minus ``mean``, divided by ``std``."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded images and random horizontal flip (one gather each).

    The random draws come from ``generator`` (on the CPU), so that a batch is a function of
    the generator's seed alone, on any device.
    """
    count, channels, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator).to(images.device)
    flips = (torch.rand(count, generator=generator) < 0.5).to(images.device)
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = offsets[0].view(count, 1) + torch.arange(height, device=images.device)
    columns = offsets[1].view(count, 1) + torch.arange(width, device=images.device)
    # Flipping is reading the columns of the crop right to left.
    columns = torch.where(flips.view(count, 1), columns.flip(1), columns)
    batch_index = torch.arange(count, device=images.device).view(count, 1, 1, 1)
    channel_index = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[
        batch_index, channel_index, rows.view(count, 1, height, 1), columns.view(count, 1, 1, width)
    ]
