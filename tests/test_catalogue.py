"""Tests that follow the registry and the shipped configs: every catalogue member builds and maps
images to probabilities at a small size, every `configs/*.yaml` loads, every package's public names
resolve. Members or configs added later are covered without a new test."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from workbench.config import load_config
from zoo.archs import SMP_ARCHS
from zoo.registry import MEMBERS
from zoo.spec import FAMILIES, MemberSpec

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
PACKAGES = ["carvana", "carvana.submission", "carvana.synth", "folds", "oof", "zoo", "stacking", "workbench"]


def small(spec: MemberSpec) -> MemberSpec:
    """The member at the smallest input of Kaggle's aspect (3:2) its down-sampling allows (without the crop
    and tile windows, which are checked against the photo's size)."""
    min_side = SMP_ARCHS[spec.arch].min_side if spec.arch in SMP_ARCHS else 0
    unit = max(32, spec.multiple, min_side // 2)
    return dataclasses.replace(spec, height=2 * unit, width=3 * unit,
                               train=dataclasses.replace(spec.train, crop=None),
                               predict=dataclasses.replace(spec.predict, tile=None))


def forward(spec: MemberSpec, images: np.ndarray, work_dir: Path) -> np.ndarray:
    """(N, H, W) float32 probabilities of an untrained member for (N, H, W, 3) uint8 images."""
    if spec.framework == "baseline":
        from zoo.avg_mask import fit_avg_mask
        from zoo.members import load_member

        angles, masks = np.arange(1, len(images) + 1), (images[..., 0] > 128).astype(np.uint8)
        np.save(work_dir / "avg_mask.npy", fit_avg_mask(masks, angles, np.arange(len(images))))
        return load_member(spec, [work_dir / "avg_mask.npy"]).predict_proba(images, angles=angles)
    if spec.framework == "keras":
        from zoo.keras_models import build_keras_unet

        logits = np.asarray(build_keras_unet(spec)(images.astype(np.float32) / 255, training=False))[..., 0]
    else:
        import torch

        from zoo.torch_member import to_tensor
        from zoo.torch_models import build_torch_model

        with torch.no_grad():
            logits = build_torch_model(spec).eval()(to_tensor(images))[:, 0].numpy()
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if spec.framework == "keras" else [])
    for name, spec in MEMBERS.items()
])
def test_catalogue_member_builds_and_maps_images(name, tmp_path):
    spec = small(MEMBERS[name])
    images = np.random.default_rng(0).integers(0, 256, (2, spec.height, spec.width, 3), dtype=np.uint8)
    maps = forward(spec, images, tmp_path)
    assert maps.shape == (2, spec.height, spec.width) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path, tmp_path):
    config = load_config(path, run_dir=tmp_path / "run")
    assert config.name == path.stem and config.data.parts  # a data folder is named
    assert len({s.name for s in config.zoo}) == len(config.zoo)
    for spec in config.zoo:  # members resolved against the catalogue, or defined in full
        assert spec.name in MEMBERS or spec.arch in FAMILIES


def test_shipped_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"demo", "smoke", "kaggle"}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_light_modules_load_no_framework():
    """Package imports stay light, and carvana/ (the competition's files) needs no ML library at all."""
    code = ("import sys, carvana, carvana.submission, carvana.synth, carvana.atomic, carvana.progress, zoo, zoo.spec, "
            "zoo.registry, stacking, stacking.leaderboard, workbench; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'optuna', 'lightgbm', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"


PREDICT_ONLY = """
import sys, tempfile
from pathlib import Path
import numpy as np, torch
from zoo.members import load_member
from zoo.registry import MEMBERS
from zoo.torch_models import build_torch_model
import zoo.keras_member
spec = MEMBERS["simple_cnn_128"]
path = Path(tempfile.mkdtemp()) / "best.pt"
torch.save({"model": build_torch_model(spec).state_dict()}, path)
maps = load_member(spec, [path]).predict_proba(np.zeros((1, 64, 96, 3), np.uint8))
assert maps.shape == (1, 64, 96)
print(sorted(m for m in ("albumentations", "zoo.train_torch", "zoo.train_keras", "zoo.augment") if m in sys.modules))
"""


def test_predicting_maps_imports_no_training_loop():
    """A trained member predicts (as the test maps and pseudo-labels are made) without its family's training
    module or the augmentation library."""
    result = subprocess.run([sys.executable, "-c", PREDICT_ONLY], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"
