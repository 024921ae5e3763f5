"""The CNN stacker through the one cross-fit loop: it never sees the fold it predicts (spy), and it learns
something real from the photo and the maps on a tiny run's member maps."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest

from stacking.crossfit import cross_fit
from stacking.maps import MapBatch, PhotoReader, TrainMaps
from stacking.robust import batch_dice
from zoo.cnn_stacker import CnnStacker


class SpyCnn(CnnStacker):
    """Records every image id it is fed while fitting and every id it is asked to predict."""

    seen: ClassVar[list[tuple[str, tuple[str, ...]]]] = []

    def _inputs(self, batch: MapBatch):
        SpyCnn.seen.append(("fit" if not hasattr(self, "model_") else "predict", batch.ids))
        return super()._inputs(batch)


@pytest.fixture(scope="module")
def tiny_maps(tiny_data_master):
    """Member-like maps (noisy truths, one member good, one poor) of the tiny dataset's train images, 3 folds."""
    from carvana.dataset import CarvanaData

    data = CarvanaData(tiny_data_master)
    ids = sorted(data.train_ids)
    truth = np.stack([data.load_mask(i) for i in ids])
    rng = np.random.default_rng(0)
    good = np.clip(truth * 0.8 + 0.1 + rng.normal(0, 0.25, truth.shape), 0, 1)
    poor = np.clip(truth * 0.4 + 0.3 + rng.normal(0, 0.3, truth.shape), 0, 1)
    maps = np.rint(np.stack([good, poor], axis=1) * 255).astype(np.uint8)
    fold = [int(i.split("_")[0], 16) % 3 for i in ids]
    train = TrainMaps.from_arrays(maps, truth, ids=ids, fold=fold, chunk=8)
    return tiny_data_master, dataclasses.replace(train, photo=PhotoReader(tiny_data_master, "train")), maps, truth


def test_cnn_stacker_never_sees_the_fold_it_predicts(tiny_maps):
    _, train, _, _ = tiny_maps
    for k, model in cross_fit(lambda: SpyCnn(height=32, width=48, epochs=0), train):
        fitted = {i for stage, ids in SpyCnn.seen if stage == "fit" for i in ids}
        assert fitted == set(model.fitted_ids_)
        expected = set(train.ids) if k is None else set(train.folds([j for j in train.all_folds if j != k]).ids)
        assert fitted == expected
        if k is not None:
            assert not fitted & set(train.folds([k]).ids)
            SpyCnn.seen.clear()
            model.predict_proba(next(train.folds([k]).batches(with_truth=False)))
            assert {i for _, ids in SpyCnn.seen for i in ids} <= set(train.folds([k]).ids)
        SpyCnn.seen.clear()


@pytest.mark.slow
def test_cnn_stacker_output_is_a_probability_map_that_beats_the_member_mean_on_its_images(tiny_maps):
    _, train, maps, truth = tiny_maps
    untrained = CnnStacker(height=32, width=48, epochs=0).fit(train)
    batch = MapBatch.of(maps, ids=train.ids, photo=train.photo)
    mean = maps.astype(np.float32).mean(axis=1) / 255
    base = untrained.predict_proba(batch)
    assert base.shape == truth.shape and base.dtype == np.float32
    np.testing.assert_allclose(base, np.clip(mean, 1e-3, 1 - 1e-3), atol=1e-5)  # zero head: the plain mean
    trained = CnnStacker(height=32, width=48, epochs=6).fit(train).predict_proba(batch)
    assert batch_dice(trained, truth).mean() > batch_dice(base, truth).mean()
