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
from zoo.families import ARCH_FAMILIES, build_network, load_member, member_net, train_member_fold
from zoo.fold_data import FoldData
from zoo.registry import MEMBERS
from zoo.spec import MemberSpec

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
    """(N, H, W) float32 probabilities of an untrained member for (N, H, W, 3) uint8 images, through its
    family's row of `zoo.families` (a baseline, which has no network, fitted to masks made from the images)."""
    if not spec.family.build:
        angles, masks = np.arange(1, len(images) + 1), (images[..., 0] > 128).astype(np.uint8)
        train_idx = np.arange(len(images))
        data = FoldData(0, [f"{i:012x}_{a:02d}" for i, a in enumerate(angles)], images, masks, train_idx,
                        train_idx[:0], train_idx[:0])
        return load_member(spec, [train_member_fold(spec, data, work_dir)]).predict_proba(images, angles=angles)
    return member_net(spec, [build_network(spec)])(images)


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
        assert spec.name in MEMBERS or spec.arch in ARCH_FAMILIES


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
from zoo.families import build_network, load_member
from zoo.registry import MEMBERS
import zoo.keras_member
spec = MEMBERS["simple_cnn_128"]
path = Path(tempfile.mkdtemp()) / "best.pt"
torch.save({"model": build_network(spec).state_dict()}, path)
maps = load_member(spec, [path]).predict_proba(np.zeros((1, 64, 96, 3), np.uint8))
assert maps.shape == (1, 64, 96)
print(sorted(m for m in ("albumentations", "zoo.train_torch", "zoo.train_keras", "zoo.augment") if m in sys.modules))
"""


def test_predicting_maps_imports_no_training_loop():
    """A trained member predicts (as the test maps and pseudo-labels are made) without its family's training
    module or the augmentation library."""
    result = subprocess.run([sys.executable, "-c", PREDICT_ONLY], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"
