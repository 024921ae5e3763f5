"""Zoo members train on tiny data, predict maps of the right shape, and fold-train resumes honestly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from carvana.dataset import CarvanaData
from carvana.errors import WorkbenchError
from folds import read_folds
from oof import Store
from workbench.config import load_config
from workbench.fold_train import fold_train
from zoo.families import load_member, train_member_fold
from zoo.fold_data import FoldData, split_fold
from zoo.registry import MEMBERS
from zoo.spec import MemberSpec, TrainConfig

TINY_TRAIN = TrainConfig(epochs=1, batch_size=4)


def tiny_fold_data(height=64, width=96, n=24, seed=0) -> FoldData:
    """Bright studio-like images with a dark ellipse 'car' and its mask."""
    import cv2

    rng = np.random.default_rng(seed)
    images = np.full((n, height, width, 3), 220, np.uint8)
    masks = np.zeros((n, height, width), np.uint8)
    for i in range(n):
        centre = (int(width / 2 + rng.integers(-8, 8)), int(height / 2 + rng.integers(-5, 5)))
        axes = (int(rng.integers(20, 35)), int(rng.integers(10, 18)))
        cv2.ellipse(masks[i], centre, axes, 0, 0, 360, 1, -1)
        images[i][masks[i] > 0] = rng.integers(20, 120, size=3)
    ids = [f"{i // 6:012x}_{i % 6 + 1:02d}" for i in range(n)]  # 4 cars: 2 train, 1 validation, 1 OOF
    return FoldData(0, ids, images, masks, np.arange(0, 12), np.arange(12, 18), np.arange(18, 24))


@pytest.mark.parametrize("spec", [
    MEMBERS["avg_mask_128"],
    MemberSpec("simple_cnn_64", "simple_cnn", 64, 96),
    MEMBERS["unet_test_resnet_64"],
    MemberSpec("fpn_test_resnet_64", "fpn", 64, 96, "tu-test_resnet"),
    MemberSpec("linknet_mobilenetv3_small_050_64", "linknet", 64, 96, "tu-mobilenetv3_small_050"),
], ids=lambda s: s.name)
def test_member_trains_one_epoch_and_predicts(spec, tmp_path):
    import dataclasses

    spec = dataclasses.replace(spec, train=TINY_TRAIN)
    data = tiny_fold_data()
    checkpoint = train_member_fold(spec, data, tmp_path, progress=False)
    assert checkpoint.exists()
    if spec.arch != "avg_mask":
        log = (tmp_path / "log.csv").read_text().splitlines()
        assert log[0].startswith("epoch,train_loss,val_mean_dice") and len(log) == 2
    member = load_member(spec, [checkpoint])
    images = data.images[20:23]
    maps = member.predict_proba(np.asarray(images), angles=data.angles[20:23])  # OOF images
    assert maps.shape == (3, 64, 96) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    big = member.predict_proba(np.repeat(np.repeat(np.asarray(images), 2, axis=1), 2, axis=2))
    assert big.shape == (3, 128, 192)  # any input size: resized in, resized back


def test_resume_continues_from_last_epoch(tmp_path):
    import dataclasses

    data = tiny_fold_data()
    spec = dataclasses.replace(MEMBERS["unet_test_resnet_64"], train=TrainConfig(epochs=1, batch_size=4))
    train_member_fold(spec, data, tmp_path, progress=False)
    first = (tmp_path / "log.csv").read_text().splitlines()
    longer = dataclasses.replace(spec, train=TrainConfig(epochs=2, batch_size=4))
    train_member_fold(longer, data, tmp_path, progress=False)
    second = (tmp_path / "log.csv").read_text().splitlines()
    assert second[:2] == first and len(second) == 3 and second[2].startswith("2,")


def test_split_fold_keeps_cars_apart(tiny_config):
    from workbench.steps import make_folds

    config = load_config(tiny_config)
    folds = make_folds(config)
    ids = CarvanaData(config.data).train_ids
    train_idx, val_idx, oof_idx = split_fold(ids, folds, 0, seed=0)
    def car(idx: np.ndarray) -> set[str]:
        return {ids[i][:12] for i in idx}

    assert not (car(train_idx) & car(val_idx))
    assert not (car(train_idx) & car(oof_idx)) and not (car(val_idx) & car(oof_idx))
    assert sorted(np.concatenate([train_idx, val_idx, oof_idx])) == list(range(len(ids)))
    assert set(folds.fold_of[ids[i]] for i in oof_idx) == {0}


ZOO_YAML = """
zoo:
  train: {epochs: 1, batch_size: 8}
  members:
    - avg_mask_128
    - {name: simple_cnn_64, arch: simple_cnn, height: 64, width: 96}
"""


def test_fold_train_writes_honest_store_and_leaderboard(tiny_config, capsys):
    tiny_config.write_text(tiny_config.read_text() + ZOO_YAML)
    config = load_config(tiny_config)
    fold_train(config, progress=False)
    store = Store(config.run_dir / "oof")
    assert store.members() == ["avg_mask_128", "simple_cnn_64"]
    data = CarvanaData(config.data)
    assert store.ids("simple_cnn_64", "train") == data.train_ids
    assert store.ids("simple_cnn_64", "test") == data.test_ids
    assert store.read("avg_mask_128", "train", data.train_ids[0]).shape == (64, 96)
    board = (config.run_dir / "leaderboard.csv").read_text().splitlines()
    assert board[0].startswith("entry,kind,oof_mean_dice,threshold") and len(board) == 3
    assert "test_mean_dice" in board[0]
    out = capsys.readouterr().out
    assert "avg_mask_128" in out and "fold-train took" in out
    fold_train(config, progress=False)
    assert "fold 0: done, skipped" in capsys.readouterr().out


def test_changed_spec_is_refused(tiny_config):
    tiny_config.write_text(tiny_config.read_text() + ZOO_YAML)
    config = load_config(tiny_config)
    fold_train(config, member="avg_mask_128", progress=False)
    changed = tiny_config.read_text().replace("- avg_mask_128", "- {name: avg_mask_128, height: 64, width: 96}")
    tiny_config.write_text(changed)
    with pytest.raises(WorkbenchError, match="another spec"):
        fold_train(load_config(tiny_config), member="avg_mask_128", progress=False)
    fold_train(load_config(tiny_config), member="avg_mask_128", retrain=("avg_mask_128",), progress=False)
    config = load_config(tiny_config)
    assert Store(config.run_dir / "oof").resolution("avg_mask_128") == (64, 96)


def test_retrain_with_the_same_spec_trains_again(tiny_config, capsys):
    tiny_config.write_text(tiny_config.read_text() + ZOO_YAML)
    config = load_config(tiny_config)
    fold_train(config, member="avg_mask_128", progress=False)
    done = config.run_dir / "members" / "avg_mask_128" / "fold0" / "done.json"
    before = json.loads(done.read_text())["finished"]
    capsys.readouterr()
    fold_train(config, member="avg_mask_128", retrain=("avg_mask_128",), progress=False)
    assert "fold 0: done, skipped" not in capsys.readouterr().out
    assert json.loads(done.read_text())["finished"] > before


def test_bad_training_setting_is_a_config_error(tiny_config):
    tiny_config.write_text(tiny_config.read_text() + ZOO_YAML.replace("epochs: 1,", "epochs: 2.5,"))
    with pytest.raises(WorkbenchError, match="`epochs` must be int"):
        load_config(tiny_config)


@pytest.mark.slow
def test_kill_during_training_then_rerun_completes(tiny_config):
    tiny_config.write_text(tiny_config.read_text() + """
zoo:
  train: {epochs: 2, batch_size: 4}
  members:
    - avg_mask_128
    - unet_test_resnet_64
""")
    config = load_config(tiny_config)
    command = [sys.executable, "-m", "workbench.cli", "fold-train", "--config", str(tiny_config), "--fold", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = config.run_dir / "members" / "unet_test_resnet_64" / "fold0" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists(), "training never reached its first epoch checkpoint"
    epochs_before = len((last.parent / "log.csv").read_text().splitlines()) - 1
    avg_done = json.loads((config.run_dir / "members" / "avg_mask_128" / "fold0" / "done.json").read_text())
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "avg_mask_128 fold 0: done, skipped" in result.stdout  # finished member x folds are not redone
    log = (last.parent / "log.csv").read_text().splitlines()
    assert epochs_before == 1 and len(log) == 3  # killed after epoch 1; resumed at epoch 2, not from scratch
    assert json.loads((config.run_dir / "members" / "avg_mask_128" / "fold0" / "done.json").read_text()) == avg_done
    folds = read_folds(config.run_dir / "folds.csv")
    store = Store(config.run_dir / "oof")
    assert store.ids("unet_test_resnet_64", "train") == folds.ids(0)  # fold 0's OOF maps, complete
