"""The config loader: YAML to frozen dataclasses, overrides, unknown keys named."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from carvana.errors import WorkbenchError
from tests.conftest import assert_user_error, run_cli
from workbench.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_config_loads_frozen():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.name == "demo" and config.run_dir == Path("runs/demo")
    assert config.data == Path("data/synthetic") and config.synth.size == (480, 320)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3


def test_overrides(tmp_path):
    config = load_config(REPO / "configs" / "demo.yaml", data=tmp_path / "d", run_dir=tmp_path / "r")
    assert config.data == tmp_path / "d" and config.run_dir == tmp_path / "r"


@pytest.mark.parametrize("text, fragment", [
    ("data: x\nfolds:\n  n_fold: 3\n", "unknown key `folds.n_fold`"),
    ("data: x\nepochs: 3\n", "unknown key `epochs`"),
    ("data: x\nfolds:\n  n_folds: three\n", "`folds.n_folds` must be int"),
    ("data: x\nfolds:\n  stratify: colour\n", "folds.stratify"),
    ("data: x\nsynth:\n  size: 12\n", "synth.size"),
    ("folds: {}\n", "no `data:`"),
    ("data: [unclosed\n", "not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(WorkbenchError, match="bad.yaml") as error:
        load_config(path)
    assert fragment in str(error.value)


def test_bad_config_cli_exits_cleanly(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: x\nfolds:\n  n_fold: 3\n")
    assert_user_error(run_cli("folds", "--config", str(path)), "bad.yaml", "unknown key `folds.n_fold`")


@pytest.mark.parametrize("number", ["5e-2", "0.05", "5.0e-2"])
def test_a_float_reads_alike_in_every_section(tmp_path, number):
    """YAML 1.1 reads `5e-2` (no dot) as a string: `stack.*` and `zoo.train.*` floats take it as 0.05 alike,
    by one rule (carvana.yaml_scalars.yaml_scalar), and refuse a word alike."""
    path = tmp_path / "floats.yaml"
    path.write_text(f"data: x\nstack: {{max_band_share: {number}, band: [{number}, 0.9]}}\n"
                    f"zoo: {{train: {{lr: {number}}}, members: [unet_resnet18_64]}}\n")
    config = load_config(path)
    assert config.stack.max_band_share == config.stack.band[0] == config.zoo[0].train.lr == 0.05
    for section, key in (("stack: {max_band_share: %s}", "`stack.max_band_share` must be float"),
                         ("zoo: {train: {lr: %s}, members: [unet_resnet18_64]}", "`lr` must be float")):
        path.write_text("data: x\n" + section % "five" + "\n")
        with pytest.raises(WorkbenchError, match=key):
            load_config(path)


@pytest.mark.parametrize("section", ["oof: {resolution: %s}", "synth: {size: %s}", "stack: {cnn_size: %s}"])
def test_a_size_that_is_not_whole_pixels_is_refused(tmp_path, section):
    """[480.7, 320.2] is refused, not cut to (480, 320) without a word."""
    path = tmp_path / "bad.yaml"
    path.write_text("data: x\n" + section % "[480.7, 320.2]" + "\n")
    with pytest.raises(WorkbenchError, match=r"must be 2 whole numbers like \[480, 320\]"):
        load_config(path)


def test_a_size_that_is_not_whole_pixels_is_one_error_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: x\noof:\n  resolution: [480.7, 320.2]\n")
    assert_user_error(run_cli("folds", "--config", str(path)), "bad.yaml", "`oof.resolution`", "[480, 320]", "480.7")


def test_predict_compile_is_a_member_setting_that_leaves_old_specs_alone():
    """`predict.compile` (torch.compile before predicting) is read from the config; left at its default it is not
    part of the member's spec, so members made before the setting existed keep their spec and hash."""
    from zoo.registry import MEMBERS
    from zoo.spec import PredictConfig

    spec = MEMBERS["unet_resnet18_64"]
    assert "compile" not in spec.to_dict()["predict"]
    compiled = dataclasses.replace(spec, predict=PredictConfig(compile=True))
    assert compiled.to_dict()["predict"]["compile"] is True and compiled.hash != spec.hash
    with pytest.raises(ValueError, match="predict"):
        PredictConfig(compile="yes")
