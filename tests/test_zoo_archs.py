"""Bring your own members: every smp architecture the config accepts, and a custom `module:function`
network, build, map (B, 3, H, W) to (B, 1, H, W) logits, train one tiny epoch through the real loop and
predict with its padding, tiles and TTA; bad builders and wrong output shapes are refused clearly."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from carvana.errors import WorkbenchError
from tests.test_zoo import tiny_fold_data
from workbench.config import load_config
from zoo.archs import SMP_ARCHS
from zoo.families import ARCH_FAMILIES, load_member, train_member_fold
from zoo.fold_data import FoldData
from zoo.geometry import padded_size
from zoo.registry import MEMBERS
from zoo.spec import MemberSpec, PredictConfig, TrainConfig

TINY_TRAIN = TrainConfig(epochs=1, batch_size=4)
TINY_DECODERS = {  # smp options (`builder_args`) that shrink each decoder to a few thousand weights
    "manet": {"decoder_pab_channels": 8},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},  # GroupNorm: 32 groups
    "pspnet": {"psp_out_channels": 16},
    "deeplabv3": {"decoder_channels": 16},
    "deeplabv3plus": {"decoder_channels": 16},
    "pan": {"decoder_channels": 16},
    "upernet": {"decoder_channels": 16},
    "segformer": {"decoder_segmentation_channels": 16},
    "dpt": {"decoder_intermediate_channels": [16, 16, 16, 16], "decoder_fusion_channels": 16},
}


def smp_spec(arch: str) -> MemberSpec:
    """A tiny member of `arch` of about 64 x 96 px: the height a multiple of the arch's `multiple`, the
    width an odd multiple (divisible by nothing larger of its powers of two), so that a too-small
    multiple cannot pass unnoticed."""
    smp = SMP_ARCHS[arch]
    height = math.ceil(max(64, smp.min_side) / smp.multiple) * smp.multiple
    k = math.ceil(1.5 * height / smp.multiple)
    width = (k + (k % 2 == 0)) * smp.multiple
    encoder = "tu-test_vit" if smp.vit_encoder else "tu-test_resnet"
    decoder = (16, 8, 8, 8) if smp.decoder_channels else ()
    return MemberSpec(f"{arch}_test_{height}", arch, height, width, encoder, decoder_channels=decoder,
                      builder_args=TINY_DECODERS.get(arch, {}), train=TINY_TRAIN)


def few_images(height: int, width: int) -> FoldData:
    """`tiny_fold_data` cut to 8 training images (2 batches), 2 for validation and 2 out of fold."""
    data = tiny_fold_data(height=height, width=width)
    return dataclasses.replace(data, train_idx=data.train_idx[:8], val_idx=data.val_idx[:2], oof_idx=data.oof_idx[:2])


def test_accepted_smp_archs_are_the_installed_smp_archs():
    import segmentation_models_pytorch as smp

    assert set(SMP_ARCHS) == set(smp.MODEL_ARCHITECTURES_MAPPING)  # a new smp arch needs a row in zoo.archs
    assert set(SMP_ARCHS) <= set(ARCH_FAMILIES) and {"unet", "fpn", "linknet"} <= set(SMP_ARCHS)


def trains_and_predicts(spec: MemberSpec, tmp_path) -> None:
    """One epoch through the real training function, then the trained member's maps."""
    import torch

    from zoo.torch_models import build_torch_model

    height, width = padded_size(spec.height, spec.width, spec.multiple)  # what the network sees
    with torch.no_grad():
        logits = build_torch_model(spec).eval()(torch.rand(2, 3, height, width))
    assert logits.shape == (2, 1, height, width)
    data = few_images(spec.height, spec.width)
    checkpoint = train_member_fold(spec, data, tmp_path, progress=False)
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 2  # header + epoch 1
    maps = load_member(spec, [checkpoint]).predict_proba(np.asarray(data.images[data.oof_idx]))
    assert maps.shape == (2, spec.height, spec.width) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1


@pytest.mark.parametrize("arch", SMP_ARCHS)
def test_smp_arch_trains_one_epoch_and_predicts(arch, tmp_path):
    trains_and_predicts(smp_spec(arch), tmp_path)


CUSTOM = dict(arch="custom", builder="tests.custom_nets:tiny_net", builder_args={"width": 4}, builder_multiple=4)


def test_custom_builder_trains_one_epoch_and_predicts_padded_tiled_with_tta(tmp_path):
    predict = PredictConfig(tile=(32, 48), overlap=8, tta=("hflip", "shift"))
    spec = MemberSpec("tiny_net_62", height=62, width=93, train=TINY_TRAIN, predict=predict, **CUSTOM)
    assert spec.multiple == 4  # 62 x 93 photos are padded to 64 x 96
    trains_and_predicts(spec, tmp_path)


def test_custom_member_from_a_config(tiny_config):
    tiny_config.write_text(tiny_config.read_text() + """
zoo:
  members:
    - {arch: custom, builder: "tests.custom_nets:tiny_net", builder_args: {width: 4}, height: 64, width: 96}
""")
    (spec,) = load_config(tiny_config).zoo
    assert spec.name == "tiny_net_64" and spec.builder_args == {"width": 4} and spec.multiple == 32
    assert spec.to_dict()["builder"] == "tests.custom_nets:tiny_net"
    assert spec.hash != dataclasses.replace(spec, builder_args={"width": 8}).hash
    assert spec.hash != dataclasses.replace(spec, builder="tests.custom_nets:two_channel_net").hash
    assert "builder" not in MEMBERS["unet_test_resnet_64"].to_dict()  # other members' specs and hashes unchanged
    before_prior_bias = dataclasses.replace(MEMBERS["unet_test_resnet_64"], train=TrainConfig(prior_bias=False))
    assert before_prior_bias.hash == "9b612c716d49f586"


@pytest.mark.slow
def test_custom_member_fold_trains_into_the_store(tiny_config):
    """Through the engine, every fold, the OOF and test maps in the store, and the leaderboard."""
    from carvana.dataset import CarvanaData
    from oof import Store
    from workbench.fold_train import fold_train

    tiny_config.write_text(tiny_config.read_text() + """
zoo:
  train: {epochs: 1, batch_size: 8}
  members:
    - {arch: custom, builder: "tests.custom_nets:tiny_net", builder_args: {width: 4}, builder_multiple: 2,
       height: 64, width: 96, predict: {tta: [hflip, shift]}}
""")
    config = load_config(tiny_config)
    fold_train(config, progress=False)
    store, data = Store(config.run_dir / "oof"), CarvanaData(config.data)
    assert store.members() == ["tiny_net_64"]
    assert store.ids("tiny_net_64", "train") == data.train_ids and store.ids("tiny_net_64", "test") == data.test_ids
    assert store.metadata("tiny_net_64")["spec"]["builder_args"] == {"width": 4}
    assert "tiny_net_64" in (config.run_dir / "leaderboard.csv").read_text()


@pytest.mark.parametrize(("builder", "says"), [
    ("", "give `builder: package.module:function`"),
    ("tests.custom_nets", "give `builder: package.module:function`"),
    ("tests/custom_nets.py:tiny_net", "give `builder: package.module:function`"),
    ("tests.no_such_nets:tiny_net", "no module 'tests.no_such_nets' can be imported; install its package"),
    ("tests.custom_nets:no_such_net", "module tests.custom_nets has no `no_such_net`"),
    ("tests.custom_nets:NOT_A_BUILDER", "`NOT_A_BUILDER` is not callable"),
])
def test_bad_builder_is_refused_at_config_load(builder, says, tiny_config):
    tiny_config.write_text(tiny_config.read_text() + f"""
zoo:
  members:
    - {{name: mine, arch: custom, builder: "{builder}", height: 64, width: 96}}
""")
    with pytest.raises(WorkbenchError, match="member mine: ") as error:
        load_config(tiny_config)
    assert str(tiny_config) in str(error.value) and says in str(error.value)


@pytest.mark.parametrize(("fields", "says"), [
    ({**CUSTOM, "builder_args": {"width": object()}}, "`builder_args` must hold plain values"),
    ({**CUSTOM, "builder_args": ["width", 4]}, "`builder_args` must be a mapping"),
    ({**CUSTOM, "builder_multiple": 0}, "`builder_multiple` is 0"),
    ({**CUSTOM, "encoder": "resnet18"}, "arch custom has no `encoder`"),
    ({"arch": "unet", "encoder": "resnet18", "builder": "tests.custom_nets:tiny_net"}, "need `arch: custom`"),
    ({"arch": "simple_cnn", "builder_args": {"width": 4}}, "arch simple_cnn takes no `builder_args`"),
    ({"arch": "unet", "encoder": "resnet18", "builder_args": {"classes": 2}}, "sets classes, which the workbench"),
    ({"arch": "fpn", "encoder": "resnet18", "decoder_channels": (16, 8)}, "arch fpn takes no `decoder_channels`"),
    ({"arch": "dpt", "encoder": "resnet18"}, "needs a timm ViT encoder"),
    ({"arch": "pan", "encoder": "resnet18"}, "arch pan needs inputs of at least 128 px a side"),
])
def test_member_settings_that_cannot_work_are_refused(fields, says):
    with pytest.raises(ValueError, match="member m_64: ") as error:
        MemberSpec("m_64", height=64, width=96, **fields)
    assert says in str(error.value)


@pytest.mark.parametrize(("builder", "got"), [
    ("tests.custom_nets:two_channel_net", r"\(4, 2, 64, 96\)"),
    ("tests.custom_nets:half_size_net", r"\(4, 1, 32, 48\)"),
])
def test_wrong_output_shape_is_one_clear_error(builder, got, tmp_path):
    spec = MemberSpec("wrong_64", "custom", 64, 96, builder=builder, train=TINY_TRAIN)
    expected = r"member wrong_64: the network maps images \(4, 3, 64, 96\) to " + got
    with pytest.raises(WorkbenchError, match=expected + r".*\(B, 1, H, W\) = \(4, 1, 64, 96\)"):
        train_member_fold(spec, few_images(64, 96), tmp_path, progress=False)


def test_builder_that_cannot_build_is_one_clear_error():
    from zoo.torch_models import build_torch_model

    with pytest.raises(WorkbenchError, match=r"member m_64: tests.custom_nets:tiny_net\(\*\*\{'depth': 3\}\) failed"):
        build_torch_model(MemberSpec("m_64", "custom", 64, 96, builder="tests.custom_nets:tiny_net",
                                     builder_args={"depth": 3}))
    with pytest.raises(WorkbenchError, match="returned a str; it must return a torch nn.Module"):
        build_torch_model(MemberSpec("m_64", "custom", 64, 96, builder="tests.custom_nets:not_a_module"))
