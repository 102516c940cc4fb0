"""Plain PyTorch model for Module 1: knows nothing about Lightning."""

import torch
from torch import nn


class LinearRegression(nn.Module):
    """y = x @ w + b, the model whose exact solution the tests compare against.

    Args:
        in_features: number of input features.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight.detach().squeeze(0)

    @property
    def bias(self) -> torch.Tensor:
        return self.linear.bias.detach().squeeze(0)
