"""The winners' recipe options, each changing what it should: LR schedules and warm-up, EMA and SWA
weights, the losses and border weights, gradient clipping; the Keras loop honours or refuses each
key; resume after SIGKILL keeps the EMA and SWA state; TensorBoard serves the curves."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from carvana.errors import WorkbenchError
from tests.test_zoo import tiny_fold_data
from workbench.config import load_config
from zoo.recipe import epoch_lr, new_state
from zoo.registry import MEMBERS
from zoo.spec import TrainConfig
from zoo.torch_losses import border_px, border_weights, segmentation_loss, soft_dice
from zoo.train_torch import train_fold

# Keras's own save_weights trips NumPy 2's __array__ deprecation; nothing here to act on
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
REPO = Path(__file__).resolve().parents[1]
BASE = MEMBERS["unet_test_resnet_64"]


def with_train(**fields) -> object:
    return dataclasses.replace(BASE, train=TrainConfig(batch_size=4, augment=False, **fields))


def test_cosine_cyclic_and_warmup_learning_rates():
    def lrs(cfg: TrainConfig) -> list[float]:
        return [epoch_lr(cfg, new_state(cfg), e) for e in range(1, cfg.epochs + 1)]

    cosine = TrainConfig(epochs=4, lr=1.0, schedule="cosine")
    half_cosine = [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert lrs(cosine) == pytest.approx(half_cosine) and half_cosine[2] == pytest.approx(0.5)
    warm = TrainConfig(epochs=5, lr=1.0, schedule="cosine", warmup_epochs=1)
    assert lrs(warm)[:2] == pytest.approx([0.5, 1.0]) and lrs(warm)[-1] < lrs(warm)[-2]
    cyclic = TrainConfig(epochs=6, lr=1.0, schedule="cyclic", cycle_epochs=3)
    assert lrs(cyclic)[:3] == lrs(cyclic)[3:] and lrs(cyclic)[0] == 1.0 and lrs(cyclic)[2] < 0.5
    assert lrs(TrainConfig(epochs=3, lr=1.0)) == [1.0, 1.0, 1.0]  # plateau: held until validation stalls


@pytest.mark.slow
def test_cosine_schedule_reaches_the_optimizer(tmp_path):
    train_fold(with_train(epochs=2, schedule="cosine", lr=1e-3), tiny_fold_data(), tmp_path, progress=False)
    rows = (tmp_path / "log.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[3]) for r in rows] == pytest.approx([1e-3, 5e-4])
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)


def test_border_weights_mark_the_band_around_the_mask():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    weights = border_weights(mask, 3.0, band_px=2)
    assert weights[0, 0, 16, 16] == 1 and weights[0, 0, 0, 0] == 1  # deep inside, far outside
    assert weights[0, 0, 8, 16] == 3 and weights[0, 0, 6, 16] == 3 and weights[0, 0, 5, 16] == 1
    assert border_px(1280) == 20 and border_px(64) == 2


def test_losses_compute_what_they_name():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    dice = soft_dice(torch.sigmoid(logits), target).mean()
    def loss(**kw: object) -> float:
        return float(segmentation_loss(logits, target, TrainConfig(**kw), band_px=2))

    assert loss() == pytest.approx(float(bce + 1 - dice), rel=1e-6)
    assert loss(loss="bce_logdice") == pytest.approx(float(bce - torch.log(dice)), rel=1e-6)
    assert loss(border_weight=5.0) != pytest.approx(loss())
    from segmentation_models_pytorch.losses import LovaszLoss

    assert loss(loss="lovasz") == pytest.approx(float(LovaszLoss("binary", per_image=True)(logits, target)), rel=1e-6)


def test_keras_loss_matches_the_torch_loss():
    pytest.importorskip("tensorflow")
    from zoo.keras_losses import segmentation_loss as keras_loss
    from zoo.keras_models import load_keras as _tf

    tf, _ = _tf()
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 16, 16, 1)).astype(np.float32)
    target = (rng.random((2, 16, 16, 1)) > 0.5).astype(np.float32)
    for cfg in (TrainConfig(), TrainConfig(loss="bce_logdice", border_weight=3.0)):
        theirs = float(segmentation_loss(torch.from_numpy(logits).permute(0, 3, 1, 2),
                                         torch.from_numpy(target).permute(0, 3, 1, 2), cfg, band_px=2))
        assert float(keras_loss(tf.constant(logits), tf.constant(target), cfg, 2)) == pytest.approx(theirs, rel=1e-5)


@pytest.mark.slow
def test_ema_weights_are_saved_and_differ_from_the_raw_weights(tmp_path):
    train_fold(with_train(epochs=1, ema=0.9), tiny_fold_data(), tmp_path, progress=False)
    best = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    ema = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    name = next(k for k in best if k.endswith("weight") and best[k].ndim == 4)
    torch.testing.assert_close(best[name], ema[name])  # the averaged weights are evaluated and saved
    assert not torch.allclose(best[name], last["model"][name])  # and they are not the raw ones
    plain = tmp_path / "plain"
    plain.mkdir()
    train_fold(with_train(epochs=1), tiny_fold_data(), plain, progress=False)
    torch.testing.assert_close(torch.load(plain / "best.pt", weights_only=True)["model"][name],
                               torch.load(plain / "last.pt", weights_only=False)["model"][name])


@pytest.mark.slow
def test_swa_averages_the_last_epochs(tmp_path):
    train_fold(with_train(epochs=3, swa_epochs=2), tiny_fold_data(), tmp_path, progress=False)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert best["swa_n_averaged"] == 2 and "swa_val_dice" in last["state"]
    name = next(k for k in best["model"] if k.endswith("weight") and best["model"][k].ndim == 4)
    torch.testing.assert_close(best["model"][name], last["swa"][f"module.{name}"])
    assert not torch.allclose(best["model"][name], last["model"][name])


@pytest.mark.slow
def test_clip_grad_bounds_the_update(tmp_path):
    def moved(clip: float, folder: Path) -> float:
        folder.mkdir()
        spec = with_train(epochs=1, clip_grad=clip, optimizer="rmsprop")
        torch.manual_seed(0)
        train_fold(spec, tiny_fold_data(), folder, progress=False)
        from zoo.torch_models import build_torch_model
        from zoo.train_torch import seed_everything

        seed_everything(spec.train.seed)
        start = build_torch_model(spec).state_dict()
        end = torch.load(folder / "last.pt", weights_only=False)["model"]
        return float(sum((end[k].float() - start[k].float()).abs().sum() for k in start if k.endswith("weight")))

    assert moved(1e-9, tmp_path / "clipped") < 0.1 * moved(0.0, tmp_path / "free")


def test_options_the_keras_loop_cannot_honour_are_refused_by_key(tiny_config):
    base = tiny_config.read_text()
    for train, key in [("{ema: 0.99}", "train.ema"), ("{swa_epochs: 2}", "train.swa_epochs"),
                       ("{loss: lovasz}", "train.loss")]:
        tiny_config.write_text(base + f"zoo:\n  members:\n    - {{name: keras_unet_64, train: {train}}}\n")
        with pytest.raises(WorkbenchError, match=f"member keras_unet_64: `{key}: .*Keras"):
            load_config(tiny_config)
    tiny_config.write_text(base + "zoo:\n  members:\n    - {name: keras_unet_64, train: {schedule: cosine, "
                                  "crop: [32, 64], clip_grad: 1.0, loss: bce_logdice, border_weight: 2}}\n")
    assert load_config(tiny_config).zoo[0].train.crop == (32, 64)


@pytest.mark.slow
def test_keras_trains_on_crops_with_cosine_and_clipping(tmp_path):
    pytest.importorskip("tensorflow")
    from zoo.keras_member import KerasMember
    from zoo.train_keras import train_keras_fold

    spec = dataclasses.replace(MEMBERS["keras_unet_64"], train=TrainConfig(
        epochs=2, batch_size=4, crop=(32, 64), schedule="cosine", clip_grad=1.0, loss="bce_logdice", border_weight=2))
    data = tiny_fold_data()
    best = train_keras_fold(spec, data, tmp_path, progress=False, board_dir=tmp_path / "tb")
    rows = (tmp_path / "log.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[3]) for r in rows] == pytest.approx([1e-3, 5e-4])
    assert KerasMember(spec, [best]).predict_proba(np.asarray(data.images[:2])).shape == (2, 64, 96)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


KILL_SPEC = with_train(epochs=3, ema=0.9, swa_epochs=2)
KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import zoo.recipe as recipe
from tests.test_recipe import KILL_SPEC
from tests.test_zoo import tiny_fold_data
from zoo.train_torch import train_fold
end_epoch = recipe.end_epoch
def slow_end(*args, **kwargs):  # a pause after each epoch's checkpoint, for the kill to land in
    time.sleep(1.5)
    return end_epoch(*args, **kwargs)
import zoo.train_torch
zoo.train_torch.end_epoch = slow_end
train_fold(KILL_SPEC, tiny_fold_data(), Path({folder!r}), progress=False)
"""


@pytest.mark.slow
def test_sigkill_then_resume_keeps_ema_and_swa_state(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(repo=str(REPO), folder=str(run_dir))],
                               stderr=subprocess.DEVNULL)
    log = run_dir / "log.csv"
    deadline = time.monotonic() + 240
    while not (log.exists() and len(log.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)  # two epochs done: the SWA average has started
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = torch.load(run_dir / "last.pt", weights_only=True)  # the checkpoint holds no pickled objects
    assert 2 <= json.loads(killed["state"])["epoch"] < 3 and int(killed["swa"]["n_averaged"]) == 1
    train_fold(KILL_SPEC, tiny_fold_data(), run_dir, progress=False)
    reference = tmp_path / "reference"
    reference.mkdir()
    train_fold(KILL_SPEC, tiny_fold_data(), reference, progress=False)
    ours, theirs = (torch.load(d / "best.pt", weights_only=True) for d in (run_dir, reference))
    assert ours["swa_n_averaged"] == theirs["swa_n_averaged"] == 2
    for name, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][name], value, atol=1e-5, rtol=1e-4)
    ema_ours, ema_theirs = (torch.load(d / "last.pt", weights_only=False)["ema"] for d in (run_dir, reference))
    for name, value in ema_theirs.items():
        torch.testing.assert_close(ema_ours[name], value, atol=1e-5, rtol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_serves_a_fold_s_validation_dice(tmp_path):
    from zoo.board import board_dir

    run = tmp_path / "run"
    work = run / "members" / BASE.name / "fold0"
    work.mkdir(parents=True)
    train_fold(with_train(epochs=2), tiny_fold_data(), work, progress=False, board_dir=board_dir(run, BASE.name, 0))
    logged = [float(r.split(",")[2]) for r in (work / "log.csv").read_text().splitlines()[1:]]
    port = _free_port()
    binary = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen([str(binary), "--logdir", str(run / "tensorboard"), "--host", "127.0.0.1",
                               "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        url = (f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run={BASE.name}/fold0&tag=val_mean_dice")
        points, deadline = None, time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    points = json.loads(response.read())
                if len(points) == 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        assert points is not None and [p[1] for p in points] == [1, 2]
        assert [p[2] for p in points] == pytest.approx(logged, abs=1e-5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/images/tags", timeout=5) as response:
            assert "val_overlay/0" in json.loads(response.read())[f"{BASE.name}/fold0"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_prior_bias_is_the_log_odds_of_the_fold_car_share():
    from zoo.recipe import prior_logit

    masks = np.zeros((4, 10, 10), np.uint8)
    masks[0, :2] = 1  # 20% car
    masks[1, :5] = 1  # 50%
    assert prior_logit(masks, np.array([0, 1])) == pytest.approx(math.log(0.35 / 0.65))
    assert prior_logit(masks, np.array([0])) == pytest.approx(math.log(0.2 / 0.8))  # only the fold's images
    assert prior_logit(masks, np.array([2, 3])) == pytest.approx(math.log(1e-3 / (1 - 1e-3)))  # no car: clipped
    assert prior_logit(masks, np.array([], int)) == 0.0


def test_the_output_layer_is_the_last_one_channel_convolution():
    from torch import nn

    from zoo.torch_models import SimpleCNN, build_torch_model, output_layer

    smp_model = build_torch_model(BASE)
    assert output_layer(smp_model) is smp_model.segmentation_head[0]
    cnn = SimpleCNN()
    assert output_layer(cnn) is cnn.layers[-1]
    assert output_layer(nn.Sequential(nn.Conv2d(3, 1, 1, bias=False))) is None  # nothing to set


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_both_loops_start_the_output_bias_at_the_prior(framework, tmp_path):
    """With a learning rate too small to move it, the trained output bias is where the loop started it."""
    from zoo.recipe import prior_logit

    data = tiny_fold_data()
    expected = prior_logit(data.masks, data.train_idx)
    biases = {}
    for prior in (True, False):
        folder = tmp_path / str(prior)
        folder.mkdir()
        train = TrainConfig(epochs=1, batch_size=4, augment=False, lr=1e-12, prior_bias=prior)
        if framework == "torch":
            from zoo.torch_models import build_torch_model, output_layer

            train_fold(dataclasses.replace(BASE, train=train), data, folder, progress=False)
            model = build_torch_model(BASE)
            model.load_state_dict(torch.load(folder / "best.pt", weights_only=True)["model"])
            biases[prior] = float(output_layer(model).bias.detach()[0])
        else:
            pytest.importorskip("tensorflow")
            from zoo.keras_models import build_keras_unet
            from zoo.train_keras import train_keras_fold

            spec = dataclasses.replace(MEMBERS["keras_unet_64"], train=train)
            model = build_keras_unet(spec)
            model.load_weights(train_keras_fold(spec, data, folder, progress=False))
            biases[prior] = float(np.asarray(model.get_layer("logits").bias)[0])
    assert expected < -0.5  # the tiny cars cover well under half of each photo
    assert biases[True] == pytest.approx(expected, abs=1e-4)
    assert abs(biases[False]) < 0.2  # as the network was built
