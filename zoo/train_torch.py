"""Training one PyTorch member on one fold, top to bottom, resumable after any kill.

Recipe (R1 and R2, made solid, plus the winners' options in `zoo.spec.TrainConfig`): the loss
`train.loss` names, albumentations, random crops of the padded photo (`train.crop`), Adam or RMSprop,
the learning-rate schedule, early stopping and best checkpoint of `zoo.recipe` (validation mean Dice
on whole padded photos), gradient accumulation and clipping, EMA and SWA weight averages, inputs
normalised with the encoder's statistics when it has pretrained weights, a CSV log and TensorBoard
events per epoch, a progress bar, CUDA with mixed precision when present.
Validation uses cars held out *of the training folds*, never the OOF fold it will predict.
"""

from __future__ import annotations

import json
import pickle
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader, Dataset

from carvana.atomic import atomic_path
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from zoo.augment import build_augment
from zoo.board import N_OVERLAYS, EpochBoard
from zoo.fold_data import FoldData, mixed_batches
from zoo.geometry import training_pair
from zoo.recipe import (
    end_epoch,
    epoch_lr,
    epoch_seed,
    evaluate,
    fold_seed,
    keep_training,
    new_state,
    overlay_maps,
)
from zoo.spec import MemberSpec
from zoo.torch_losses import border_px, segmentation_loss
from zoo.torch_member import device_and_amp, seed_everything, to_tensor, torch_net
from zoo.torch_models import build_torch_model, check_logits, input_stats
from zoo.train_log import write_log


class CropsDataset(Dataset):
    """Training samples (image (3, h, w) float32, mask (1, h, w) float32) from cached arrays:
    augmented, padded to the network's multiple and randomly cropped (`zoo.geometry.training_pair`),
    the crop of sample i seeded by (epoch seed, i) whatever the worker.

    With pseudo-labels, samples past the training photos are the fold's pseudo-labelled test photos
    (their label levels augmented like a mask), and every sample also has a (1, h, w) float32 pixel weight:
    0 where a pseudo-label is uncertain and left out of the loss, 1 elsewhere."""

    def __init__(self, spec: MemberSpec, data: FoldData, seed: int, augment) -> None:
        self.spec, self.data, self.seed, self.augment = spec, data, seed, augment
        self.stats = input_stats(spec)
        self.n_real = len(data.train_idx)

    def __len__(self) -> int:
        return self.n_real + (0 if self.data.pseudo is None else len(self.data.pseudo.images))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        pseudo = self.data.pseudo
        if i < self.n_real:
            index = self.data.train_idx[i]
            image, mask = np.asarray(self.data.images[index]), np.asarray(self.data.masks[index])
        else:
            assert pseudo is not None
            image, mask = np.asarray(pseudo.images[i - self.n_real]), np.asarray(pseudo.levels[i - self.n_real])
        image, mask = training_pair(
            image, mask, self.spec.multiple, self.spec.train.crop, self.augment, np.random.default_rng([self.seed, i])
        )
        if pseudo is None:
            return to_tensor(image, self.stats), torch.from_numpy(mask.astype(np.float32))[None]
        if i < self.n_real:
            target, weight = mask.astype(np.float32), np.ones(mask.shape, np.float32)
        else:
            target, weight = pseudo.target_and_weight(mask)
        return to_tensor(image, self.stats), torch.from_numpy(target)[None], torch.from_numpy(weight)[None]


def train_fold(
    spec: MemberSpec, data: FoldData, work_dir: Path, progress: bool = True, board_dir: Path | None = None
) -> Path:
    """Train `spec` on `data.train_idx`, validate on `data.val_idx`; return the best checkpoint.

    `work_dir/last.pt` holds everything to resume (model, optimizer, EMA and SWA averages, RNG state,
    the recipe's state); `work_dir/best.pt` the weights with the best validation mean Dice (the EMA
    weights with `train.ema`, the SWA average with `train.swa_epochs`); `log.csv` one row per epoch.
    """
    cfg = spec.train
    device, amp = device_and_amp()
    seed_everything(fold_seed(cfg, data.fold))
    model = build_torch_model(spec).to(device)
    stats = input_stats(spec)
    optimizer = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.RMSprop)(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    swa = AveragedModel(model) if cfg.swa_epochs else None
    state = new_state(cfg)
    last_path, best_path = work_dir / "last.pt", work_dir / "best.pt"
    if last_path.exists():
        state = _resume(last_path, model, optimizer, scaler, ema, swa)
    board = EpochBoard(board_dir)
    while keep_training(cfg, state):
        epoch = state["epoch"] + 1
        lr = epoch_lr(cfg, state, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loader = _loader(spec, data, epoch, device)
        loss, seconds, wait = _train_epoch(
            model,
            loader,
            optimizer,
            scaler,
            spec,
            device,
            amp,
            ema,
            desc=f"{spec.name} fold {data.fold} epoch {epoch}/{cfg.epochs}",
            progress=progress,
        )
        if swa is not None and epoch > cfg.epochs - cfg.swa_epochs:
            swa.update_parameters(model)
        judged = ema.module if ema is not None else model
        net = torch_net([judged], device, amp, stats, spec.name)
        val_dice = evaluate(net, data.images, data.masks, data.val_idx, spec, cfg.batch_size)
        if end_epoch(cfg, state, epoch, lr, loss, val_dice, seconds, len(data.train_idx), wait):
            _atomic_save({"model": judged.state_dict(), "epoch": epoch, "val_mean_dice": val_dice}, best_path)
        _save_last(last_path, state, model, optimizer, scaler, ema, swa)
        write_log(work_dir / "log.csv", state["history"])
        board.epoch(state["history"][-1], *overlay_maps(net, data.images, data.val_idx, spec, N_OVERLAYS))
    if swa is not None and swa.n_averaged.item() > 0 and not state.get("swa_val_dice"):
        _finish_swa(spec, data, swa, device, amp, stats, state, best_path)
        _save_last(last_path, state, model, optimizer, scaler, ema, swa)
    board.close()
    return best_path


def _loader(spec: MemberSpec, data: FoldData, epoch: int, device: torch.device) -> DataLoader:
    cfg = spec.train
    seed = epoch_seed(cfg, data.fold, epoch)
    dataset = CropsDataset(spec, data, seed, build_augment(seed) if cfg.augment else None)
    pin = device.type == "cuda"
    if data.pseudo is not None:  # each batch: training photos plus at most `pseudo_share` pseudo-labelled ones
        batches = mixed_batches(dataset.n_real, len(data.pseudo.images), cfg.batch_size, data.pseudo.share, seed)
        return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers, pin_memory=pin)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=cfg.num_workers,
        pin_memory=pin,
    )


def _finish_swa(
    spec: MemberSpec, data: FoldData, swa: AveragedModel, device, amp, stats, state: dict, best_path: Path
) -> None:
    """Recompute the SWA average's BatchNorm statistics on the training crops; it becomes the member."""
    update_bn(_loader(spec, data, 0, device), swa, device)
    net = torch_net([swa.module], device, amp, stats, spec.name)
    state["swa_val_dice"] = evaluate(net, data.images, data.masks, data.val_idx, spec, spec.train.batch_size)
    _atomic_save(
        {
            "model": swa.module.state_dict(),
            "epoch": state["epoch"],
            "val_mean_dice": state["swa_val_dice"],
            "swa_n_averaged": int(swa.n_averaged.item()),
        },
        best_path,
    )


def _train_epoch(model, loader, optimizer, scaler, spec, device, amp, ema, desc, progress):
    """One pass over `loader`; returns (mean loss, seconds, seconds spent waiting for data)."""
    cfg = spec.train
    model.train()
    total, n_batches, wait = 0.0, 0, 0.0
    start = tick = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    bar = progress_bar(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for step, (images, masks, *pixel_weights) in enumerate(bar, start=1):
        wait += time.perf_counter() - tick
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        weights = pixel_weights[0].to(device, non_blocking=True) if pixel_weights else None
        with torch.autocast(device.type, enabled=amp):
            logits = check_logits(model(images), images, spec.name)
            loss = segmentation_loss(logits, masks, cfg, border_px(spec.height), weights)
        scaler.scale(loss / cfg.accumulate).backward()
        if step % cfg.accumulate == 0 or step == len(loader):
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
        total, n_batches = total + loss.item(), n_batches + 1
        bar.set_postfix(loss=f"{total / n_batches:.4f}")
        tick = time.perf_counter()
    return total / max(n_batches, 1), time.perf_counter() - start, wait


def _resume(path: Path, model, optimizer, scaler, ema, swa) -> dict:
    """Load `last.pt` as weights only: a run folder may be a teammate's or a cluster's, and a pickle in it
    would run its code here. A checkpoint that is not tensors, numbers and strings is refused."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = json.loads(checkpoint["state"])
        model.load_state_dict(checkpoint["model"])
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as error:
        raise WorkbenchError(
            f"{path}: not a training checkpoint this workbench loads ({str(error).splitlines()[0][:120]}); it was "
            "written by an older version or by something else: delete it to train this fold from its start"
        ) from None
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    for name, average in (("ema", ema), ("swa", swa)):
        if average is not None:
            average.load_state_dict(checkpoint[name])
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", rng["numpy_keys"].numpy().astype(np.uint32), *rng["numpy_rest"]))
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    return state


def _save_last(path: Path, state: dict, model, optimizer, scaler, ema, swa) -> None:
    """Everything a resumed run needs, in types `torch.load(weights_only=True)` accepts (no pickled objects)."""
    _, keys, *rest = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_rest": [int(rest[0]), int(rest[1]), float(rest[2])],
        "python": list(random.getstate()),
    }
    averages = {name: avg.state_dict() for name, avg in (("ema", ema), ("swa", swa)) if avg is not None}
    _atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
            "state": json.dumps(state),
            **averages,
        },
        path,
    )


def _atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
