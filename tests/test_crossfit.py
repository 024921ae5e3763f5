"""The stacking layer's one cross-fit loop and its streamed input: honest folds (a spy estimator),
streamed fits equal to in-memory fits, one evaluator pass shared by every fit, tuned-blend studies."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import optuna
import pytest
from sklearn.base import BaseEstimator

from oof import Store
from oof.format import CAR_LEVEL
from stacking.blenders import MeanBlender, WeightedMeanBlender
from stacking.crossfit import cross_fit, fit_predict, predict_test
from stacking.evaluate import DiceEvaluator
from stacking.maps import MapBatch, StoreReader, TrainMaps
from stacking.maps import TestMaps as MapsOfTest  # not a pytest class
from stacking.pixel_stacker import PixelStacker
from stacking.tune import TuneSpace, best_params
from stacking.tuned import TunedBlend, blend_mask

N_CARS, H, W, N_MEMBERS = 6, 24, 32, 3


def toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    """maps (N, M, H, W) uint8 of noisy members, truths (N, H, W), ids `<car>_<NN>`, car-grouped folds 0..2."""
    rng = np.random.default_rng(seed)
    ids = [f"{c:012x}_{a:02d}" for c in range(N_CARS) for a in range(1, 17)]
    yy, xx = np.mgrid[:H, :W]
    truth = np.stack([((yy - H / 2) ** 2 / (5 + i % 5) ** 2 + (xx - W / 2) ** 2 / 100 < 1) for i in range(len(ids))])
    noise = [rng.normal(0, s, truth.shape) for s in (40, 70, 110)]
    maps = np.stack([np.clip(truth * 255 + n, 0, 255) for n in noise], axis=1).astype(np.uint8)
    return maps, truth.astype(np.uint8), ids, [c % 3 for c in range(N_CARS) for _ in range(16)]


class MemoryWriter:
    def __init__(self) -> None:
        self.maps: dict[tuple[str, str], tuple[np.ndarray, int | None]] = {}

    def write(self, split: str, img: str, proba: np.ndarray, fold: int | None = None) -> None:
        self.maps[split, img] = (proba, fold)


class Spy(BaseEstimator):
    """Records the ids each fit saw and each predict was asked for."""

    calls: ClassVar[list] = []

    def fit(self, X: TrainMaps) -> Spy:
        self.seen_ = {img for batch in X.batches() for img in batch.ids}
        return self

    def predict_proba(self, X: MapBatch) -> np.ndarray:
        Spy.calls.append((self.seen_, set(X.ids)))
        return X.maps.mean(axis=1).astype(np.float32) / 255


def test_cross_fit_never_fits_on_the_fold_it_predicts():
    maps, truth, ids, fold = toy()
    train = TrainMaps.from_arrays(maps, truth, ids, fold, chunk=5)
    test = MapsOfTest(lambda part: maps[:len(part)], tuple(ids[:7]), chunk=3)
    Spy.calls, writer = [], MemoryWriter()
    fit_predict(Spy, train, test, writer)
    by_fold = {k: {i for i, f in zip(ids, fold) if f == k} for k in range(3)}
    predicted: dict[frozenset, set] = {}
    for seen, asked in Spy.calls:
        predicted.setdefault(frozenset(seen), set()).update(asked)
    for seen, asked in predicted.items():
        if asked <= set(test.ids):
            assert seen == set(ids)  # the test maps come from the fit on every fold
            continue
        k = next(k for k in range(3) if asked == by_fold[k])
        assert not seen & by_fold[k] and seen == set(ids) - by_fold[k], f"fold {k} predicted by a fit on it"
    assert {img for split, img in writer.maps if split == "train"} == set(ids)
    assert all(writer.maps["train", img][1] == f for img, f in zip(ids, fold))
    assert len(predicted) == 4  # one fit per held-out fold, one on all


def test_cross_fit_yields_each_fold_then_all():
    maps, truth, ids, fold = toy()
    train = TrainMaps.from_arrays(maps, truth, ids, fold)
    assert [(k, m.n_members_) for k, m in cross_fit(MeanBlender, train)] == [(0, 3), (1, 3), (2, 3), (None, 3)]


@pytest.fixture
def stored(tmp_path) -> tuple[TrainMaps, TrainMaps, np.ndarray, list[str]]:
    """The toy maps through a real store (streamed from files) and held in memory, same folds."""
    maps, truth, ids, fold = toy()
    store = Store(tmp_path / "oof")
    members = tuple(f"m{m}" for m in range(N_MEMBERS))
    for m, name in enumerate(members):
        with store.open_member(name, {"name": name}, "0" * 64, (H, W)) as writer:
            for i, img in enumerate(ids):
                writer.write("train", img, maps[i, m], fold=fold[i])
    position = {img: i for i, img in enumerate(ids)}
    streamed = TrainMaps(StoreReader(store, members, "train"), lambda img: truth[position[img]],
                         dict(zip(ids, fold)), members, chunk=7)
    return streamed, TrainMaps.from_arrays(maps, truth, ids, fold), maps, ids


def test_streamed_fits_equal_in_memory_fits(stored):
    streamed, memory, maps, ids = stored
    batch = MapBatch.of(maps[:20], ids[:20], [int(i[-2:]) for i in ids[:20]])
    for k in (0, 1, 2):
        others = [j for j in range(3) if j != k]
        a, b = WeightedMeanBlender().fit(streamed.folds(others)), WeightedMeanBlender().fit(memory.folds(others))
        np.testing.assert_array_equal(a.weights_, b.weights_)
        assert a.score_ == b.score_
        np.testing.assert_array_equal(a.predict_proba(batch), b.predict_proba(batch))
        np.testing.assert_array_equal(streamed.evaluator().per_image(0.4, [1, 2, 3]),
                                      memory.evaluator().per_image(0.4, [1, 2, 3]))
    a, b = PixelStacker(max_pixels=3000).fit(streamed), PixelStacker(max_pixels=3000).fit(memory)
    np.testing.assert_array_equal(a.predict_proba(batch), b.predict_proba(batch))


def test_one_evaluator_pass_is_shared_and_exact(stored):
    streamed, _, maps, ids = stored
    fold = {img: streamed.fold_of[img] for img in ids}
    for k in range(3):
        WeightedMeanBlender().fit(streamed.folds([j for j in range(3) if j != k]))
    WeightedMeanBlender().fit(streamed)
    assert streamed.shared.n_passes == 1  # four fits, one streamed pass
    truth = np.stack([streamed.truth(i) for i in ids])
    for k in range(3):
        rows = [i for i, img in enumerate(ids) if fold[img] == k]
        reference = DiceEvaluator(N_MEMBERS)
        for i in rows:
            reference.add_image(maps[i], truth[i], int(ids[i][-2:]))
        pruned = streamed.folds([k]).evaluator()
        for t, w in ((0.5, None), (0.3, [1, 0, 2]), (0.8, [0.2, 0.5, 0.3]), (np.linspace(0.2, 0.8, 16), [1, 1, 3])):
            np.testing.assert_array_equal(pruned.per_image(t, w), reference.per_image(t, w))
    with pytest.raises(ValueError, match="thresholds in"):
        streamed.evaluator().score(0.9, [1, 2, 3])  # outside the range the pruned pixels allow


def test_tuned_blend_names_its_study_by_the_folds_left_out(tmp_path):
    """Fold k's OOF maps come from study `blend-outer<k>`: thresholded at 0.5 they are its best trial's blend."""
    maps, truth, ids, fold = toy()
    train = TrainMaps.from_arrays(maps, truth, ids, fold)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def make() -> TunedBlend:
        return TunedBlend(storage=url, study="blend", n_trials=3, space=TuneSpace(per_angle=False),
                          user_attrs={"run": "toy", "entry": "tuned"})

    writer = MemoryWriter()
    fit_predict(make, train, None, writer)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert names == ["blend", "blend-outer0", "blend-outer1", "blend-outer2"]
    study = optuna.load_study(study_name="blend-outer1", storage=url)
    assert study.metric_names == ["mean Dice"]
    assert study.user_attrs["outer_fold"] == 1 and study.user_attrs["entry"] == "tuned"
    assert sorted(img for _, img in writer.maps) == sorted(ids)
    for (_, img), (levels, k) in writer.maps.items():  # the pass writes the store's levels
        outer = optuna.load_study(study_name=f"blend-outer{k}", storage=url)
        params = best_params(outer, train.members, TuneSpace(per_angle=False))
        assert levels.dtype == np.uint8
        np.testing.assert_array_equal(levels >= CAR_LEVEL, blend_mask(maps[ids.index(img)], int(img[-2:]), params))


def test_test_maps_predicted_by_joblib_workers_equal_the_serial_ones(stored):
    """Two real loky worker processes read their chunks from the store and predict; order and values kept."""
    streamed, memory, _, ids = stored
    model = PixelStacker(max_pixels=3000).fit(memory)
    test = MapsOfTest(streamed.read, tuple(ids[:40]), chunk=7)
    serial = list(predict_test(model, test, n_jobs=1))
    parallel = list(predict_test(model, test, n_jobs=2))
    assert [ids for ids, _ in parallel] == [ids for ids, _ in serial] == test.chunks()
    for (_, a), (_, b) in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
