"""The Keras U-Net member: model shape, one fold's training (log, checkpoints, accumulation),
exact resume (also after SIGKILL), and prediction with resizing, hflip TTA and model averaging."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zoo.fold_data import FoldData
from zoo.keras_member import KerasMember
from zoo.keras_models import build_keras_unet
from zoo.recipe import plateau_step
from zoo.spec import MemberSpec, PredictConfig, TrainConfig
from zoo.train_keras import train_keras_fold
from zoo.train_log import LOG_COLUMNS

# Keras's own save_weights trips NumPy 2's __array__ deprecation; nothing here to act on
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 96
# batch 4, accumulate 2 on 16 training images: 4 batches, optimizer steps after batches 2 and 4
SPEC = MemberSpec("keras_unet_test", "keras_unet", H, W, depth=2, filters=8,
                  train=TrainConfig(epochs=1, batch_size=4, accumulate=2, optimizer="rmsprop", lr=1e-3))


def ellipse_data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, H, W, 3) uint8, masks (n, H, W) uint8): a coloured ellipse on a bright studio."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    images, masks = np.empty((n, H, W, 3), np.uint8), np.empty((n, H, W), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.4, 0.6) * H, rng.uniform(0.35, 0.65) * W
        inside = ((yy - cy) / (rng.uniform(0.2, 0.3) * H)) ** 2 + ((xx - cx) / (rng.uniform(0.25, 0.35) * W)) ** 2 <= 1
        image = rng.normal(rng.integers(200, 240), 8, (H, W, 3))
        image[inside] = rng.integers(0, 160, 3) + rng.normal(0, 8, (inside.sum(), 3))
        images[i], masks[i] = np.clip(image, 0, 255), inside
    return images, masks


def fold_data(images: np.ndarray, masks: np.ndarray) -> FoldData:
    idx = np.arange(len(images))
    return FoldData(0, [f"{i:012x}_01.jpg" for i in idx], images, masks, idx[:16], idx[16:20], idx[20:])


def read_log(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def optimizer_iterations(last_path: Path) -> int:
    with np.load(last_path) as saved:
        return int(saved["optimizer0"])  # Keras optimizers list `iterations` first


@pytest.fixture(scope="module")
def data() -> FoldData:
    return fold_data(*ellipse_data())


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory) -> Path:
    work_dir = tmp_path_factory.mktemp("keras_one_epoch")
    train_keras_fold(SPEC, data, work_dir, progress=False)
    return work_dir


def test_model_maps_an_image_to_one_logit_per_pixel():
    model = build_keras_unet(dataclasses.replace(SPEC, depth=3))
    assert model.input_shape == (None, None, None, 3)  # fully convolutional: padded photos, crops, tiles
    out = np.asarray(model(np.zeros((2, H, W, 3), np.float32), training=False))
    assert out.shape == (2, H, W, 1) and out.dtype == np.float32


def test_plateau_step_matches_torch():
    torch = pytest.importorskip("torch")
    scores = [0.5, 0.6, 0.6, 0.60001, 0.59, 0.58, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.71]
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    state = {"lr": 1e-3, "plateau_best": float("-inf"), "plateau_bad": 0}
    ours, theirs = [], []
    for score in scores:
        scheduler.step(score)
        theirs.append(optimizer.param_groups[0]["lr"])
        state["lr"] = plateau_step(state, score, 0.5, 2)
        ours.append(state["lr"])
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert len(set(theirs)) >= 3  # the sequence does reduce, twice


def test_accumulating_two_half_batches_steps_like_one_full_batch():
    import keras

    from zoo.keras_models import load_keras
    from zoo.train_keras import _train_step

    tf, _ = load_keras()

    def fresh():  # no batch norm: then the gradient of the batch mean loss splits exactly
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(1, 3, padding="same")])
        model.set_weights([np.full((3, 3, 3, 1), 0.01, np.float32), np.zeros(1, np.float32)])
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
        return model, optimizer

    rng = np.random.default_rng(0)
    images, masks = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), rng.integers(0, 2, (4, 8, 8), dtype=np.uint8)
    split, split_optimizer = fresh()
    step = _train_step(tf, split, split_optimizer, TrainConfig(accumulate=2), 2)
    step(images[:2], masks[:2], False)
    np.testing.assert_array_equal(split.get_weights()[1], 0)  # nothing applied yet
    step(images[2:], masks[2:], True)
    whole, whole_optimizer = fresh()
    _train_step(tf, whole, whole_optimizer, TrainConfig(accumulate=1), 2)(images, masks, True)
    assert np.abs(whole.get_weights()[1]).max() > 1e-4
    for ours, theirs in zip(split.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_one_epoch_writes_log_best_and_last(one_epoch, data):
    rows = read_log(one_epoch / "log.csv")
    assert rows[0] == LOG_COLUMNS and len(rows) == 2
    row = dict(zip(rows[0], rows[1]))
    assert row["epoch"] == "1" and float(row["lr"]) == pytest.approx(1e-3)
    assert 0 <= float(row["val_mean_dice"]) <= 1 and math.isfinite(float(row["train_loss"]))
    assert float(row["images_per_s"]) == pytest.approx(16 / float(row["seconds"]), rel=0.02)
    assert 0 <= float(row["data_wait_share"]) < 1
    assert (one_epoch / "best.weights.h5").stat().st_size > 0
    assert optimizer_iterations(one_epoch / "last.npz") == 2  # 4 batches, accumulate 2
    assert not list(one_epoch.glob("*.tmp*"))


def test_predict_proba_resizes_and_stays_in_unit_interval(one_epoch):
    member = KerasMember(SPEC, [one_epoch / "best.weights.h5"])
    images = ellipse_data(3, seed=1)[0]
    big = np.stack([np.repeat(np.repeat(img, 2, 0), 2, 1) for img in images])[:, :100, :150]  # 100 x 150
    proba = member.predict_proba(big)
    assert proba.shape == (3, 100, 150) and proba.dtype == np.float32
    assert 0 <= proba.min() and proba.max() <= 1 and proba.std() > 0


def test_hflip_tta_makes_predictions_flip_equivariant(one_epoch):
    images = ellipse_data(2, seed=2)[0]
    flipped = np.ascontiguousarray(images[:, :, ::-1])
    member = KerasMember(SPEC, [one_epoch / "best.weights.h5"])
    np.testing.assert_allclose(member.predict_proba(flipped), member.predict_proba(images)[:, :, ::-1], atol=1e-5)
    plain = KerasMember(dataclasses.replace(SPEC, predict=PredictConfig(tta=())),
                        [one_epoch / "best.weights.h5"])
    assert np.abs(plain.predict_proba(flipped) - plain.predict_proba(images)[:, :, ::-1]).max() > 1e-4


def test_plateau_and_early_stopping_act_on_a_score_that_stops_improving(data, tmp_path):
    # No validation cars: the score is 0.0 every epoch, so only epoch 1 "improves"
    stalled = dataclasses.replace(data, train_idx=data.train_idx[:4], val_idx=data.val_idx[:0])
    spec = dataclasses.replace(SPEC, train=dataclasses.replace(
        SPEC.train, epochs=6, plateau_patience=0, plateau_factor=0.5, early_stop_patience=2))
    train_keras_fold(spec, stalled, tmp_path, progress=False)
    rows = read_log(tmp_path / "log.csv")[1:]
    assert [r[0] for r in rows] == ["1", "2", "3"]  # stopped after 2 epochs without improvement
    assert [float(r[3]) for r in rows] == pytest.approx([1e-3, 1e-3, 5e-4])  # the rate each epoch trained with
    with np.load(tmp_path / "last.npz") as saved:
        assert float(saved["optimizer1"]) == pytest.approx(5e-4)  # the optimizer's own learning rate
        assert json.loads(str(saved["state"]))["lr"] == pytest.approx(2.5e-4)  # epoch 4's, had it run


@pytest.mark.slow
def test_resume_continues_without_redoing_an_epoch_and_averages_models(one_epoch, data, tmp_path):
    work_dir = tmp_path / "run"
    shutil.copytree(one_epoch, work_dir)
    first = read_log(one_epoch / "log.csv")
    spec = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, epochs=2))
    best = train_keras_fold(spec, data, work_dir, progress=False)
    rows = read_log(work_dir / "log.csv")
    assert [r[0] for r in rows[1:]] == ["1", "2"] and rows[:2] == first
    assert float(rows[2][1]) < float(rows[1][1])  # it learns: the training loss falls
    assert optimizer_iterations(work_dir / "last.npz") == 4  # optimizer state carried over
    train_keras_fold(spec, data, work_dir, progress=False)  # finished: a no-op
    assert read_log(work_dir / "log.csv") == rows

    images = ellipse_data(2, seed=3)[0]
    paths = [one_epoch / "best.weights.h5", best]
    single = [KerasMember(SPEC, [p]).predict_proba(images) for p in paths]
    both = KerasMember(SPEC, paths).predict_proba(images)
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, atol=1e-6)


KILL_EPOCHS = 3
KILL_SPEC = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, epochs=KILL_EPOCHS, accumulate=1))
TRAIN_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {repo!r})
from tests.test_keras_unet import KILL_SPEC, fold_data
from zoo.train_keras import train_keras_fold
folder = Path({folder!r})
train_keras_fold(KILL_SPEC, fold_data(np.load(folder / "images.npy"), np.load(folder / "masks.npy")), folder / "run",
                 progress=False)
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches_an_uninterrupted_run(data, tmp_path):
    np.save(tmp_path / "images.npy", np.asarray(data.images))
    np.save(tmp_path / "masks.npy", np.asarray(data.masks))
    script = TRAIN_SCRIPT.format(repo=str(REPO), folder=str(tmp_path))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 240
    while not (run_dir / "last.npz").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # into epoch 2 (an epoch takes ~1 s here)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 1 <= len(read_log(run_dir / "log.csv")) - 1 < KILL_EPOCHS

    train_keras_fold(KILL_SPEC, data, run_dir, progress=False)  # the re-run, here to skip a second TF start-up
    train_keras_fold(KILL_SPEC, data, tmp_path / "reference", progress=False)
    resumed, reference = read_log(run_dir / "log.csv"), read_log(tmp_path / "reference" / "log.csv")
    assert [r[0] for r in resumed[1:]] == [str(e) for e in range(1, KILL_EPOCHS + 1)]
    for ours, theirs in zip(resumed[1:], reference[1:], strict=True):  # train_loss, val_mean_dice, lr
        assert [float(v) for v in ours[1:4]] == pytest.approx([float(v) for v in theirs[1:4]], abs=2e-4)


def test_a_checkpoint_of_another_shape_is_a_user_error(one_epoch):
    from carvana.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="best.weights.h5"):
        KerasMember(dataclasses.replace(SPEC, filters=16), [one_epoch / "best.weights.h5"])
    with pytest.raises(WorkbenchError, match="missing"):
        KerasMember(SPEC, [one_epoch / "nothing.weights.h5"])


@pytest.mark.slow
def test_fold_train_runs_a_keras_member_before_a_pytorch_one(tiny_data, tmp_path):
    """A config may list its members in any order: a Keras job loads TensorFlow, and the PyTorch job after it in
    the same process loads Triton (through torchvision), which used to segfault the whole `fold-train`."""
    from tests.conftest import run_cli  # not at the top: a subprocess below imports this module bare

    config = tmp_path / "mixed.yaml"
    config.write_text(
        f"data: {tiny_data}\nrun_dir: {tmp_path / 'run'}\nfolds: {{n_folds: 2}}\n"
        "zoo:\n  train: {epochs: 1, batch_size: 8}\n  members: [keras_unet_64, unet_resnet18_64]\n"
    )
    result = run_cli("fold-train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    for member in ["keras_unet_64", "unet_resnet18_64"]:
        assert f"{member}/fold1: trained" in result.stdout + result.stderr, member


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: `compute.threads` 1 is also all cores")
def test_compute_threads_hold_for_a_keras_member():
    """A job sizes TensorFlow's pools to `compute.threads`; building the member later must not reset them to
    all cores (TensorFlow's pools are per process, so this runs in a fresh one)."""
    code = (
        "from workbench.jobs import _keras_threads\n"
        "from zoo.keras_models import build_keras_unet, load_keras\n"
        "from zoo.spec import MemberSpec\n"
        "_keras_threads(1)\n"
        "tf, _ = load_keras()\n"
        "build_keras_unet(MemberSpec(name='k', arch='keras_unet', height=32, width=32))\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["1", "1"]
