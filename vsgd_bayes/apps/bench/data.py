"""The data shared by several tasks: scikit-learn's digits, split once with a fixed seed.

Both :mod:`~vsgd_bayes.apps.bench.tasks` and :mod:`~vsgd_bayes.apps.bench.contrastive` import
it (and it imports neither), so the task modules import one way.

Example:
    >>> from vsgd_bayes.apps.bench.data import digits_splits
    >>> {split: len(labels) for split, (_, labels) in digits_splits("cpu").items()}
    {'train': 1078, 'val': 359, 'test': 360}
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SPLIT_SEED", "digits_splits"]

#: The fixed seed of every data split (the run seeds change initialisation and batch order only).
SPLIT_SEED = 0


def digits_splits(device: torch.device | str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train / validation / test (60/20/20) of the digits: images (N, 1, 8, 8) in [0, 1] and
    labels, on ``device``; the same split for every seed (:data:`SPLIT_SEED`)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # grey levels 0..16 -> [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    n_train, n_val = int(0.6 * len(order)), int(0.2 * len(order))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {
        split: (
            torch.from_numpy(images[index]).unsqueeze(1).to(device),
            torch.from_numpy(labels[index]).to(device),
        )
        for split, index in parts.items()
    }
