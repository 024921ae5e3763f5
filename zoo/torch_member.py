"""A trained PyTorch member: its fold models (state dicts in `best.pt`) averaged, predicted as `zoo.predict`
says (padded, whole or by tiles, with the member's TTA views); and the tensors in and probabilities out
that the training loop validates with too.

On CUDA the photos travel as uint8 from pinned memory (a quarter of float32's bytes, copied asynchronously),
are scaled and normalised on the device, and run in the channels-last layout under autocast (bfloat16 where
the card has it, float16 otherwise); `predict.compile: true` compiles the fold models. A whole-photo
member without resizing is padded, flipped and shifted on the device too (`predict_on_device`). On CPU
every map is made exactly as before (NumPy padding and views, float32), which the tests compare against.

Nothing here trains: predicting maps imports neither `zoo.train_torch` nor its augmentation library.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from zoo.geometry import pad_box, padded_size
from zoo.predict import predict_photos, tta_views
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


def device_tensor(images: np.ndarray, device: torch.device, stats: Stats = None) -> torch.Tensor:
    """(..., h, w, 3) uint8 -> (..., 3, h, w) float32 on `device`, as `to_tensor` makes it. Off the CPU the
    uint8 photos are pinned and copied asynchronously, then scaled and normalised there."""
    if device.type == "cpu":
        return to_tensor(images, stats)
    pinned = torch.from_numpy(np.ascontiguousarray(images)).pin_memory()
    tensor = pinned.to(device, non_blocking=True).float().div_(255)
    if stats is not None:
        tensor = (tensor - torch.tensor(stats[0], device=device)) / torch.tensor(stats[1], device=device)
    return tensor.movedim(-1, -3)


def torch_net(
    models: list, device: torch.device, amp: bool, stats: Stats, name: str = "network", channels_last: bool = False
):
    """`net((B, h, w, 3) uint8) -> (B, h, w) float32`: the models' mean sigmoid, in eval mode.
    `name` (the member's) names it when a model's output is not (B, 1, h, w) logits; `channels_last` feeds
    the models (already converted by the caller) that layout."""

    def net(batch: np.ndarray) -> np.ndarray:
        return mean_proba(models, device_tensor(batch, device, stats), amp, name, channels_last).cpu().numpy()

    return net


def mean_proba(models: list, x: torch.Tensor, amp: bool, name: str, channels_last: bool = False) -> torch.Tensor:
    """(B, 3, h, w) float32 on the models' device -> (B, h, w) float32: their mean sigmoid, in eval mode."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=amp):
        logits = [check_logits(model.eval()(x), x, name).float() for model in models]
        return torch.stack([torch.sigmoid(z)[:, 0] for z in logits]).mean(0)


def amp_dtype(device: torch.device) -> torch.dtype:
    """Autocast's type: bfloat16 on a CUDA card that has it (no overflow, no scaler), float16 on older cards,
    bfloat16 on the CPU (where autocast is off unless asked for)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def device_and_amp() -> tuple[torch.device, bool]:
    """CUDA with mixed precision when present, CPU otherwise."""
    if torch.cuda.is_available():
        return torch.device("cuda"), True
    return torch.device("cpu"), False


def member_net(spec: MemberSpec, models: list):
    """`torch_net` of `spec`'s models on the best device, with its encoder's input statistics."""
    device, amp = device_and_amp()
    return torch_net(
        prediction_models(models, device, spec.predict.compile),
        device,
        amp,
        input_stats(spec),
        spec.name,
        device.type == "cuda",
    )


def prediction_models(models: list, device: torch.device, compiled: bool = False) -> list:
    """The models on `device` in eval mode: channels-last on CUDA, compiled when `compiled` (`predict.compile`)."""
    models = [model.to(device).eval() for model in models]
    if device.type == "cuda":
        models = [model.to(memory_format=torch.channels_last) for model in models]
    if compiled:
        models = [torch.compile(model) for model in models]
    return models


def predict_on_device(
    models: list, images: np.ndarray, spec: MemberSpec, device: torch.device, amp: bool, batch_size: int
) -> np.ndarray:
    """`zoo.predict.predict_photos` for a whole-photo member at the photos' own size, with the photos uploaded
    once and padded, flipped, shifted, averaged and cropped on `device`: (N, H, W, 3) uint8 -> (N, H, W) float32."""
    height, width = images.shape[1:3]
    top, bottom, left, right = pad_box(height, width, spec.multiple)
    views = tta_views(spec.predict.tta)
    maps = []
    for start in range(0, len(images), batch_size):
        x = device_tensor(images[start : start + batch_size], device, input_stats(spec))
        if top or bottom or left or right:  # reflection without the edge pixel, as zoo.geometry.pad
            x = torch.nn.functional.pad(x, (left, right, top, bottom), mode="reflect")
        total = torch.zeros((x.shape[0], *padded_size(height, width, spec.multiple)), device=device)
        for flip, shift in views:
            view = x.flip(-1) if flip else x
            view = view.roll(shift, dims=-2) if shift else view
            proba = mean_proba(models, view, amp, spec.name, device.type == "cuda")
            proba = proba.roll(-shift, dims=-2) if shift else proba
            total += proba.flip(-1) if flip else proba
        cropped = (total / len(views))[:, top : top + height, left : left + width]
        maps.append(cropped.clamp_(0.0, 1.0).cpu().numpy())
    return np.concatenate(maps)


class TorchMember:
    """PyTorch fold models averaged: `predict_proba(images (N, H, W, 3) uint8) -> (N, H, W) float32`."""

    def __init__(self, spec: MemberSpec, checkpoint_paths: list[Path]) -> None:
        self.spec = spec
        models = []
        for path in checkpoint_paths:
            model = build_torch_model(dataclasses.replace(spec, encoder_weights=None))  # the checkpoint has them
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
            models.append(model)
        self.device, self.amp = device_and_amp()
        self.models = prediction_models(models, self.device, spec.predict.compile)
        stats, channels_last = input_stats(spec), self.device.type == "cuda"
        self.net = torch_net(self.models, self.device, self.amp, stats, spec.name, channels_last)

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        images = np.asarray(images)
        whole = self.spec.predict.tile is None and images.shape[1:3] == (self.spec.height, self.spec.width)
        if self.device.type == "cuda" and whole:  # on the CPU, NumPy's path: the maps every test compares with
            return predict_on_device(self.models, images, self.spec, self.device, self.amp, PREDICT_BATCH)
        return predict_photos(self.net, images, self.spec, PREDICT_BATCH)


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and PyTorch's generators seeded alike (training loops and the CNN stacker)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
