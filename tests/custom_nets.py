"""Networks for the custom-member tests, as a user's `builder: module:function` would return them."""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """(B, 3, H, W) -> (B, 1, H, W) logits: a conv block, down-sampled and up-sampled by 2 (even H, W)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.down(x)))


def tiny_net(width: int = 8) -> nn.Module:
    return TinyNet(width)


def two_channel_net() -> nn.Module:
    """Wrong: two output channels."""
    return nn.Conv2d(3, 2, 3, padding=1)


def half_size_net() -> nn.Module:
    """Wrong: logits at half the input's size."""
    return nn.Conv2d(3, 1, 3, stride=2, padding=1)


def not_a_module() -> str:
    return "a network"


NOT_A_BUILDER = 3
