"""Trained members behind one call, whatever the framework:
`predict_proba(images (N, H, W, 3) uint8, angles=None) -> (N, H, W) float32` in [0, 1].

Several checkpoints (one per fold model) make one member whose maps are their average: that is how
the test set is predicted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from carvana.dataset import N_ANGLES
from carvana.resize import resize_image, resize_proba
from zoo.spec import MemberSpec

PREDICT_BATCH = 8


class AvgMaskMember:
    """R2's average-mask baseline, one mean training mask per angle (16): no image is looked at."""

    def __init__(self, spec: MemberSpec, checkpoint_paths: list[Path]) -> None:
        self.spec = spec
        self.means = np.mean([np.load(p) for p in checkpoint_paths], axis=0)  # (16, h, w) float32

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        height, width = images.shape[1:3]
        if angles is None:  # angle unknown: the mean over all angles
            maps = [self.means.mean(axis=0)] * len(images)
        else:
            maps = [self.means[angle - 1] for angle in angles]
        return np.stack([resize_proba(m, height, width) for m in maps])


def fit_avg_mask(masks: np.ndarray, angles: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(16, h, w) float32 mean mask per angle over `indices` (the overall mean for an absent angle)."""
    overall = masks[indices].mean(axis=0, dtype=np.float64)
    means = []
    for angle in range(1, N_ANGLES + 1):
        chosen = indices[angles[indices] == angle]
        means.append(masks[chosen].mean(axis=0, dtype=np.float64) if chosen.size else overall)
    return np.stack(means).astype(np.float32)


class TorchMember:
    """PyTorch fold models (state dicts in `best.pt`) averaged, with horizontal-flip TTA."""

    def __init__(self, spec: MemberSpec, checkpoint_paths: list[Path]) -> None:
        import torch

        from zoo.torch_models import build_torch_model
        from zoo.train_torch import device_and_amp

        self.spec = spec
        self.device, self.amp = device_and_amp()
        self.models = []
        for path in checkpoint_paths:
            model = build_torch_model(spec)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
            self.models.append(model.to(self.device).eval())

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        import torch

        from zoo.train_torch import to_tensor

        height, width = images.shape[1:3]
        out = np.empty((len(images), height, width), np.float32)
        for start in range(0, len(images), PREDICT_BATCH):
            batch = np.stack([resize_image(im, self.spec.height, self.spec.width) for im in images[start:start + PREDICT_BATCH]])
            x = to_tensor(batch).to(self.device)
            with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
                maps = sum(self._predict_one(model, x) for model in self.models) / len(self.models)
            for i, proba in enumerate(maps.float().cpu().numpy()):
                out[start + i] = resize_proba(proba, height, width)
        return np.clip(out, 0.0, 1.0)

    def _predict_one(self, model, x):
        import torch

        proba = torch.sigmoid(model(x))[:, 0]
        if self.spec.train.hflip_tta:
            flipped = torch.sigmoid(model(torch.flip(x, dims=[3])))[:, 0]
            proba = (proba + torch.flip(flipped, dims=[2])) / 2
        return proba


def load_member(spec: MemberSpec, checkpoint_paths: list[Path]):
    """The trained member for `spec` from its fold checkpoints (several are averaged)."""
    if spec.arch == "avg_mask":
        return AvgMaskMember(spec, checkpoint_paths)
    if spec.framework == "keras":
        from zoo.keras_unet import KerasMember

        return KerasMember(spec, checkpoint_paths)
    return TorchMember(spec, checkpoint_paths)
