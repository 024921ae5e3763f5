"""Training one Keras U-Net member on one fold, top to bottom, resumable after any kill.

Same recipe and files as `zoo.train_torch.train_fold`: the shared `zoo.recipe` (seeds, LR schedule and
plateau, early stopping, best checkpoint by validation mean Dice on whole padded photos, the log rows),
the same training samples (`zoo.geometry.training_pair`: augmented, padded, cropped with the same
seeds), `train.loss` bce_dice or bce_logdice with `border_weight`, `clip_grad`, gradient
accumulation, `log.csv` with `LOG_COLUMNS`, TensorBoard events, a progress bar, GPU with mixed
precision when present. EMA, SWA, the Lovasz loss and pretrained encoders are PyTorch-only: a Keras
member asking for them is refused when the config loads (the Keras row of `zoo.families`).

Resume: after every epoch `last.npz` (weights, optimizer variables, state as JSON) is replaced
atomically in one file, so a kill at any moment leaves either the previous or the new epoch.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import numpy as np

from carvana.atomic import atomic_path
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from zoo.augment import build_augment
from zoo.board import N_OVERLAYS, EpochBoard
from zoo.fold_data import FoldData
from zoo.geometry import training_pair
from zoo.keras_losses import segmentation_loss
from zoo.keras_member import keras_net
from zoo.keras_models import build_keras_unet, load_keras
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
from zoo.spec import MemberSpec, TrainConfig
from zoo.torch_losses import border_px
from zoo.train_log import write_log


def train_keras_fold(
    spec: MemberSpec, data: FoldData, work_dir: Path, progress: bool = True, board_dir: Path | None = None
) -> Path:
    """Train `spec` on `data.train_idx`, validate on `data.val_idx`; return `work_dir/best.weights.h5`.

    `work_dir/last.npz` holds everything to resume (weights, optimizer variables, epoch, best score,
    plateau and early-stopping counters, learning rate, history); `log.csv` has one row per epoch.
    """
    tf, keras = load_keras()
    cfg = spec.train
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(fold_seed(cfg, data.fold))
    model = build_keras_unet(spec)
    if cfg.prior_bias:
        model.get_layer("logits").bias.assign([prior_logit(data.masks, data.train_idx)])
    optimizer = _build_optimizer(keras, cfg)
    optimizer.build(model.trainable_variables)
    last_path, best_path = work_dir / "last.npz", work_dir / "best.weights.h5"
    for stale in work_dir.glob(".*.tmp.weights.h5"):  # left by a kill during _save_best
        stale.unlink()
    state = new_state(cfg)
    if last_path.exists():
        state = _resume(last_path, model, optimizer)
    step = _train_step(tf, model, optimizer, cfg, border_px(spec.height))
    net = keras_net([model])
    board = EpochBoard(board_dir)
    while keep_training(cfg, state):
        epoch = state["epoch"] + 1
        lr = epoch_lr(cfg, state, epoch)
        optimizer.learning_rate.assign(lr)
        seed = epoch_seed(cfg, data.fold, epoch)
        order = np.random.default_rng(seed).permutation(len(data.train_idx))
        batches = _batches(spec, data, order, seed, build_augment(seed) if cfg.augment else None)
        loss, seconds, wait = _train_epoch(
            step,
            batches,
            cfg.accumulate,
            -(-len(order) // cfg.batch_size),
            desc=f"{spec.name} fold {data.fold} epoch {epoch}/{cfg.epochs}",
            progress=progress,
        )
        val_dice = evaluate(net, data.images, data.masks, data.val_idx, spec, cfg.batch_size)
        if end_epoch(cfg, state, epoch, lr, loss, val_dice, seconds, len(order), wait):
            _save_best(model, best_path)
        _save_last(last_path, state, model, optimizer)
        write_log(work_dir / "log.csv", state["history"])
        board.epoch(state["history"][-1], *overlay_maps(net, data.images, data.val_idx, spec, N_OVERLAYS))
    board.close()
    return best_path


def _build_optimizer(keras, cfg: TrainConfig):
    kind = keras.optimizers.Adam if cfg.optimizer == "adam" else keras.optimizers.RMSprop
    optimizer = kind(learning_rate=cfg.lr, global_clipnorm=cfg.clip_grad or None)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _train_step(tf, model, optimizer, cfg: TrainConfig, band_px: int):
    """Compiled `step(images uint8, masks uint8, apply: bool) -> loss`: adds the gradient of
    loss / accumulate to accumulators; with `apply` it also steps the optimizer and clears them."""
    accumulate = cfg.accumulate
    variables = model.trainable_variables
    sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables] if accumulate > 1 else []
    signature = [tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([None, None, None], tf.uint8)]

    def gradients(images, masks):
        with tf.GradientTape() as tape:
            logits = model(tf.cast(images, tf.float32) / 255.0, training=True)
            loss = segmentation_loss(logits, tf.cast(masks, tf.float32)[..., None], cfg, band_px)
            scaled = optimizer.scale_loss(loss / accumulate)
        return loss, tape.gradient(scaled, variables)

    def accumulate_gradient(images, masks):
        loss, grads = gradients(images, masks)
        for total, grad in zip(sums, grads):
            total.assign_add(grad)
        return loss

    def accumulate_and_apply(images, masks):
        loss, grads = gradients(images, masks)
        if sums:
            grads = [total + grad for total, grad in zip(sums, grads)]
        optimizer.apply(grads, variables)
        for total in sums:
            total.assign(tf.zeros_like(total))
        return loss

    # One trace each, whatever the batch size (the last batch is smaller).
    compiled = {
        apply: tf.function(fn, input_signature=signature, autograph=False)
        for apply, fn in ((False, accumulate_gradient), (True, accumulate_and_apply))
    }
    return lambda images, masks, apply: compiled[apply](images, masks)


def _batches(spec: MemberSpec, data: FoldData, order: np.ndarray, seed: int, augment):
    """Yield (images (B, h, w, 3) uint8, masks (B, h, w) uint8): training sample `order[j]` (a
    position in `data.train_idx`) prepared as the PyTorch loop prepares it, crops seeded alike."""
    for start in range(0, len(order), spec.train.batch_size):
        pairs = [
            training_pair(
                np.asarray(data.images[data.train_idx[i]]),
                np.asarray(data.masks[data.train_idx[i]]),
                spec.multiple,
                spec.train.crop,
                augment,
                np.random.default_rng([seed, int(i)]),
            )
            for i in order[start : start + spec.train.batch_size]
        ]
        yield np.stack([im for im, _ in pairs]), np.stack([m for _, m in pairs])


def _prefetch(iterable, depth: int = 2):
    """Iterate `iterable` in one background thread (order kept, so seeded augmentation stays
    reproducible); TensorFlow releases the GIL, so batches are prepared while the model computes."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in iterable:
                buffer.put(item)
            buffer.put(done)
        except BaseException as error:  # re-raised in the consumer
            buffer.put(error)

    threading.Thread(target=produce, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _train_epoch(step, batches, accumulate: int, n_batches: int, desc: str, progress: bool):
    """One pass; returns (mean loss, seconds, seconds spent waiting for batches). The last, partial
    group of an accumulation is applied at the end of the epoch, as the PyTorch loop does."""
    total, wait = 0.0, 0.0
    start = tick = time.perf_counter()
    bar = progress_bar(_prefetch(batches), total=n_batches, desc=desc, leave=False, disable=not progress, unit="batch")
    for index, (images, masks) in enumerate(bar, start=1):
        wait += time.perf_counter() - tick
        loss = step(images, masks, index % accumulate == 0 or index == n_batches)
        total += float(loss)
        bar.set_postfix(loss=f"{total / index:.4f}")
        tick = time.perf_counter()
    return total / max(n_batches, 1), time.perf_counter() - start, wait


def _save_best(model, path: Path) -> None:
    with atomic_path(path) as tmp:  # the temp name ends in .weights.h5, as Keras insists
        model.save_weights(tmp)


def _save_last(path: Path, state: dict, model, optimizer) -> None:
    arrays = {f"weight{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"optimizer{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, state=np.array(json.dumps(state)), **arrays)


def _resume(path: Path, model, optimizer) -> dict:
    with np.load(path) as saved:
        n_weights = sum(k.startswith("weight") for k in saved.files)
        n_optimizer = sum(k.startswith("optimizer") for k in saved.files)
        if n_weights != len(model.weights) or n_optimizer != len(optimizer.variables):
            raise WorkbenchError(f"{path} was written by another model or optimizer; delete it to train from scratch")
        model.set_weights([saved[f"weight{i}"] for i in range(n_weights)])
        for i, variable in enumerate(optimizer.variables):
            variable.assign(saved[f"optimizer{i}"])
        state = json.loads(str(saved["state"]))
    optimizer.learning_rate.assign(state["lr"])
    return state
