"""Every entry of the table (`workbench.entries.ENTRY_TYPES`) keeps the one contract: scikit-learn's estimator
rules (keyword-only settings stored as given and nothing else set in `__init__`, clone, NotFittedError before
fit, fit returns self) and the one door, `fit(TrainMaps)` and `predict_proba(MapBatch)` -> (n, H, W) float32
probabilities, whose store levels `stacking.levels.predict_levels` gives exactly; and the config decides which
entries a stack fits."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from carvana.dataset import CarvanaData, angle_of, car_of
from oof.format import to_uint8
from stacking.levels import predict_levels
from stacking.maps import PhotoReader, TrainMaps
from stacking.pixel_stacker import STACKERS
from workbench.config import load_config
from workbench.entries import CNN_ENTRY, ENTRY_TYPES, EntryContext, EntryType, _registry, planned_entries
from workbench.tune import TUNED_ENTRY

MEMBERS = ("m0", "m1", "m2")
CONFIG = "stack: {{max_pixels: 3000, cnn_epochs: 1, cnn_size: [48, 32], guard: {guard}}}\ntune: {{n_trials: 3}}\n"


@pytest.fixture(scope="module")
def train(tiny_data_master) -> TrainMaps:
    """Three member-like maps (noisy truths) of 4 angles of 3 cars' tiny photos, a car per fold, with the photos."""
    data = CarvanaData(tiny_data_master)
    cars = sorted({car_of(i) for i in data.train_ids})[:3]
    ids = sorted(i for i in data.train_ids if car_of(i) in cars and angle_of(i) in (1, 5, 9, 13))
    truth = np.stack([data.load_mask(i) for i in ids])
    rng = np.random.default_rng(0)
    noisy = [np.clip(truth * 0.8 + 0.1 + rng.normal(0, s, truth.shape), 0, 1) for s in (0.1, 0.2, 0.3)]
    maps = np.rint(np.stack(noisy, axis=1) * 255).astype(np.uint8)
    fold = [cars.index(car_of(i)) for i in ids]
    source = TrainMaps.from_arrays(maps, truth, ids=ids, fold=fold, chunk=4)
    return dataclasses.replace(source, photo=PhotoReader(tiny_data_master, "train"))


def context(tmp_path, tiny_data_master, guard: bool = False) -> EntryContext:
    path = tmp_path / "contract.yaml"
    folders = f"data: {tiny_data_master}\nrun_dir: {tmp_path / 'run'}\n"
    path.write_text(folders + CONFIG.format(guard=str(guard).lower()))
    (tmp_path / "run").mkdir(exist_ok=True)
    return EntryContext(load_config(path), MEMBERS, MEMBERS, {"folds_hash": "test"}, progress=False)


CASES = [(name, False) for name in ENTRY_TYPES] + [(name, True) for name in (*STACKERS, TUNED_ENTRY)]


@pytest.mark.parametrize("name, guard", CASES, ids=[f"{n}{'-guarded' if g else ''}" for n, g in CASES])
def test_every_entry_keeps_the_estimator_contract(name, guard, train, tmp_path, tiny_data_master):
    entry = ENTRY_TYPES[name].make(context(tmp_path, tiny_data_master, guard))
    params = entry.get_params(deep=False)
    assert set(vars(entry)) == set(params), "__init__ stores its settings and nothing else"
    settings = [p for n, p in inspect.signature(type(entry).__init__).parameters.items() if n in params]
    assert len(settings) == len(params) and all(p.kind is p.KEYWORD_ONLY for p in settings)
    assert {k: repr(v) for k, v in clone(entry).get_params().items()} == {
        k: repr(v) for k, v in entry.get_params().items()
    }
    held = next(train.folds([2]).batches(with_truth=False))
    with pytest.raises(NotFittedError):
        entry.predict_proba(held)
    assert entry.fit(train.folds([0, 1])) is entry
    out = entry.predict_proba(held)
    assert out.shape == (len(held), *held.maps.shape[2:]) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # The store's levels (`stacking.levels`): equal to the rounded probabilities, also where members are unanimous
    maps = held.maps.copy()
    maps[:, :, : maps.shape[2] // 2] = maps[:, :1, : maps.shape[2] // 2]  # the top half: every member as member 0
    maps[:, :, :2] = 255
    maps[:, :, -2:] = 0
    batch = dataclasses.replace(held, maps=maps)
    rounded = np.stack([to_uint8(p, "map") for p in entry.predict_proba(batch)])
    assert np.array_equal(predict_levels(entry, batch), rounded)


def test_the_config_decides_which_entries_a_stack_fits(tmp_path, tiny_data_master):
    planned = planned_entries(context(tmp_path, tiny_data_master))
    assert [(p.name, p.kind) for p in planned] == [
        ("mean", "blend"),
        ("logit_mean", "blend"),
        ("vote", "blend"),
        ("weighted_mean", "blend"),
        ("selected", "blend"),
        ("lightgbm", "stacker"),
        ("logistic", "stacker"),
        (CNN_ENTRY, "cnn"),
        (TUNED_ENTRY, "tuned"),
    ]
    base = context(tmp_path, tiny_data_master)
    config = dataclasses.replace(
        base.config, stack=dataclasses.replace(base.config.stack, blends=("mean",), stackers=(), cnn_epochs=0)
    )
    few = planned_entries(dataclasses.replace(base, config=config, tuned_members=("m0", "m1")))
    assert [(p.name, p.members) for p in few] == [("mean", MEMBERS), (TUNED_ENTRY, ("m0", "m1"))]
    with pytest.raises(ValueError, match="valid: mean, logit_mean"):
        dataclasses.replace(config.stack, blends=("median",))  # the config refuses a name the table lacks
    with pytest.raises(ValueError, match="duplicate"):
        _registry([ENTRY_TYPES["mean"], EntryType("mean", "blend", ENTRY_TYPES["vote"].make)])
