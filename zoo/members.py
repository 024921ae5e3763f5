"""Trained members behind one call, whatever the framework:
`predict_proba(images (N, H, W, 3) uint8, angles=None) -> (N, H, W) float32` in [0, 1].

Several checkpoints (one per fold model) make one member whose maps are their average: that is how
the test set is predicted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from carvana.dataset import N_ANGLES
from carvana.resize import resize_proba
from zoo.predict import predict_photos
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
    """PyTorch fold models (state dicts in `best.pt`) averaged, predicted as `zoo.predict` says
    (padded, whole or by tiles, with the member's TTA views)."""

    def __init__(self, spec: MemberSpec, checkpoint_paths: list[Path]) -> None:
        import torch

        from zoo.torch_models import build_torch_model, input_stats
        from zoo.train_torch import device_and_amp, torch_net

        self.spec = spec
        device, amp = device_and_amp()
        models = []
        for path in checkpoint_paths:
            model = build_torch_model(dataclasses.replace(spec, encoder_weights=None))  # the checkpoint has them
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
            models.append(model.to(device).eval())
        self.net = torch_net(models, device, amp, input_stats(spec), spec.name)

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        return predict_photos(self.net, np.asarray(images), self.spec, PREDICT_BATCH)


def load_member(spec: MemberSpec, checkpoint_paths: list[Path]):
    """The trained member for `spec` from its fold checkpoints (several are averaged)."""
    if spec.arch == "avg_mask":
        return AvgMaskMember(spec, checkpoint_paths)
    if spec.framework == "keras":
        from zoo.keras_unet import KerasMember

        return KerasMember(spec, checkpoint_paths)
    return TorchMember(spec, checkpoint_paths)
