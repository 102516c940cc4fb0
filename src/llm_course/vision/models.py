"""Plain PyTorch image classifiers for Module 2: they know nothing about Lightning."""

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, then ``len(hidden)`` blocks of Linear → ReLU → Dropout, then a linear head.

    Args:
        in_features: pixels per image (28 × 28 = 784 for MNIST).
        hidden: width of each hidden layer.
        num_classes: output logits.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(
        self, in_features: int = 784, hidden: tuple[int, ...] = (512, 256), num_classes: int = 10, dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout)]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # Two 3x3 convolutions see a 5x5 field with fewer weights than one 5x5; pooling halves the resolution.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )  # fmt: skip


class SmallCNN(nn.Module):
    """Two conv blocks (28 → 14 → 7 pixels) and a two-layer head.

    Args:
        in_channels: image channels (1 for MNIST).
        channels: output channels of the two conv blocks.
        hidden: width of the hidden layer of the head.
        num_classes: output logits.
        dropout: dropout probability in the head.
        image_size: side of the square input image.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        num_classes: int = 10,
        dropout: float = 0.3,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_block(in_channels, channels[0]), _conv_block(channels[0], channels[1]))
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[1] * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )  # fmt: skip
        # NHWC layout: measured 1.1-1.35x faster training steps on a 2-core CPU, and what cuDNN prefers under AMP.
        self.features.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))
