"""Members at the photos' own size: padding and cropping back, random crops, tiled prediction
against whole-photo prediction, TTA views, pretrained-encoder normalisation, and an odd-sized
dataset trained on crops, predicted by tiles and stored at its exact size without any resize."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from carvana.errors import WorkbenchError
from oof import Store
from tests.test_zoo import tiny_fold_data
from workbench.config import load_config
from workbench.fold_train import fold_train
from zoo.geometry import (
    blend_window,
    crop_back,
    pad,
    padded_size,
    tile_starts,
    training_pair,
)
from zoo.predict import SHIFT_PX, predict_photos, tta_views
from zoo.registry import MEMBERS
from zoo.spec import MemberSpec, PredictConfig, TrainConfig
from zoo.torch_member import to_tensor, torch_net
from zoo.torch_models import IMAGENET_STATS, SimpleCNN, build_torch_model, input_stats
from zoo.train_batches import CropsDataset

ODD = MemberSpec("unet_test_resnet_64", "unet", 64, 95, "tu-test_resnet", decoder_channels=(64, 32, 16, 8))


def test_pad_then_crop_back_is_the_identity_and_mirrors():
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (2, 1280 // 20, 1918 // 20, 3), dtype=np.uint8)  # 64 x 95
    padded = pad(photos, 32)
    assert padded.shape == (2, 64, 96, 3) and padded_size(1280, 1918, 32) == (1280, 1920)
    np.testing.assert_array_equal(crop_back(padded[..., 0], 64, 95, 32), photos[..., 0])
    np.testing.assert_array_equal(padded[:, :, -1], photos[:, :, -2])  # reflected, not stretched or zero
    assert pad(photos[:, :, :64], 32) is photos[:, :, :64] or pad(photos[:, :, :64], 32).shape == (2, 64, 64, 3)


def test_training_pair_crops_image_and_mask_alike():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 95, 3), dtype=np.uint8)
    mask = (image[..., 0] > 128).astype(np.uint8)
    crop_image, crop_mask = training_pair(image, mask, 32, (32, 64), None, np.random.default_rng(5))
    assert crop_image.shape == (32, 64, 3) and crop_mask.shape == (32, 64)
    np.testing.assert_array_equal(crop_mask, (crop_image[..., 0] > 128).astype(np.uint8))
    whole_image, whole_mask = training_pair(image, mask, 32, None, None, np.random.default_rng(5))
    assert whole_image.shape == (64, 96, 3) and whole_mask.shape == (64, 96)


def test_tiles_cover_the_photo_and_the_window_never_vanishes():
    assert tile_starts(96, 64, 16) == [0, 32] and tile_starts(64, 64, 16) == [0]
    assert tile_starts(1920, 1024, 128) == [0, 896]
    window = blend_window(64, 64, 16)
    assert window.min() > 0 and window[32, 32] == 1 and window[0, 0] < 0.01


def test_tiled_prediction_equals_whole_prediction_away_from_the_borders():
    """SimpleCNN is fully convolutional with a 13 px receptive field: a pixel more than 6 px inside
    every tile that covers it sees exactly what it sees in the whole photo, so the blend of
    overlapping tiles differs from the whole-photo map only where tile edges carry weight."""
    torch.manual_seed(0)
    model = SimpleCNN().eval()
    net = torch_net([model], torch.device("cpu"), False, None)
    spec = MemberSpec("simple_cnn_128", "simple_cnn", 128, 190, predict=PredictConfig(tta=()))
    tiled = dataclasses.replace(spec, predict=PredictConfig(tile=(64, 96), overlap=24, tta=()))
    photos = np.random.default_rng(2).integers(0, 256, (2, 128, 190, 3), dtype=np.uint8)
    whole_map = predict_photos(net, photos, spec, batch_size=4)
    tiled_map = predict_photos(net, photos, tiled, batch_size=4)
    inner = (slice(None), slice(8, -8), slice(8, -8))  # the photo's own zero-padded border is the same in both
    assert np.abs(tiled_map - whole_map)[inner].max() < 2e-3  # stated tolerance (measured: 6e-4)
    assert np.abs(tiled_map - whole_map)[inner].mean() < 1e-4  # (measured: 2.5e-5)


def test_tta_views_and_shift_undone():
    assert tta_views(("hflip",)) == [(False, 0), (True, 0)]
    assert len(tta_views(("hflip", "shift"))) == 6 and tta_views(()) == [(False, 0)]
    shift_only = MemberSpec("simple_cnn_64", "simple_cnn", 64, 96, predict=PredictConfig(tta=("shift",)))

    def row_index(batch: np.ndarray) -> np.ndarray:  # a "net" whose map is the photo's red channel
        return batch[..., 0].astype(np.float32) / 255

    photos = np.random.default_rng(3).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
    np.testing.assert_allclose(predict_photos(row_index, photos, shift_only, 4), photos[..., 0] / 255, atol=1e-6)
    assert SHIFT_PX > 0


def test_a_crop_or_tile_larger_than_the_padded_photo_is_refused(tiny_config):
    base = tiny_config.read_text()
    member = "{arch: unet, encoder: tu-test_resnet, height: 64, width: 95, name: odd"
    for extra, key in [("train: {crop: [96, 64]}", "train.crop"),
                       ("predict: {tile: [64, 128], overlap: 16}", "predict.tile"),
                       ("predict: {tile: [64, 64]}", "predict.overlap"),
                       ("train: {crop: [48, 64]}", "train.crop")]:
        tiny_config.write_text(base + f"zoo:\n  members:\n    - {member}, {extra}}}\n")
        with pytest.raises(WorkbenchError, match=f"member odd: `{key}`") as error:
            load_config(tiny_config)
        message = str(error.value)
        assert "\n" not in message and any(fix in message for fix in ("at most", "divisible", "use 0"))


def test_normalisation_is_applied_iff_encoder_weights_are_given(tmp_path):
    spec = MEMBERS["unet_test_resnet_64"]
    weights = tmp_path / "test_resnet.pth"
    torch.save(build_torch_model(spec).encoder.state_dict(), weights)  # a locally made weights file
    pretrained = dataclasses.replace(spec, encoder_weights=str(weights))
    assert input_stats(spec) is None and input_stats(pretrained) == ((0.5,) * 3, (0.5,) * 3)  # timm's config
    assert input_stats(dataclasses.replace(MEMBERS["unet_resnet34_512"], encoder_weights="x.pth")) == IMAGENET_STATS
    data = tiny_fold_data()
    unaugmented = [dataclasses.replace(s, train=TrainConfig(augment=False)) for s in (spec, pretrained)]
    plain, normalised = (CropsDataset(s, data)[(0, 0)][0] for s in unaugmented)  # sample 0 of epoch seed 0
    np.testing.assert_allclose(normalised.numpy(), (plain.numpy() - 0.5) / 0.5, atol=1e-6)
    model = build_torch_model(pretrained)  # the file is loaded into the encoder
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, torch.load(weights)[name])
    assert to_tensor(np.full((1, 2, 2, 3), 255, np.uint8), IMAGENET_STATS)[0, 0, 0, 0] == pytest.approx(
        (1 - 0.485) / 0.229)


def test_a_weights_file_that_does_not_fit_is_one_line_naming_member_and_key(tmp_path):
    wrong = tmp_path / "resnet18.pth"
    torch.save(build_torch_model(MEMBERS["unet_resnet18_64"]).encoder.state_dict(), wrong)
    spec = dataclasses.replace(MEMBERS["unet_test_resnet_64"], encoder_weights=str(wrong))
    with pytest.raises(WorkbenchError, match="member unet_test_resnet_64: `encoder_weights`") as error:
        build_torch_model(spec)
    assert "\n" not in str(error.value) and "leave it empty" in str(error.value)


def test_a_torchvision_imagenet_file_loads_into_the_smp_encoder(tmp_path):
    import torchvision

    imagenet_layout = tmp_path / "resnet18-f37072fd.pth"  # torchvision's file: the encoder plus a classifier head
    torch.save(torchvision.models.resnet18().state_dict(), imagenet_layout)
    model = build_torch_model(dataclasses.replace(MEMBERS["unet_resnet18_64"], encoder_weights=str(imagenet_layout)))
    torch.testing.assert_close(model.encoder.conv1.weight, torch.load(imagenet_layout)["conv1.weight"])
    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(WorkbenchError, match="`encoder_weights`"):
        build_torch_model(dataclasses.replace(MEMBERS["unet_resnet18_64"], encoder_weights=str(wrong)))


def _no_resize(*args, **kwargs):
    raise AssertionError("a photo, mask or map was resized")


@pytest.mark.slow
def test_odd_size_member_trains_on_crops_predicts_by_tiles_without_any_resize(tmp_path, monkeypatch):
    from carvana.synth import generate

    data_dir = tmp_path / "odd"
    generate(data_dir, n_cars=4, n_test_cars=1, size=(95, 64), seed=11, progress=False)
    config_path = tmp_path / "odd.yaml"
    config_path.write_text(f"""
data: {data_dir}
run_dir: {tmp_path / 'run'}
folds: {{n_folds: 2}}
zoo:
  train: {{epochs: 1, batch_size: 4}}
  members:
    - {{name: unet_odd_64, arch: unet, encoder: tu-test_resnet, height: 64, width: 95,
       decoder_channels: [64, 32, 16, 8], train: {{crop: [32, 64]}}, predict: {{tile: [64, 64], overlap: 16}}}}
""")
    config = load_config(config_path)
    monkeypatch.setattr(cv2, "resize", _no_resize)  # anywhere: carvana.resize, the store, the leaderboard
    fold_train(config, progress=False)
    store = Store(config.run_dir / "oof")
    assert store.resolution("unet_odd_64") == (64, 95)
    for split in ("train", "test"):
        img = store.ids("unet_odd_64", split)[0]
        assert store.read("unet_odd_64", split, img).shape == (64, 95)
    assert (config.run_dir / "tensorboard" / "unet_odd_64" / "fold0").is_dir()


def test_full_resolution_catalogue_members_pad_and_do_not_stretch():
    for name in ("unet_resnet34_1280", "linknet_resnet34_1280", "unet_resnet50_1280"):
        spec = MEMBERS[name]
        assert (spec.height, spec.width) == (1280, 1918)
        assert padded_size(spec.height, spec.width, spec.multiple) == (1280, 1920)
    tiled = MEMBERS["unet_resnet50_1280"]
    assert tiled.train.crop == (1024, 1024) and tiled.predict.tile == (1024, 1024)
    assert TrainConfig().crop is None and PredictConfig().tta == ("hflip",)
