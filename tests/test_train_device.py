"""The training's machine settings (issue 21): "auto" gives a GPU box busy loaders, channels-last and bfloat16, and
the CPU exactly what the demo was made with; loading settings stay out of a member's hash, the others enter it only
when set; bad values name the setting. Training with workers, channels-last, bfloat16 and torch.compile runs."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.test_zoo import tiny_fold_data
from zoo.families import load_member, train_member_fold
from zoo.registry import MEMBERS, resolve_members
from zoo.spec import MemberSpec, TrainConfig
from zoo.train_batches import train_loader
from zoo.train_device import DeviceSettings, loader_workers, resolve_train_device

SPEC = MEMBERS["unet_test_resnet_64"]
KNOWN_HASH = "9b612c716d49f586"  # unet_test_resnet_64's hash before these settings existed
BEFORE = {"prior_bias": False}  # the recipe of those days: the output bias started where the network built it


def test_cpu_defaults_are_the_demos():
    assert resolve_train_device(TrainConfig(), "cpu", "bfloat16", n_cpus=16) == DeviceSettings(
        num_workers=0,
        persistent_workers=False,
        prefetch_factor=None,
        pin_memory=False,
        channels_last=False,
        precision="float32",
        compile=False,
    )


def test_cuda_defaults_keep_a_gpu_busy():
    run = resolve_train_device(TrainConfig(), "cuda", "bfloat16", n_cpus=16)
    assert run == DeviceSettings(8, True, 2, True, True, "bfloat16", False) and not run.scaled
    older_card = resolve_train_device(TrainConfig(), "cuda", "float16", n_cpus=4)
    assert older_card.num_workers == 4 and older_card.precision == "float16" and older_card.scaled


def test_explicit_settings_win_on_either_device():
    cfg = TrainConfig(num_workers=0, channels_last=False, precision="float32", compile=True)
    assert resolve_train_device(cfg, "cuda", "bfloat16", n_cpus=16) == DeviceSettings(
        0, False, None, True, False, "float32", True
    )
    cpu = resolve_train_device(TrainConfig(num_workers=3, persistent_workers=False, prefetch_factor=4), "cpu")
    assert (cpu.num_workers, cpu.persistent_workers, cpu.prefetch_factor) == (3, False, 4)
    assert resolve_train_device(TrainConfig(channels_last=True, precision="bfloat16"), "cpu").channels_last
    assert [loader_workers("auto", on_gpu, 32) for on_gpu in (True, False)] == [8, 0]
    assert loader_workers(5, True, 32) == 5


def test_defaults_keep_old_spec_and_hash():
    """The catalogue member hashes as before the settings existed; loading settings never enter the hash, the
    ones that may change results enter the spec (and its hash) only when set."""
    before = dataclasses.replace(SPEC, train=TrainConfig(**BEFORE))
    assert before.hash == KNOWN_HASH
    assert SPEC.to_dict()["train"]["prior_bias"] is True and SPEC.hash != KNOWN_HASH  # today's recipe: a new hash
    assert not {"persistent_workers", "prefetch_factor", "channels_last", "precision", "compile"} & set(
        before.to_dict()["train"]
    )
    for loading in [{"num_workers": 4}, {"persistent_workers": False}, {"prefetch_factor": 6}]:
        assert dataclasses.replace(SPEC, train=TrainConfig(**BEFORE, **loading)).hash == KNOWN_HASH
    for shaping in [{"channels_last": True}, {"channels_last": False}, {"precision": "bfloat16"}, {"compile": True}]:
        changed = dataclasses.replace(SPEC, train=TrainConfig(**BEFORE, **shaping))
        key, value = next(iter(shaping.items()))
        assert changed.to_dict()["train"][key] == value and changed.hash != KNOWN_HASH


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"num_workers": -1}, "`train.num_workers` is -1; use auto or a whole number"),
        ({"num_workers": "many"}, "`train.num_workers` is 'many'"),
        ({"num_workers": True}, "`train.num_workers` is True"),
        ({"channels_last": "yes"}, "`train.channels_last` is 'yes'; use auto (on CUDA only), true or false"),
        ({"precision": "fp16"}, "`train.precision` is 'fp16'; valid: auto, float32, bfloat16, float16"),
        ({"prefetch_factor": 0}, "`train.prefetch_factor` is 0; use 1 or more"),
        ({"persistent_workers": "yes"}, "`persistent_workers` must be bool"),
    ],
)
def test_bad_values_name_the_setting(train, message):
    with pytest.raises(ValueError, match="member unet_test_resnet_64: .*" + re.escape(message)):
        resolve_members([{"name": "unet_test_resnet_64", "train": train}])


@pytest.mark.parametrize("train", [{"channels_last": True}, {"precision": "bfloat16"}, {"compile": True}])
def test_keras_refuses_pytorch_settings(train):
    with pytest.raises(ValueError, match="cannot be honoured by the Keras loop"):
        resolve_members([{"name": "keras_unet_64", "train": train}])
    resolve_members([{"name": "keras_unet_64", "train": {"channels_last": False, "num_workers": 2}}])


def _batches(loader, batches, seeds):
    out = []
    for seed in seeds:
        batches.seed = seed
        out.append([tensor.clone() for batch in loader for tensor in batch])
    return out


def test_main_process_order_is_the_demos():
    """Without workers the samples come in the order the per-epoch seeded DataLoader gave (the demo's numbers)."""
    spec = dataclasses.replace(SPEC, train=TrainConfig(batch_size=4, augment=False))
    data = tiny_fold_data()
    run = resolve_train_device(spec.train, "cpu")
    loader, batches = train_loader(spec, data, run)
    for seed in (3, 11):
        batches.seed = seed
        order = [i for batch in batches for _, i in batch]
        reference = DataLoader(range(12), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed))
        assert order == [int(i) for batch in reference for i in batch]


def test_any_number_of_kept_workers_draws_the_same_samples():
    """Augmentations and crops in workers are seeded per sample: 1 or 2 persistent workers, 2 epochs, same tensors."""
    spec = dataclasses.replace(SPEC, train=TrainConfig(batch_size=4, crop=(32, 64), num_workers=1))
    data = tiny_fold_data()
    runs = [resolve_train_device(dataclasses.replace(spec.train, num_workers=n), "cpu") for n in (1, 2)]
    assert all(run.persistent_workers for run in runs)
    one, two = (_batches(*train_loader(spec, data, run), seeds=[5, 6]) for run in runs)
    assert all(torch.equal(a, b) for epoch_a, epoch_b in zip(one, two) for a, b in zip(epoch_a, epoch_b))
    assert not torch.equal(one[0][0], one[1][0])  # another epoch, other samples


def _train(tmp_path, spec: MemberSpec, epochs: int = 1):
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=epochs, batch_size=4))
    checkpoint = train_member_fold(spec, tiny_fold_data(), tmp_path, progress=False)
    losses = [float(line.split(",")[1]) for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == epochs and all(math.isfinite(loss) for loss in losses)
    maps = load_member(spec, [checkpoint]).predict_proba(np.asarray(tiny_fold_data().images[20:22]))
    assert maps.shape == (2, 64, 96) and np.isfinite(maps).all()
    return checkpoint


@pytest.mark.parametrize(
    "train",
    [
        {"num_workers": 1, "persistent_workers": True},
        {"channels_last": True},
        {"precision": "bfloat16"},
        {"channels_last": True, "ema": 0.9, "swa_epochs": 1},
    ],
    ids=["kept_worker", "channels_last", "bfloat16", "channels_last_averages"],
)
def test_training_with_machine_settings_runs_on_cpu(tmp_path, train):
    _train(tmp_path, dataclasses.replace(SPEC, train=TrainConfig(**train)), epochs=2)


@pytest.mark.slow
def test_compiled_training_saves_loadable_checkpoints(tmp_path):
    """torch.compile on the CPU (inductor with the system's C compiler): the checkpoint holds the plain module's
    weights, no `_orig_mod.` prefix, so members load it as any other."""
    spec = MemberSpec("simple_cnn_64", "simple_cnn", 64, 96, train=TrainConfig(compile=True, augment=False))
    checkpoint = _train(tmp_path, spec)
    weights = torch.load(checkpoint, weights_only=True)["model"]
    assert weights and not any(key.startswith("_orig_mod.") for key in weights)
