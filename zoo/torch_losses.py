"""The PyTorch members' losses, chosen by `train.loss` (after the winners' code):
- `bce_dice`: BCE + (1 - soft Dice), everyone's default;
- `bce_logdice`: BCE - log(soft Dice), 5th place's "slightly better" (lyakaap `bce_logdice_loss`);
- `lovasz`: the Lovasz hinge per image (smp's `LovaszLoss`);
`train.border_weight` W weighs pixels within `border_px` of the mask boundary W times in BCE and
Dice (asanakoy's `CombinedLoss`, 4th place's `bce_dice_loss_border`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.spec import TrainConfig


def border_px(height: int) -> int:
    """Half-width of the boundary band for photos `height` px high: 20 px at 1280 (the winners' 41-51 px
    kernels), 2 at least. Framework-free: the Keras loss uses it too."""
    return max(2, height // 64)


def border_weights(target: torch.Tensor, weight: float, band_px: int) -> torch.Tensor:
    """(B, 1, h, w) 1 everywhere, `weight` within `band_px` of the mask boundary (where dilation and
    erosion of the mask differ)."""
    k = 2 * band_px + 1
    dilated = F.max_pool2d(target, k, stride=1, padding=k // 2)
    eroded = -F.max_pool2d(-target, k, stride=1, padding=k // 2)
    return 1 + (weight - 1) * (dilated - eroded)


def soft_dice(proba: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) soft Dice per image of (B, 1, h, w) probabilities against targets, optionally weighted."""
    w = torch.ones_like(target) if weights is None else weights
    proba, target, w = proba.flatten(1), target.flatten(1), w.flatten(1)
    return (2 * (w * proba * target).sum(1) + 1) / ((w * proba).sum(1) + (w * target).sum(1) + 1)


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    cfg: TrainConfig,
    band_px: int,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss `cfg` names, of (B, 1, h, w) logits against float targets in [0, 1] (0/1, or soft
    pseudo-labels); `band_px` is `border_px` of the member's photo height (crops keep the photo's scale);
    `pixel_weights` (B, 1, h, w), when given, multiply every pixel's weight (0 leaves it out of the loss)."""
    logits = logits.float()
    if cfg.loss == "lovasz":
        from segmentation_models_pytorch.losses import LovaszLoss

        return LovaszLoss(mode="binary", per_image=True)(logits, target)
    weights = border_weights(target, cfg.border_weight, band_px) if cfg.border_weight != 1 else None
    if pixel_weights is not None:
        weights = pixel_weights if weights is None else weights * pixel_weights
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weights, reduction="sum")
    bce = bce / (weights.sum() if weights is not None else target.numel())
    dice = soft_dice(torch.sigmoid(logits), target, weights).mean()
    return bce - torch.log(dice) if cfg.loss == "bce_logdice" else bce + (1 - dice)
