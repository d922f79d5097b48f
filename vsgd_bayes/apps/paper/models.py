"""The paper's image classifiers, written in plain torch (no torchvision).

* ``vgg16_bn`` / ``vgg19_bn``: VGG configurations D and E (Simonyan & Zisserman 2015) with a
  BatchNorm after every 3x3 convolution, the fully connected head replaced, as is usual for
  32x32 and 64x64 inputs, by global average pooling and one linear layer.
* ``convmixer``: ConvMixer-256/8 (Trockman & Kolter 2022): a patch embedding (patch size 2),
  then 8 blocks of a residual depthwise convolution (kernel 5) and a pointwise convolution,
  each followed by GELU and BatchNorm; the authors' configuration for both data sets.
* ``resnext18``: the CIFAR ResNeXt of Xie et al. (2017, section 5.3) with depth 18, i.e.
  (18 - 2) / 9 = 1 bottleneck block per stage, cardinality 8, base width 64 and widen factor
  4 (stage outputs 256, 512, 1024; grouped widths 512, 1024, 2048), the authors' setting.

``width_multiplier`` scales every channel count (for tests and quick runs; 1 = the paper).

Example:
    >>> import torch
    >>> from vsgd_bayes.apps.paper.models import build_model
    >>> model = build_model("convmixer", num_classes=3, width_multiplier=1 / 16)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["MODELS", "build_model", "VGG", "ConvMixer", "ResNeXt"]

VGG_CONFIGURATIONS = {
    # "M" is a 2x2 max-pooling, a number the output channels of a 3x3 convolution.
    "vgg16_bn": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
    "vgg19_bn": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


def _scaled(channels: int, width_multiplier: float, multiple_of: int = 1) -> int:
    """round(channels * width_multiplier) up to a multiple of ``multiple_of`` (at least one)."""
    scaled = max(1, round(channels * width_multiplier))
    return max(multiple_of, -(-scaled // multiple_of) * multiple_of)


def _he_initialisation(model: nn.Module) -> None:
    # He (fan-out) initialisation for convolutions, unit BatchNorm, small linear read-out.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


class VGG(nn.Module):
    """VGG with BatchNorm; global average pooling and a linear classifier."""

    def __init__(
        self,
        configuration: Sequence[int | str],
        num_classes: int,
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in configuration:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = _scaled(int(item), width_multiplier)
            layers += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        _he_initialisation(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvMixer(nn.Module):
    """ConvMixer-dim/depth: patch embedding, then depth x (residual depthwise, pointwise)."""

    def __init__(
        self,
        num_classes: int,
        dim: int = 256,
        depth: int = 8,
        kernel_size: int = 5,
        patch_size: int = 2,
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        dim = _scaled(dim, width_multiplier)
        blocks: list[nn.Module] = [
            nn.Conv2d(3, dim, patch_size, stride=patch_size),
            nn.GELU(),
            nn.BatchNorm2d(dim),
        ]
        for _ in range(depth):
            blocks += [
                _Residual(
                    nn.Sequential(
                        nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"),
                        nn.GELU(),
                        nn.BatchNorm2d(dim),
                    )
                ),
                nn.Conv2d(dim, dim, 1),
                nn.GELU(),
                nn.BatchNorm2d(dim),
            ]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))


class _Bottleneck(nn.Module):
    """1x1 reduce -> grouped 3x3 (cardinality groups, stride) -> 1x1 expand, plus shortcut."""

    def __init__(
        self, channels_in: int, channels_out: int, grouped_width: int, cardinality: int, stride: int
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, grouped_width, 1, bias=False),
            nn.BatchNorm2d(grouped_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(
                grouped_width,
                grouped_width,
                3,
                stride=stride,
                padding=1,
                groups=cardinality,
                bias=False,
            ),
            nn.BatchNorm2d(grouped_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(grouped_width, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNeXt(nn.Module):
    """CIFAR ResNeXt: 3x3 stem (64), three stages of bottlenecks (strides 1, 2, 2), pooling."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 18,
        cardinality: int = 8,
        base_width: int = 64,
        widen_factor: int = 4,
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        # Blocks per stage as in the CIFAR ResNeXt: (depth - 2) // 9 (3 for ResNeXt-29, 1 for 18).
        blocks_per_stage = (depth - 2) // 9
        if blocks_per_stage < 1:
            raise ValueError(f"Invalid depth: {depth!r} (must be >= 11)")
        stem = _scaled(64, width_multiplier)
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        ]
        channels = stem
        for stage in range(3):
            out = _scaled(64 * widen_factor * 2**stage, width_multiplier)
            grouped = _scaled(
                cardinality * base_width * 2**stage, width_multiplier, multiple_of=cardinality
            )
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_Bottleneck(channels, out, grouped, cardinality, stride))
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        _he_initialisation(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))


MODELS = ("vgg16_bn", "vgg19_bn", "convmixer", "resnext18")


def build_model(name: str, num_classes: int, width_multiplier: float = 1.0) -> nn.Module:
    """Build the model called ``name`` (one of :data:`MODELS`)."""
    if not isinstance(width_multiplier, (int, float)) or not width_multiplier > 0:
        raise ValueError(f"Invalid width_multiplier: {width_multiplier!r} (must be > 0)")
    if name in VGG_CONFIGURATIONS:
        return VGG(VGG_CONFIGURATIONS[name], num_classes, width_multiplier)
    if name == "convmixer":
        return ConvMixer(num_classes, width_multiplier=width_multiplier)
    if name == "resnext18":
        return ResNeXt(num_classes, width_multiplier=width_multiplier)
    raise ValueError(f"Invalid model: {name!r} (must be one of {MODELS})")
