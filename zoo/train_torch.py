"""Training one PyTorch member on one fold, top to bottom, resumable after any kill.

Recipe (R1 and R2, made solid, plus the winners' options in `zoo.spec.TrainConfig`): the loss
`train.loss` names, albumentations, random crops of the padded photo (`train.crop`), Adam or RMSprop,
the learning-rate schedule, early stopping and best checkpoint of `zoo.recipe` (validation mean Dice
on whole padded photos), gradient accumulation and clipping, EMA and SWA weight averages, inputs
normalised with the encoder's statistics when it has pretrained weights, a CSV log and TensorBoard
events per epoch, a progress bar. The machine settings of `TrainConfig` (`zoo.train_device`): on CUDA
loader workers kept from epoch to epoch, pinned memory and non-blocking copies, channels-last, autocast in
bfloat16 where the card has it (float16 with a gradient scaler otherwise), optionally torch.compile; on the
CPU the main process loads and float32 trains, as the demo's numbers were made.
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

from carvana.atomic import atomic_path
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from zoo.board import N_OVERLAYS, EpochBoard
from zoo.fold_data import FoldData
from zoo.recipe import (
    end_epoch,
    epoch_lr,
    epoch_seed,
    evaluate,
    fold_seed,
    keep_training,
    new_state,
    overlay_maps,
    prior_logit,
)
from zoo.spec import MemberSpec
from zoo.torch_losses import border_px, segmentation_loss
from zoo.torch_member import amp_dtype, device_and_amp, seed_everything, torch_net
from zoo.torch_models import build_torch_model, check_logits, input_stats, set_output_bias
from zoo.train_batches import train_loader
from zoo.train_device import DeviceSettings, resolve_train_device
from zoo.train_log import write_log


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
    run = resolve_train_device(cfg, device.type, str(amp_dtype(device)).removeprefix("torch."))
    seed_everything(fold_seed(cfg, data.fold))
    model = build_torch_model(spec).to(device)
    if cfg.prior_bias:
        set_output_bias(model, prior_logit(data.masks, data.train_idx))
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    stepped = torch.compile(model) if run.compile else model  # checkpoints keep the plain module's state_dict
    stats = input_stats(spec)
    optimizer = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.RMSprop)(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=run.scaled)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    swa = AveragedModel(model) if cfg.swa_epochs else None
    state = new_state(cfg)
    last_path, best_path = work_dir / "last.pt", work_dir / "best.pt"
    if last_path.exists():
        state = _resume(last_path, model, optimizer, scaler, ema, swa)
    board = EpochBoard(board_dir)
    loader, batches = train_loader(spec, data, run)  # one for every epoch: persistent workers stay up
    while keep_training(cfg, state):
        epoch = state["epoch"] + 1
        lr = epoch_lr(cfg, state, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches.seed = epoch_seed(cfg, data.fold, epoch)
        loss, seconds, wait = _train_epoch(
            stepped,
            model,
            loader,
            optimizer,
            scaler,
            spec,
            device,
            run,
            ema,
            desc=f"{spec.name} fold {data.fold} epoch {epoch}/{cfg.epochs}",
            progress=progress,
        )
        if swa is not None and epoch > cfg.epochs - cfg.swa_epochs:
            swa.update_parameters(model)
        judged = ema.module if ema is not None else model
        net = torch_net([judged], device, amp, stats, spec.name, run.channels_last)
        val_dice = evaluate(net, data.images, data.masks, data.val_idx, spec, cfg.batch_size)
        if end_epoch(cfg, state, epoch, lr, loss, val_dice, seconds, len(data.train_idx), wait):
            _atomic_save({"model": judged.state_dict(), "epoch": epoch, "val_mean_dice": val_dice}, best_path)
        _save_last(last_path, state, model, optimizer, scaler, ema, swa)
        write_log(work_dir / "log.csv", state["history"])
        board.epoch(state["history"][-1], *overlay_maps(net, data.images, data.val_idx, spec, N_OVERLAYS))
    if swa is not None and swa.n_averaged.item() > 0 and not state.get("swa_val_dice"):
        _finish_swa(spec, data, swa, device, amp, run, state, best_path)
        _save_last(last_path, state, model, optimizer, scaler, ema, swa)
    board.close()
    return best_path


def _finish_swa(
    spec: MemberSpec, data: FoldData, swa: AveragedModel, device, amp, run: DeviceSettings, state: dict, best_path: Path
) -> None:
    """Recompute the SWA average's BatchNorm statistics on the training crops; it becomes the member."""
    update_bn(train_loader(spec, data, run, persistent=False)[0], swa, device)
    net = torch_net([swa.module], device, amp, input_stats(spec), spec.name, run.channels_last)
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


def _train_epoch(stepped, model, loader, optimizer, scaler, spec, device, run: DeviceSettings, ema, desc, progress):
    """One pass over `loader`, the batches through `stepped` (`model`, or its compiled form); returns (mean loss,
    seconds, seconds spent waiting for data)."""
    cfg = spec.train
    model.train()
    layout = torch.channels_last if run.channels_last else torch.contiguous_format
    autocast = {"dtype": getattr(torch, run.precision), "enabled": run.precision != "float32"}
    total, n_batches, wait = 0.0, 0, 0.0
    start = tick = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    bar = progress_bar(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for step, (images, masks, *pixel_weights) in enumerate(bar, start=1):
        wait += time.perf_counter() - tick
        images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
        masks = masks.to(device, non_blocking=True)
        weights = pixel_weights[0].to(device, non_blocking=True) if pixel_weights else None
        with torch.autocast(device.type, **autocast):
            logits = check_logits(stepped(images), images, spec.name)
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
