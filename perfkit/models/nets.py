"""The networks perfkit trains and optimizes: conv-heavy (cnn, resnet18) and Linear-heavy (mlp, vit).

Each takes ``input_shape`` (C, H, W) and ``num_classes`` first, so one config fits any dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv/ReLU/max-pool stages and a two-layer head: the default, trains in seconds on a CPU."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels, height, width = out_channels, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"input {tuple(input_shape)} is too small for {len(channels)} pooling stages")
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten, then Linear/ReLU blocks: almost all its time is GEMMs, the target of int8 quantization."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        width = 1
        for size in input_shape:
            width *= size
        layers: list[nn.Module] = [nn.Flatten()]
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def resnet18(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 (random init) adapted to small images: a 3x3 stride-1 stem, no max-pool.

    The ImageNet stem would shrink a 28x28 digit to 7x7 before the first block.
    """
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def vit(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    patch_size: int | None = None,
    num_layers: int = 4,
    num_heads: int = 4,
    hidden_dim: int = 128,
    mlp_dim: int = 256,
    dropout: float = 0.0,
) -> nn.Module:
    """A small torchvision VisionTransformer (random init) for ``input_shape`` images.

    ``patch_size=None`` picks the divisor of the image size closest to a 4x4 grid of patches
    (7 for 28x28 digits, 2 for 8x8).
    """
    from torchvision.models import VisionTransformer

    channels, height, width = input_shape
    if height != width:
        raise ValueError(f"vit needs square images, got {height}x{width}")
    if patch_size is None:
        patch_size = min(
            (p for p in range(1, height + 1) if height % p == 0), key=lambda p: abs(height / p - 4)
        )
    if height % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide the image size {height}")
    model = VisionTransformer(
        image_size=height,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        num_classes=num_classes,
    )
    # torchvision's patch embedding expects RGB; digits are grayscale
    model.conv_proj = nn.Conv2d(channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
    return model
