"""A trained PyTorch member: its fold models (state dicts in `best.pt`) averaged, predicted as `zoo.predict`
says (padded, whole or by tiles, with the member's TTA views); and the tensors in and probabilities out
that the training loop validates with too.

Nothing here trains: predicting maps imports neither `zoo.train_torch` nor its augmentation library.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from zoo.predict import predict_photos
from zoo.spec import MemberSpec
from zoo.torch_models import build_torch_model, check_logits, input_stats

PREDICT_BATCH = 8
Stats = tuple[tuple[float, ...], tuple[float, ...]] | None


def to_tensor(images: np.ndarray, stats: Stats = None) -> torch.Tensor:
    """(..., h, w, 3) uint8 -> (..., 3, h, w) float32 in [0, 1], or normalised by (mean, std)."""
    tensor = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255)  # a copy: memmaps are read-only
    if stats is not None:
        tensor = (tensor - torch.tensor(stats[0])) / torch.tensor(stats[1])
    return tensor.movedim(-1, -3)


def torch_net(models: list, device: torch.device, amp: bool, stats: Stats, name: str = "network"):
    """`net((B, h, w, 3) uint8) -> (B, h, w) float32`: the models' mean sigmoid, in eval mode.
    `name` (the member's) names it when a model's output is not (B, 1, h, w) logits."""

    def net(batch: np.ndarray) -> np.ndarray:
        x = to_tensor(batch, stats).to(device)
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            logits = [check_logits(model.eval()(x), x, name).float() for model in models]
            proba = torch.stack([torch.sigmoid(z)[:, 0] for z in logits]).mean(0)
        return proba.cpu().numpy()

    return net


def device_and_amp() -> tuple[torch.device, bool]:
    """CUDA with mixed precision when present, CPU otherwise."""
    if torch.cuda.is_available():
        return torch.device("cuda"), True
    return torch.device("cpu"), False


def member_net(spec: MemberSpec, models: list):
    """`torch_net` of `spec`'s models on the best device, with its encoder's input statistics."""
    device, amp = device_and_amp()
    return torch_net([model.to(device) for model in models], device, amp, input_stats(spec), spec.name)


class TorchMember:
    """PyTorch fold models averaged: `predict_proba(images (N, H, W, 3) uint8) -> (N, H, W) float32`."""

    def __init__(self, spec: MemberSpec, checkpoint_paths: list[Path]) -> None:
        self.spec = spec
        models = []
        for path in checkpoint_paths:
            model = build_torch_model(dataclasses.replace(spec, encoder_weights=None))  # the checkpoint has them
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
            models.append(model)
        self.net = member_net(spec, models)

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        return predict_photos(self.net, np.asarray(images), self.spec, PREDICT_BATCH)


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and PyTorch's generators seeded alike (training loops and the CNN stacker)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
