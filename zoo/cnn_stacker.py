"""A CNN stacker after the 4th-place team: a small U-Net fed the photo (RGB) and the members' maps as
channels at a reduced size, as a stacking entry (`fit(TrainMaps)`, `predict_proba(MapBatch)`), so it runs
through the one cross-fit loop (`stacking.crossfit`): fitted on the OOF maps of folds != k it predicts
fold k, and refitted on every fold it predicts the test maps from the members' test maps.

The net learns a correction of the members' mean in logit space: its output (at the reduced size) is
added to logit(mean of the members) at the store's resolution after bilinear upsampling, so the full-size
detail of the members' boundaries is kept and an untrained net gives the plain mean. It is the only entry
that sees the photo, so the only one that can fix pixels every member gets confidently wrong.

Torch lives here (zoo); the stack reaches it through the entry registry of `workbench.stack` and writes
its maps to the stack store like every entry's.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

from stacking.maps import MapBatch, TrainMaps
from zoo.torch_losses import soft_dice
from zoo.torch_member import device_and_amp, seed_everything

EPS = 1e-3  # member probabilities are clipped to [EPS, 1 - EPS] before the logit


def _block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, padding=1),
        nn.BatchNorm2d(n_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(n_out, n_out, 3, padding=1),
        nn.BatchNorm2d(n_out),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Two-level U-Net (n_in, H, W) -> (1, H, W) logits, H and W divisible by 4; last layer starts at zero."""

    def __init__(self, n_in: int, width: int = 16) -> None:
        super().__init__()
        self.down1, self.down2, self.bottom = (
            _block(n_in, width),
            _block(width, 2 * width),
            _block(2 * width, 4 * width),
        )
        self.up2, self.up1 = nn.ConvTranspose2d(4 * width, 2 * width, 2, 2), nn.ConvTranspose2d(2 * width, width, 2, 2)
        self.dec2, self.dec1 = _block(4 * width, 2 * width), _block(2 * width, width)
        self.head = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]  # a Conv2d built with bias=True has one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(nn.functional.max_pool2d(d1, 2))
        b = self.bottom(nn.functional.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        return self.head(self.dec1(torch.cat([self.up1(u2), d1], 1)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


class CnnStacker(BaseEstimator):
    """Small U-Net over (photo, member maps) at `height` x `width`, correcting the members' mean logit.

    Learned: `model_` (SmallUNet, on CPU), `n_members_`, `fitted_ids_` (the train images it was fitted on).
    """

    def __init__(
        self,
        *,
        height: int = 64,
        width: int = 96,
        epochs: int = 8,
        batch_size: int = 8,
        lr: float = 3e-3,
        seed: int = 0,
    ) -> None:
        self.height = height
        self.width = width
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed

    def _inputs(self, batch: MapBatch) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3 + M, h, w) float32 photo and maps in [0, 1] and (n, 1, h, w) float32 mean logit, reduced."""
        size = (self.width, self.height)
        rows, bases = [], []
        for photo, maps in zip(batch.photos(), batch.maps):
            photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
            small = np.stack([cv2.resize(m, size, interpolation=cv2.INTER_AREA) for m in maps]).astype(np.float32) / 255
            rows.append(np.concatenate([photo.transpose(2, 0, 1).astype(np.float32) / 255, small]))
            bases.append(_logit(small.mean(axis=0))[None])
        return np.stack(rows), np.stack(bases).astype(np.float32)

    def fit(self, X: TrainMaps, y: None = None) -> CnnStacker:
        """Train on every image of X (its batches carry the photos), `epochs` passes."""
        if self.height % 4 or self.width % 4:
            raise ValueError(f"CnnStacker: height and width must be multiples of 4, got {self.height}x{self.width}")
        seed_everything(self.seed)
        parts = [
            (
                *self._inputs(b),
                np.stack(
                    [
                        cv2.resize(t, (self.width, self.height), interpolation=cv2.INTER_AREA)
                        for t in np.asarray(b.truth, np.float32)
                    ]
                )[:, None],
            )
            for b in X.batches()
        ]
        inputs, bases, targets = (torch.from_numpy(np.concatenate(p)) for p in zip(*parts))
        device, _ = device_and_amp()
        model = SmallUNet(inputs.shape[1]).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(self.seed)
        model.train()
        for _ in range(self.epochs):
            for index in torch.randperm(len(inputs), generator=generator).split(self.batch_size):
                logits = bases[index].to(device) + model(inputs[index].to(device))
                target = targets[index].to(device)
                bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
                loss = bce + 1 - soft_dice(torch.sigmoid(logits), target).mean()  # the members' bce_dice
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.model_ = model.cpu().eval()
        self.n_members_ = X.n_members
        self.fitted_ids_ = tuple(X.ids)
        return self

    def predict_proba(self, X: MapBatch) -> np.ndarray:
        """(n, H, W) float32: sigmoid(logit(member mean) + the net's correction upsampled bilinearly)."""
        check_is_fitted(self, "model_")
        inputs, _ = self._inputs(X)
        with torch.no_grad():
            correction = self.model_(torch.from_numpy(inputs))[:, 0].numpy()
        height, width = X.maps.shape[2:]
        out = np.empty((len(X), height, width), np.float32)
        for i, (maps, delta) in enumerate(zip(X.maps, correction)):
            mean = maps.astype(np.float32).mean(axis=0) / 255
            logit = _logit(mean) + cv2.resize(delta, (width, height), interpolation=cv2.INTER_LINEAR)
            out[i] = 1 / (1 + np.exp(-logit))
        return out
