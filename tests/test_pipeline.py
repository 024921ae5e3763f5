"""Prediction as an overlapped pipeline (zoo.pipeline): the same maps as the synchronous loop, byte for byte,
for test and OOF maps; bounded memory; one error naming its photo; a kill mid-shard and a rerun."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from carvana.dataset import CarvanaData
from folds import read_folds
from oof import Store
from workbench.config import load_config
from workbench.fold_train import fold_train
from zoo.cache import cached_split
from zoo.families import load_member
from zoo.pipeline import PipelineError, run_in_line, run_pipeline
from zoo.runner import member_dir, predict_maps, predict_member_test, shard_marker

YAML = """
folds: {n_folds: 2, stratify: area, seed: 0}
zoo:
  train: {epochs: 1, batch_size: 8}
  members:
    - {name: simple_cnn_32, arch: simple_cnn, height: 32, width: 48, predict: {tta: [hflip, shift]}}
"""
MEMBER = "simple_cnn_32"  # smaller than the photos (64 x 96): its maps are resized in the write stage


@pytest.fixture
def trained(tiny_data, tmp_path) -> Path:
    """A config whose member has trained both folds and predicted the test set (pipelined, the default)."""
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {tiny_data}\nrun_dir: {tmp_path / 'run'}\n" + YAML)
    fold_train(load_config(path), progress=False)
    return path


def map_bytes(store_dir: Path, split: str) -> dict[str, bytes]:
    folder = store_dir / MEMBER / split
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.npy.zst"))}


def test_pipelined_maps_are_byte_identical_to_the_synchronous_loop(trained, tmp_path, monkeypatch):
    config = load_config(trained)
    spec, data = config.member(MEMBER), CarvanaData(config.data)
    folds = read_folds(config.run_dir / "folds.csv")
    resolution = Store(config.run_dir / "oof").resolution(MEMBER)
    ids, images, _ = cached_split(data, "train", spec.height, spec.width, config.run_dir / "cache")
    stores = {}
    for mode in ("in_line", "pipelined"):
        monkeypatch.setenv("WORKBENCH_PREDICT_IN_LINE", "1" if mode == "in_line" else "0")
        store = stores[mode] = Store(tmp_path / mode)
        shard_marker(config.run_dir, spec, 0, 1).unlink()
        assert predict_member_test(spec, folds, data, config.run_dir, store, resolution, progress=False)
        for fold in range(folds.n_folds):  # OOF maps: the fold's model on its held-out (cached) photos
            member = load_member(spec, [member_dir(config.run_dir, spec) / f"fold{fold}" / "best.pt"])
            oof = folds.ids(fold)
            with store.open_member(MEMBER, spec.to_dict(), folds.hash, resolution) as writer:
                predict_maps(writer, member, oof, lambda img: images[ids.index(img)], "train", resolution, fold, "oof")
    for split in ("test", "train"):
        in_line, pipelined = map_bytes(tmp_path / "in_line", split), map_bytes(tmp_path / "pipelined", split)
        assert len(in_line) == (len(data.test_ids) if split == "test" else len(ids))
        assert in_line == pipelined, f"{split} maps differ"
        assert map_bytes(config.run_dir / "oof", split) == pipelined  # what fold-train wrote, pipelined
    sessions = Store(tmp_path / "pipelined").metadata(MEMBER)["sessions"]
    assert sessions["test"]["n_maps"] == len(data.test_ids)  # the write pool's counts add up


def test_memory_is_bounded_by_the_queues_and_the_stages_overlap():
    ids = [f"{i:012x}_01" for i in range(60)]
    chunk, depth = 4, 2
    lock, alive, most = threading.Lock(), [0], [0]
    next_chunk_decoding = threading.Event()

    def load(img: str) -> np.ndarray:
        with lock:
            alive[0] += 1
            most[0] = max(most[0], alive[0])
        if ids.index(img) >= chunk:
            next_chunk_decoding.set()
        return np.full((2, 3, 3), ids.index(img) % 256, np.uint8)

    def predict(photos: np.ndarray, names: list[str]) -> np.ndarray:
        if names[0] == ids[0]:  # the first chunk predicts only once the next is being decoded
            assert next_chunk_decoding.wait(10), "decoding did not run ahead of prediction"
        time.sleep(0.005)
        return photos[..., 0].astype(np.float32)

    written, done = [], []

    def write(img: str, proba: np.ndarray) -> str:
        time.sleep(0.002)
        with lock:
            alive[0] -= 1
        return img

    times = run_pipeline(
        ids, load, predict, write, chunk=chunk, depth=depth, n_decode=3, n_write=3,
        after_chunk=done.append, on_written=written.append,
    )
    assert written == ids and done == list(range(len(ids) // chunk))  # every map once, chunks in order
    assert most[0] <= (2 * depth + 2) * chunk < len(ids)  # queued chunks, not the whole set
    assert times.n_photos == len(ids) and times.wall_s > 0 and times.predict_s > 0


@pytest.mark.parametrize("run", [run_pipeline, run_in_line], ids=["pipelined", "in_line"])
@pytest.mark.parametrize("stage", ["decoding", "predicting", "writing"])
def test_an_error_surfaces_once_naming_the_photo(run, stage):
    ids = [f"{i:012x}_01" for i in range(40)]
    bad = ids[13]
    written = []

    def load(img: str) -> np.ndarray:
        if stage == "decoding" and img == bad:
            raise ValueError("broken JPEG")
        return np.zeros((2, 3, 3), np.uint8)

    def predict(photos: np.ndarray, names: list[str]) -> np.ndarray:
        if stage == "predicting" and bad in names:
            raise RuntimeError("out of memory")
        return np.zeros(photos.shape[:3], np.float32)

    def write(img: str, proba: np.ndarray) -> None:
        if stage == "writing" and img == bad:
            raise OSError("disk full")
        written.append(img)

    with pytest.raises(PipelineError, match=bad) as caught:
        run(ids, load, predict, write, chunk=4, n_decode=2)
    assert stage in str(caught.value) and caught.value.__cause__ is not None
    assert len(written) < len(ids) - 4  # the queued work was dropped, not finished


@pytest.mark.slow
def test_killed_mid_shard_then_rerun_writes_the_same_maps(trained, tmp_path):
    config = load_config(trained)
    spec = config.member(MEMBER)
    reference = map_bytes(config.run_dir / "oof", "test")
    for path in (config.run_dir / "oof" / MEMBER / "test").iterdir():
        path.unlink()
    shard_marker(config.run_dir, spec, 0, 1).unlink()
    (member_dir(config.run_dir, spec) / "test.json").unlink()
    command = [sys.executable, "-m", "workbench.cli", "fold-train", "--config", str(trained)]
    env = {**os.environ, "WORKBENCH_TEST_DIE_IN_TEST_SHARD": "0"}  # os._exit once chunk 1 is written, as kill -9
    killed = subprocess.run(command, capture_output=True, text=True, env=env)
    assert killed.returncode != 0
    assert not shard_marker(config.run_dir, spec, 0, 1).exists()
    assert len(map_bytes(config.run_dir / "oof", "test")) >= 16  # chunk 1 (16 photos) written, maybe more
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert shard_marker(config.run_dir, spec, 0, 1).exists()
    assert map_bytes(config.run_dir / "oof", "test") == reference


@pytest.mark.parametrize(
    "arch,encoder", [("simple_cnn", None), pytest.param("unet", "tu-test_resnet", marks=pytest.mark.slow)]
)
def test_padding_and_views_on_the_device_match_numpys(arch, encoder):
    """The CUDA path's padding, flips and shifts (run here on the CPU) give NumPy's maps; the CPU itself
    keeps NumPy's path, so the float rounding of another memory layout never reaches a CPU run's maps."""
    import torch

    from zoo.predict import predict_photos
    from zoo.spec import MemberSpec, PredictConfig
    from zoo.torch_member import PREDICT_BATCH, predict_on_device, prediction_models, torch_net
    from zoo.torch_models import build_torch_model, input_stats

    fields = {"encoder": encoder} if encoder else {}
    spec = MemberSpec("m_50", arch, 50, 90, predict=PredictConfig(tta=("hflip", "shift")), **fields)
    torch.manual_seed(0)
    models = prediction_models([build_torch_model(spec)], torch.device("cpu"))
    images = np.random.default_rng(0).integers(0, 256, (3, 50, 90, 3), dtype=np.uint8)
    on_device = predict_on_device(models, images, spec, torch.device("cpu"), False, PREDICT_BATCH)
    net = torch_net(models, torch.device("cpu"), False, input_stats(spec), spec.name)
    np.testing.assert_allclose(on_device, predict_photos(net, images, spec, PREDICT_BATCH), rtol=0, atol=1e-6)
