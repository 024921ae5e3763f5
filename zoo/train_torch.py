"""Training one PyTorch member on one fold, top to bottom, resumable after any kill.

Recipe (R1 and R2, made solid): BCE + (1 - soft Dice) loss, albumentations, Adam or RMSprop,
ReduceLROnPlateau and early stopping on validation mean Dice, best checkpoint by that score,
gradient accumulation, a CSV log per epoch, a progress bar, CUDA with mixed precision when present.
Validation uses cars held out *of the training folds*, never the OOF fold it will predict.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from carvana.atomic import atomic_path
from carvana.progress import progress_bar
from zoo.augment import build_augment
from zoo.fold_data import FoldData
from zoo.spec import MemberSpec
from zoo.torch_models import build_torch_model
from zoo.train_log import write_log


class MapsDataset(Dataset):
    """(image (3, h, w) float32 in [0, 1], mask (1, h, w) float32) pairs from cached arrays."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, indices: np.ndarray, augment=None) -> None:
        self.images, self.masks, self.indices, self.augment = images, masks, indices, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = np.asarray(self.images[self.indices[i]]), np.asarray(self.masks[self.indices[i]])
        if self.augment is not None:
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return to_tensor(image), torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(..., h, w, 3) uint8 -> (..., 3, h, w) float32 in [0, 1]."""
    tensor = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255)  # a copy: memmaps are read-only
    return tensor.movedim(-1, -3)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + (1 - soft Dice), the soft Dice averaged over the images of the batch."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    proba = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    soft_dice = (2 * (proba * target).sum(1) + 1) / (proba.sum(1) + target.sum(1) + 1)
    return bce + (1 - soft_dice.mean())


def device_and_amp() -> tuple[torch.device, bool]:
    """CUDA with mixed precision when present, CPU otherwise."""
    if torch.cuda.is_available():
        return torch.device("cuda"), True
    return torch.device("cpu"), False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_fold(spec: MemberSpec, data: FoldData, work_dir: Path, progress: bool = True) -> Path:
    """Train `spec` on `data.train_idx`, validate on `data.val_idx`; return the best checkpoint.

    `work_dir/last.pt` holds everything to resume (model, optimizer, scheduler, epoch, RNG state,
    history); `work_dir/best.pt` the weights with the best validation mean Dice; `log.csv` one row
    per epoch.
    """
    cfg = spec.train
    device, amp = device_and_amp()
    seed_everything(cfg.seed + 1000 * data.fold)
    model = build_torch_model(spec).to(device)
    optimizer = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.RMSprop)(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                                           patience=cfg.plateau_patience)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    state = {"epoch": 0, "best": -1.0, "bad_epochs": 0, "history": []}
    last_path, best_path = work_dir / "last.pt", work_dir / "best.pt"
    if last_path.exists():
        state = _resume(last_path, model, optimizer, scheduler, scaler)
    val_set = MapsDataset(data.images, data.masks, data.val_idx)
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.early_stop_patience:
        epoch = state["epoch"] + 1
        augment = build_augment(cfg.seed + 1000 * data.fold + epoch) if cfg.augment else None
        train_set = MapsDataset(data.images, data.masks, data.train_idx, augment)
        generator = torch.Generator().manual_seed(cfg.seed + 1000 * data.fold + epoch)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                            num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
        loss, seconds, wait = _train_epoch(model, loader, optimizer, scaler, cfg.accumulate, device, amp,
                                           desc=f"{spec.name} fold {data.fold} epoch {epoch}/{cfg.epochs}", progress=progress)
        val_dice = evaluate(model, val_set, cfg.batch_size, device, amp)
        scheduler.step(val_dice)
        improved = val_dice > state["best"]
        if improved:
            _atomic_save({"model": model.state_dict(), "epoch": epoch, "val_mean_dice": val_dice}, best_path)
        state.update(epoch=epoch, best=max(val_dice, state["best"]), bad_epochs=0 if improved else state["bad_epochs"] + 1)
        state["history"].append([epoch, round(loss, 5), round(val_dice, 5), optimizer.param_groups[0]["lr"],
                                 round(seconds, 2), round(len(train_set) / seconds, 2), round(wait / seconds, 4)])
        _save_last(last_path, state, model, optimizer, scheduler, scaler)
        write_log(work_dir / "log.csv", state["history"])
    return best_path


def _train_epoch(model, loader, optimizer, scaler, accumulate, device, amp, desc, progress):
    """One pass over `loader`; returns (mean loss, seconds, seconds spent waiting for data)."""
    model.train()
    total, n_batches, wait = 0.0, 0, 0.0
    start = tick = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    bar = progress_bar(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for step, (images, masks) in enumerate(bar, start=1):
        wait += time.perf_counter() - tick
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            loss = bce_dice_loss(model(images), masks)
        scaler.scale(loss / accumulate).backward()
        if step % accumulate == 0 or step == len(loader):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        total, n_batches = total + loss.item(), n_batches + 1
        bar.set_postfix(loss=f"{total / n_batches:.4f}")
        tick = time.perf_counter()
    return total / max(n_batches, 1), time.perf_counter() - start, wait


@torch.no_grad()
def evaluate(model, dataset: MapsDataset, batch_size: int, device, amp) -> float:
    """Mean per-image Dice at threshold 0.5 on `dataset` (1.0 for an image where both are empty)."""
    model.eval()
    scores = []
    for images, masks in DataLoader(dataset, batch_size=batch_size):
        with torch.autocast(device.type, enabled=amp):
            pred = model(images.to(device)) > 0
        truth = masks.to(device) > 0.5
        inter = (pred & truth).flatten(1).sum(1).float()
        total = pred.flatten(1).sum(1).float() + truth.flatten(1).sum(1).float()
        scores.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)).cpu())
    return float(torch.cat(scores).mean()) if scores else 0.0


def _resume(path: Path, model, optimizer, scheduler, scaler) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    np.random.set_state(checkpoint["rng"]["numpy"])
    random.setstate(checkpoint["rng"]["python"])
    return checkpoint["state"]


def _save_last(path: Path, state: dict, model, optimizer, scheduler, scaler) -> None:
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "scaler": scaler.state_dict(), "rng": rng, "state": state}, path)


def _atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
