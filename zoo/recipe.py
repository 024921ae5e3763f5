"""The training recipe both loops (PyTorch and Keras) follow, framework-free: seeds, the learning
rate of every epoch (plateau, cosine or cyclic, after a linear warm-up), early stopping, the best
checkpoint by validation mean Dice computed on whole (padded) photos, and the epoch log's rows.

The state is a plain JSON-able dict, saved with every epoch's checkpoint, so a resumed run
continues exactly where the killed one stopped.
"""

from __future__ import annotations

import math

import numpy as np

from carvana.metric import dice
from zoo.geometry import crop_back, pad
from zoo.spec import MemberSpec, TrainConfig

PLATEAU_THRESHOLD, PLATEAU_EPS = 1e-4, 1e-8  # torch's ReduceLROnPlateau defaults (mode="max", rel)


def fold_seed(cfg: TrainConfig, fold: int) -> int:
    return cfg.seed + 1000 * fold


def prior_logit(masks: np.ndarray, idx: np.ndarray) -> float:
    """log(p / (1 - p)), p the car share of the masks at positions `idx` (N, h, w) 0/1, read one at a time and
    clipped to [0.001, 0.999]: where the output layer's bias starts with `train.prior_bias` (the prior
    initialisation of RetinaNet, Lin et al. 2017).

    With the bias at 0 a network starts at p = 0.5 on every pixel, background included, and a short run's few
    hundred steps move a bias little: one `keras_unet_64` fold model in three (seeds 0 and 2001 of six) ended its
    12 demo epochs with the background at p 0.1-0.25, and a stacker fitted on the other folds misread it
    (bench/RESULTS.md, "A prior bias for the output layer")."""
    share = float(np.mean([np.count_nonzero(masks[i]) / masks[i].size for i in idx])) if len(idx) else 0.5
    share = min(max(share, 1e-3), 1 - 1e-3)
    return math.log(share / (1 - share))


def epoch_seed(cfg: TrainConfig, fold: int, epoch: int) -> int:
    """Seeds the epoch's augmentation, crops and order alike in both loops."""
    return fold_seed(cfg, fold) + epoch


def new_state(cfg: TrainConfig) -> dict:
    """The recipe's state before epoch 1."""
    return {
        "epoch": 0,
        "best": -1.0,
        "bad_epochs": 0,
        "lr": cfg.lr,
        "plateau_best": float("-inf"),
        "plateau_bad": 0,
        "history": [],
    }


def keep_training(cfg: TrainConfig, state: dict) -> bool:
    return state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.early_stop_patience


def epoch_lr(cfg: TrainConfig, state: dict, epoch: int) -> float:
    """The learning rate to train `epoch` (1-based) with."""
    if epoch <= cfg.warmup_epochs:
        return cfg.lr * epoch / (cfg.warmup_epochs + 1)
    if cfg.schedule == "plateau":
        return state["lr"]
    t = epoch - cfg.warmup_epochs - 1  # epochs since the warm-up
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t / max(1, cfg.epochs - cfg.warmup_epochs)))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (t % cfg.cycle_epochs) / cfg.cycle_epochs))  # restarts


def plateau_step(state: dict, score: float, factor: float, patience: int) -> float:
    """ReduceLROnPlateau(mode="max") as torch does it; updates the counters in `state`, returns the lr."""
    if score > state["plateau_best"] * (1 + PLATEAU_THRESHOLD):
        state["plateau_best"], state["plateau_bad"] = score, 0
    else:
        state["plateau_bad"] += 1
    if state["plateau_bad"] > patience:
        state["plateau_bad"] = 0
        if state["lr"] - state["lr"] * factor > PLATEAU_EPS:
            return state["lr"] * factor
    return state["lr"]


def end_epoch(
    cfg: TrainConfig,
    state: dict,
    epoch: int,
    lr: float,
    loss: float,
    val_dice: float,
    seconds: float,
    n_images: int,
    wait: float,
) -> bool:
    """Record a finished epoch in `state` (plateau, best, early stopping, log row); True if it is the
    best so far, so the caller saves its weights as the best checkpoint."""
    if cfg.schedule == "plateau" and epoch > cfg.warmup_epochs:
        state["lr"] = plateau_step(state, val_dice, cfg.plateau_factor, cfg.plateau_patience)
    improved = val_dice > state["best"]
    state.update(epoch=epoch, best=max(val_dice, state["best"]), bad_epochs=0 if improved else state["bad_epochs"] + 1)
    state["history"].append(
        [
            epoch,
            round(loss, 5),
            round(val_dice, 5),
            lr,
            round(seconds, 2),
            round(n_images / max(seconds, 1e-9), 2),
            round(wait / max(seconds, 1e-9), 4),
        ]
    )
    return improved


def evaluate(
    net, images: np.ndarray, masks: np.ndarray, indices: np.ndarray, spec: MemberSpec, batch_size: int
) -> float:
    """Mean per-image Dice at 0.5 of `net` ((B, h, w, 3) uint8 -> (B, h, w) probabilities) over the
    whole photos at `indices`, padded as in prediction and cropped back (1.0 where both are empty)."""
    scores = []
    for start in range(0, len(indices), batch_size):
        batch = np.sort(indices[start : start + batch_size])
        photos = np.asarray(images[batch])
        height, width = photos.shape[1:3]
        proba = crop_back(net(pad(photos, spec.multiple)), height, width, spec.multiple)
        scores += [dice(p > 0.5, t > 0) for p, t in zip(proba, np.asarray(masks[batch]))]
    return float(np.mean(scores)) if scores else 0.0


def overlay_maps(
    net, images: np.ndarray, indices: np.ndarray, spec: MemberSpec, n: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The first `n` photos at `indices` (sorted) and their predicted maps, for TensorBoard overlays;
    (None, None) when there are none."""
    if not len(indices):
        return None, None
    photos = np.asarray(images[np.sort(indices)[:n]])
    height, width = photos.shape[1:3]
    return photos, crop_back(net(pad(photos, spec.multiple)), height, width, spec.multiple)
