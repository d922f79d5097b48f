"""Small real tasks whose data ships with the installed packages (nothing is downloaded).

* ``digits-cnn``: scikit-learn's 8x8 handwritten digits (1797 images), a small CNN; metric:
  test accuracy.
* ``digits-vae``: a variational auto-encoder on the same digits (pixels scaled to [0, 1],
  Bernoulli likelihood on the grey levels, standard normal prior, 8 latent dimensions);
  metric: test negative ELBO in nats per image (lower is better).
* ``char-lm``: a small causal character-level transformer on the docstrings of a fixed list of
  standard-library modules (deterministic for a given Python version); metric: test perplexity
  per character (lower is better).
* ``cartpole-pg`` (:mod:`~vsgd_bayes.apps.bench.cartpole`): REINFORCE with a learned baseline on
  Gymnasium's CartPole-v1; metric: mean return of the last 100 episodes.
* ``digits-contrastive`` (:mod:`~vsgd_bayes.apps.bench.contrastive`): SimCLR on the digits;
  metric: linear-probe test accuracy on the frozen features.

Every task splits its data once, with a fixed seed, into train / validation / test (60/20/20
for the digits, contiguous 80/10/10 for the text); the learning rate is chosen on validation,
the test split is only reported. A task object holds its data on ``device`` and exposes

* ``build_model()``: a fresh model (its initialisation follows torch's global seed),
* ``sample_batch(generator)`` and ``loss(model, batch, generator)``: the training objective,
* ``evaluate(model, split)``: ``(metric, loss)`` on ``"val"`` or ``"test"``.

Example:
    >>> from vsgd_bayes.apps.bench.tasks import make_task
    >>> task = make_task("digits-cnn")
    >>> task.metric, task.higher_is_better
    ('accuracy', True)
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from vsgd_bayes.apps.bench.budget import TaskSettings
from vsgd_bayes.apps.bench.cartpole import CartPolePG
from vsgd_bayes.apps.bench.contrastive import DigitsContrastive
from vsgd_bayes.apps.bench.data import SPLIT_SEED, digits_splits

# The old private name, kept for the scripts that import it from here.
_digits_splits = digits_splits

__all__ = ["TASKS", "TaskSettings", "make_task", "DigitsCNN", "DigitsVAE", "CharLM", "stdlib_text"]


class SmallCNN(nn.Module):
    """conv3x3(16) - ReLU - conv3x3(32) - ReLU - maxpool2 - linear(64) - ReLU - linear(10)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Centre the [0, 1] grey levels so that the first layer sees zero-mean inputs.
        return self.classifier(self.features(2.0 * images - 1.0))


class DigitsCNN:
    """Digit classification with :class:`SmallCNN`; metric: accuracy (higher is better)."""

    name = "digits-cnn"
    metric = "accuracy"
    higher_is_better = True
    settings = TaskSettings(steps=300, batch_size=64, eval_every=25)
    quick_settings = TaskSettings(steps=40, batch_size=64, eval_every=20)

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.data = digits_splits(self.device)

    @property
    def train_size(self) -> int:
        """Training examples (IVON's effective sample size)."""
        return len(self.data["train"][1])

    def build_model(self) -> nn.Module:
        return SmallCNN().to(self.device)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
        images, labels = self.data["train"]
        index = torch.randint(len(labels), (batch_size,), generator=generator).to(self.device)
        return images[index], labels[index]

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> tuple[float, float]:
        images, labels = self.data[split]
        logits = model(images)
        accuracy = (logits.argmax(dim=1) == labels).double().mean().item()
        return accuracy, F.cross_entropy(logits, labels).item()

    @torch.no_grad()
    def predict(self, model: nn.Module, split: str) -> torch.Tensor:
        """Class probabilities on ``split`` (averaged over posterior samples by the runner)."""
        return F.softmax(model(self.data[split][0]).double(), dim=1)

    def score_probabilities(self, probabilities: torch.Tensor, split: str) -> tuple[float, float]:
        """(accuracy, cross-entropy) of class probabilities on ``split``."""
        labels = self.data[split][1]
        accuracy = (probabilities.argmax(dim=1) == labels).double().mean().item()
        loss = -probabilities.gather(1, labels.unsqueeze(1)).clamp_min(1e-300).log().mean()
        return accuracy, loss.item()


class VAE(nn.Module):
    """MLP encoder 64-128-(2x8) and decoder 8-128-64 (Bernoulli logits)."""

    def __init__(self, pixels: int = 64, hidden: int = 128, latent: int = 8) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(
            nn.Linear(pixels, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, pixels)
        )

    def negative_elbo(self, pixels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """-ELBO per image, one reparameterised sample z = m + s * noise per image."""
        mean, log_std = self.encoder(pixels).chunk(2, dim=-1)
        z = mean + log_std.exp() * noise
        logits = self.decoder(z)
        reconstruction = F.binary_cross_entropy_with_logits(logits, pixels, reduction="none").sum(
            -1
        )
        # KL( N(m, s^2) || N(0, 1) ) in closed form.
        kl = 0.5 * (mean.pow(2) + (2 * log_std).exp() - 1.0 - 2 * log_std).sum(-1)
        return reconstruction + kl


class DigitsVAE:
    """VAE on the digits; metric: negative ELBO in nats per image (lower is better)."""

    name = "digits-vae"
    metric = "neg_elbo"
    higher_is_better = False
    settings = TaskSettings(steps=1500, batch_size=64, eval_every=100)
    quick_settings = TaskSettings(steps=40, batch_size=64, eval_every=20)
    #: Samples of z per image in evaluation (fixed seed), to make the estimate less noisy.
    eval_samples = 10

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.data = {
            split: images.flatten(1) for split, (images, _) in digits_splits(self.device).items()
        }

    @property
    def train_size(self) -> int:
        """Training images (IVON's effective sample size)."""
        return len(self.data["train"])

    def build_model(self) -> nn.Module:
        return VAE().to(self.device)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
        pixels = self.data["train"]
        index = torch.randint(len(pixels), (batch_size,), generator=generator).to(self.device)
        return (pixels[index],)

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        (pixels,) = batch
        noise = torch.randn(len(pixels), model.latent, generator=generator).to(self.device)
        return model.negative_elbo(pixels, noise).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> tuple[float, float]:
        pixels = self.data[split]
        generator = torch.Generator().manual_seed(SPLIT_SEED)
        total = 0.0
        for _ in range(self.eval_samples):
            noise = torch.randn(len(pixels), model.latent, generator=generator).to(self.device)
            total += model.negative_elbo(pixels, noise).mean().item()
        value = total / self.eval_samples
        return value, value


#: Standard-library modules whose docstrings make the char-lm corpus (fixed order).
STDLIB_MODULES: tuple[str, ...] = (
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "http.client",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "math",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "random",
    "re",
    "shutil",
    "socket",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "zipfile",
)


def stdlib_text(modules: tuple[str, ...] = STDLIB_MODULES, max_chars: int = 400_000) -> str:
    """The docstrings of ``modules`` and of their public members, in a fixed order.

    Members are visited in sorted name order and only those defined in the module itself are
    kept (re-exports would repeat text); the result depends only on the Python version.
    """
    pieces: list[str] = []
    with warnings.catch_warnings():
        # Touching deprecated members (e.g. typing.io) warns; reading their docstrings is harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_name in modules:
            module = importlib.import_module(module_name)
            pieces.append(inspect.getdoc(module) or "")
            for name in sorted(vars(module)):
                member = vars(module)[name]
                if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                    continue
                if inspect.isclass(member) or inspect.isfunction(member):
                    pieces.append(inspect.getdoc(member) or "")
    text = "\n\n".join(piece for piece in pieces if piece)
    return text[:max_chars]


class CausalSelfAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=-1)
        # (batch, length, width) -> (batch, heads, length, width / heads)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """Token + learned position embeddings, causal blocks, final LayerNorm, linear read-out."""

    def __init__(
        self, vocabulary: int, context: int = 64, width: int = 64, heads: int = 4, depth: int = 2
    ) -> None:
        super().__init__()
        self.token = nn.Embedding(vocabulary, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[CausalSelfAttentionBlock(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token(tokens) + self.position(positions)
        return self.head(self.norm(self.blocks(x)))


class CharLM:
    """Next-character prediction; metric: test perplexity exp(mean NLL) (lower is better)."""

    name = "char-lm"
    metric = "perplexity"
    higher_is_better = False
    # 250 steps (protocol v1) left the validation curves falling steeply, hence 1500.
    settings = TaskSettings(steps=1500, batch_size=16, eval_every=100)
    quick_settings = TaskSettings(steps=30, batch_size=16, eval_every=30)
    context = 64
    #: Evaluation uses at most this many non-overlapping windows per split (all of them with
    #: the default corpus size), so that evaluation stays cheap.
    max_eval_windows = 512

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        text = stdlib_text()
        self.vocabulary = sorted(set(text))
        index = {char: i for i, char in enumerate(self.vocabulary)}
        tokens = torch.tensor([index[char] for char in text], dtype=torch.long)
        n_train, n_val = int(0.8 * len(tokens)), int(0.1 * len(tokens))
        self.data = {
            "train": tokens[:n_train].to(self.device),
            "val": tokens[n_train : n_train + n_val].to(self.device),
            "test": tokens[n_train + n_val :].to(self.device),
        }

    @property
    def train_size(self) -> int:
        """Training characters: the loss is a mean over predicted characters, so each is one
        example of IVON's effective sample size."""
        return len(self.data["train"])

    def build_model(self) -> nn.Module:
        return CharTransformer(len(self.vocabulary), context=self.context).to(self.device)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
        tokens = self.data["train"]
        starts = torch.randint(len(tokens) - self.context - 1, (batch_size, 1), generator=generator)
        index = (starts + torch.arange(self.context + 1)).to(self.device)
        windows = tokens[index]
        return windows[:, :-1], windows[:, 1:]

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> tuple[float, float]:
        tokens = self.data[split]
        count = min((len(tokens) - 1) // self.context, self.max_eval_windows)
        inputs = tokens[: count * self.context].view(count, self.context)
        targets = tokens[1 : count * self.context + 1].view(count, self.context)
        total = 0.0
        for start in range(0, count, 128):
            logits = model(inputs[start : start + 128])
            total += F.cross_entropy(
                logits.flatten(0, 1), targets[start : start + 128].flatten(), reduction="sum"
            ).item()
        loss = total / (count * self.context)
        return math.exp(min(loss, 700.0)), loss


#: The one task registry; cartpole-pg and digits-contrastive live in their own modules, which
#: import only budget.py and data.py (never this module), so imports run one way.
TASKS = {task.name: task for task in (DigitsCNN, DigitsVAE, CharLM, CartPolePG, DigitsContrastive)}


def make_task(name: str, device: str = "cpu"):
    """Build the task called ``name`` (one of :data:`TASKS`) with its data on ``device``."""
    if name not in TASKS:
        raise ValueError(f"Invalid task: {name!r} (must be one of {tuple(TASKS)})")
    return TASKS[name](device)
