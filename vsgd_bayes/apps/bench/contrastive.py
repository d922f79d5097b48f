"""``digits-contrastive``: SimCLR-style representation learning on scikit-learn's digits.

A small encoder f (MLP 64-256-64, ReLU) and projection head g (MLP 64-64-32) are trained with
the NT-Xent loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations") on two augmented views of each image of a batch of N: with z = g(f(x))
normalised to unit length and s_ij = z_i . z_j / tau over the 2N views,

    loss = mean_i [ -s_{i,p(i)} + log sum_{k != i} exp(s_ik) ],

p(i) being the other view of the same image (tau = 0.5). A view: a random rotation in
[-15, 15] degrees and shift in [-1, 1] pixels (bilinear resampling, zero padding), plus
Gaussian noise of standard deviation 0.1 on the [0, 1] grey levels.

Metric: linear-probe accuracy. The encoder is frozen; the features f(x) (no augmentation) of
10 labelled training images per class are standardised, a multinomial logistic regression
(L2 on the weights, C = 1, scikit-learn's objective; :func:`fit_linear_probe`) is fitted to
them, and its accuracy on the validation or test split is reported. The encoder never sees a
label.

Example:
    >>> from vsgd_bayes.apps.bench.contrastive import nt_xent
    >>> import torch
    >>> round(nt_xent(torch.eye(4)[:2].repeat(2, 1), temperature=0.5).item(), 4)
    0.2395
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vsgd_bayes.apps.bench.budget import TaskSettings
from vsgd_bayes.apps.bench.data import digits_splits

__all__ = ["DigitsContrastive", "ContrastiveEncoder", "augment", "nt_xent", "fit_linear_probe"]


def nt_xent(projections: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over 2N projections: rows i and i + N are the two views of one image."""
    z = F.normalize(projections, dim=1)
    n = len(z) // 2
    similarity = z @ z.T / temperature
    # A view is never its own candidate.
    similarity = similarity.masked_fill(
        torch.eye(2 * n, dtype=torch.bool, device=z.device), -math.inf
    )
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, positives)


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    max_degrees: float = 15.0,
    max_shift: float = 1.0,
    noise: float = 0.1,
) -> torch.Tensor:
    """Random rotation, shift (in pixels) and Gaussian noise of a batch (N, 1, H, W)."""
    count, _, height, width = images.shape
    angle = (torch.rand(count, generator=generator) * 2 - 1) * math.radians(max_degrees)
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * max_shift
    shift = shift * torch.tensor([2.0 / width, 2.0 / height])
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + noise * torch.randn(moved.shape, generator=generator).to(images.device)


class ContrastiveEncoder(nn.Module):
    """Encoder f: 64-256-64 (ReLU between), the probed features; head g: 64-64-32."""

    def __init__(
        self, pixels: int = 64, hidden: int = 256, features: int = 64, projection: int = 32
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, features)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Linear(features, features), nn.ReLU(), nn.Linear(features, projection)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The features f(x) of images in [0, 1] (centred first)."""
        return self.encoder(2.0 * images - 1.0)


class DigitsContrastive:
    """SimCLR on the digits; metric: linear-probe test accuracy (higher is better)."""

    name = "digits-contrastive"
    metric = "probe_accuracy"
    higher_is_better = True
    train_loss_label = "NT-Xent loss (EMA 0.9)"
    settings = TaskSettings(steps=1000, batch_size=128, eval_every=100)
    quick_settings = TaskSettings(steps=30, batch_size=64, eval_every=15)
    temperature = 0.5
    #: Labelled training images per class for the probe. Few labels: with all 1078, even a
    #: random encoder's features give ~0.95 (measured here), leaving little to compare.
    probe_labels_per_class = 10

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.data = digits_splits(self.device)
        # The probe's labelled images: the first PROBE_LABELS_PER_CLASS of each class in the
        # (already shuffled) training split.
        images, labels = self.data["train"]
        keep = torch.cat(
            [torch.nonzero(labels == c).flatten()[: self.probe_labels_per_class] for c in range(10)]
        )
        self.probe_data = (images[keep], labels[keep])

    @property
    def train_size(self) -> int:
        """Training images (IVON's effective sample size)."""
        return len(self.data["train"][1])

    def build_model(self) -> nn.Module:
        return ContrastiveEncoder().to(self.device)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
        images, _ = self.data["train"]
        index = torch.randint(len(images), (batch_size,), generator=generator).to(self.device)
        return (images[index],)

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        (images,) = batch
        views = torch.cat([augment(images, generator), augment(images, generator)])
        return nt_xent(model.head(model(views)), self.temperature)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> tuple[float, float]:
        """Linear-probe (accuracy, cross-entropy) on ``split``; the probe is fitted on the
        labelled images."""
        train_images, train_labels = self.probe_data
        images, labels = self.data[split]
        train_features, features = model(train_images).double(), model(images).double()
        if not (torch.isfinite(train_features).all() and torch.isfinite(features).all()):
            return math.nan, math.nan  # a diverged encoder: nothing to probe
        mean, std = train_features.mean(0), train_features.std(0, unbiased=False).clamp_min(1e-12)
        weight, bias = fit_linear_probe((train_features - mean) / std, train_labels, classes=10)
        logits = ((features - mean) / std) @ weight + bias
        accuracy = (logits.argmax(1) == labels).double().mean().item()
        return accuracy, F.cross_entropy(logits, labels).item()


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, classes: int, inverse_regularisation: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with an L2 penalty on the weights (not the bias).

    Minimises C * sum_i CE(x_i W + b, y_i) + ||W||^2 / 2 (scikit-learn's objective for
    ``LogisticRegression(C=C)``) by L-BFGS in the features' dtype; deterministic.
    """
    weight = torch.zeros(features.shape[1], classes, dtype=features.dtype, requires_grad=True)
    bias = torch.zeros(classes, dtype=features.dtype, requires_grad=True)
    solver = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        solver.zero_grad()
        loss = inverse_regularisation * F.cross_entropy(
            features @ weight + bias, labels, reduction="sum"
        )
        loss = loss + 0.5 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        solver.step(objective)
    return weight.detach(), bias.detach()
