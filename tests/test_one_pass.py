"""Every stacking entry in one pass over the members' maps (issue 21 item 3): `fit_predict_all` and
`workbench stack` write every entry's OOF and test maps byte-identical to the per-entry path of before
(kept below as the reference), read each test photo's member maps once per stack, not once per
entry, and leave no entry swapped in when the pass fails."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from carvana.progress import progress_bar
from oof import Store
from oof.format import to_uint8
from stacking.blenders import make_blender
from stacking.crossfit import CrossFitEntry, Entry, cross_fit, fit_predict_all, member_columns
from stacking.maps import StoreReader, TrainMaps, read_batch
from stacking.maps import TestMaps as MapsOfTest  # not a pytest class
from stacking.pixel_stacker import make_stacker
from stacking.robust import Guarded
from stacking.tune import TuneSpace
from stacking.tuned import TunedBlend
from tests.test_crossfit import MemoryWriter, toy

MEMBERS = ("m0", "m1", "m2")


# ---- the reference: the per-entry path before the one pass (stacking/crossfit.py at 2a043f0, timing left out) ---
def per_entry_fit_predict(make, train, test, writer, *, progress=False, desc="entry", n_jobs=1):
    bar = progress_bar(total=train.n_images + (len(test.ids) if test else 0), desc=f"{desc}: cross-fit",
                       leave=False, disable=not progress)
    model = None
    with bar:
        for k, model in cross_fit(make, train):
            if k is None and test is None:
                break
            if k is not None:
                predicted = ((b.ids, model.predict_proba(b)) for b in train.folds([k]).batches(with_truth=False))
            else:
                predicted = per_entry_predict_test(model, test, n_jobs=n_jobs)
            for ids, probas in predicted:
                for img, proba in zip(ids, probas):
                    writer.write("train" if k is not None else "test", img, proba, fold=k)
                bar.update(len(ids))
    return model


def per_entry_predict_test(model, test, *, n_jobs=1) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    chunks = test.chunks()
    if n_jobs == 1 or len(chunks) < 2:
        for ids in chunks:
            yield per_entry_predict_chunk(model, test, ids)
        return
    import joblib

    jobs = (joblib.delayed(per_entry_predict_chunk)(model, test, ids) for ids in chunks)
    yield from joblib.Parallel(n_jobs=n_jobs, return_as="generator", pre_dispatch="2*n_jobs")(jobs)


def per_entry_predict_chunk(model, test, ids):
    levels = [
        to_uint8(model.predict_proba(read_batch(test.read, (img,), test.photo))[0], f"test map of {img}") for img in ids
    ]
    return ids, np.stack(levels)
# -------------------------------------------------------------------------------------------------------------------


def levels_of(writer: MemoryWriter) -> dict[tuple[str, str], tuple[np.ndarray, int | None]]:
    """{(split, img): (uint8 levels as the store keeps them, fold)}."""
    return {key: (to_uint8(proba, str(key)), fold) for key, (proba, fold) in writer.maps.items()}


def assert_same_maps(one_pass: MemoryWriter, per_entry: MemoryWriter, name: str) -> None:
    a, b = levels_of(one_pass), levels_of(per_entry)
    assert sorted(a) == sorted(b), name
    for key in b:
        assert a[key][1] == b[key][1], (name, key)
        np.testing.assert_array_equal(a[key][0], b[key][0], err_msg=f"{name} {key}")


class CountingReader(StoreReader):
    """A StoreReader that counts every image it reads, per split (in this process)."""

    counts: Counter

    def __call__(self, ids):
        CountingReader.counts.update((self.split, img) for img in ids)
        return super().__call__(ids)


@pytest.fixture
def toy_store(tmp_path) -> tuple[Store, list[str], list[int], list[str]]:
    """The toy members' OOF maps and (noisier) test maps of 10 other photos in a real store."""
    maps, _, ids, fold = toy()
    test_maps, _, test_ids, _ = toy(seed=1)
    test_ids = [f"ffff{img[4:]}" for img in test_ids[:10]]
    store = Store(tmp_path / "oof")
    for m, name in enumerate(MEMBERS):
        with store.open_member(name, {"name": name}, "0" * 64, maps.shape[2:]) as writer:
            for i, img in enumerate(ids):
                writer.write("train", img, maps[i, m], fold=fold[i])
            for i, img in enumerate(test_ids):
                writer.write("test", img, test_maps[i, m])
    return store, ids, fold, test_ids


def toy_sources(store: Store, members, ids, fold, test_ids, reader=StoreReader, chunk=5):
    _, truth, _, _ = toy()
    position = {img: i for i, img in enumerate(ids)}
    train = TrainMaps(reader(store, tuple(members), "train"), lambda img: truth[position[img]], dict(zip(ids, fold)),
                      tuple(members), chunk=chunk)
    return train, MapsOfTest(reader(store, tuple(members), "test"), tuple(test_ids), chunk=3)


def toy_entries(storage: str) -> list[tuple[str, tuple[str, ...], Callable[[], Entry]]]:
    """(name, members, make) of every kind of estimator entry; some on a subset of the members, in another order."""
    stacker = {"max_pixels": 3000, "random_state": 0}
    tuned = {"storage": storage, "study": "blend", "n_trials": 4, "space": TuneSpace(per_angle=False)}
    return [
        *[(name, MEMBERS, lambda name=name: make_blender(name))
          for name in ("mean", "logit_mean", "vote", "weighted_mean", "selected")],
        ("lightgbm", MEMBERS, lambda: make_stacker("lightgbm", **stacker)),
        ("logistic", MEMBERS, lambda: make_stacker("logistic", **stacker)),
        ("guarded", MEMBERS, lambda: Guarded(entry=make_stacker("logistic", **stacker))),
        ("weighted_mean_20", ("m2", "m0"), lambda: make_blender("weighted_mean")),
        ("tuned", ("m0", "m2"), lambda: TunedBlend(**tuned)),
    ]


@pytest.mark.parametrize("n_jobs, fit_jobs", [(1, 1), (2, 2)])
def test_one_pass_writes_every_entry_byte_identical_to_the_per_entry_path(toy_store, tmp_path, n_jobs, fit_jobs):
    """Also with every fit in joblib workers at once (`stack.fit_jobs`) and the OOF and test chunks in workers."""
    store, ids, fold, test_ids = toy_store
    per_entry: dict[str, MemoryWriter] = {}
    for name, members, make in toy_entries(f"sqlite:///{tmp_path / 'per_entry.db'}"):
        per_entry[name] = MemoryWriter()
        per_entry_fit_predict(make, *toy_sources(store, members, ids, fold, test_ids), per_entry[name], n_jobs=n_jobs)
    jobs, sources = [], {}
    for name, members, make in toy_entries(f"sqlite:///{tmp_path / 'one_pass.db'}"):
        if members not in sources:  # entries on the same members share a source, as `workbench stack` shares them
            sources[members] = toy_sources(store, members, ids, fold, test_ids)
        jobs.append(CrossFitEntry(name, make, sources[members][0], MemoryWriter(), member_columns(members, MEMBERS)))
    models = fit_predict_all(jobs, *toy_sources(store, MEMBERS, ids, fold, test_ids), n_jobs=n_jobs, fit_jobs=fit_jobs)
    assert len(models) == len(jobs) and models[-1].params_ is not None
    for job in jobs:
        assert_same_maps(job.writer, per_entry[job.name], job.name)
        assert len(job.writer.maps) == len(ids) + len(test_ids)


@pytest.mark.slow
def test_ray_workers_predict_the_one_pass_in_windows_of_chunks(toy_store, tmp_path):
    """Ray's joblib backend returns no generator: the chunks go in windows, and the maps are the serial ones."""
    pytest.importorskip("ray")
    from workbench.compute import parallel_backend
    from workbench.config import ComputeConfig

    store, ids, fold, test_ids = toy_store
    runs = []
    for engine in ("serial", "ray"):
        jobs = [CrossFitEntry(name, make, toy_sources(store, members, ids, fold, test_ids)[0], MemoryWriter(),
                              member_columns(members, MEMBERS))
                for name, members, make in toy_entries(f"sqlite:///{tmp_path / engine}.db")[4:8]]
        if engine == "serial":
            fit_predict_all(jobs, *toy_sources(store, MEMBERS, ids, fold, test_ids))
        else:
            with parallel_backend(ComputeConfig(engine="ray", cpu_workers=2)) as n_jobs:
                fit_predict_all(jobs, *toy_sources(store, MEMBERS, ids, fold, test_ids), n_jobs=n_jobs)
        runs.append(jobs)
    for serial, ray in zip(*runs):
        assert_same_maps(ray.writer, serial.writer, ray.name)


def test_each_test_photo_is_read_once_for_every_entry(toy_store, tmp_path, capsys):
    store, ids, fold, test_ids = toy_store
    CountingReader.counts = Counter()
    train, test = toy_sources(store, MEMBERS, ids, fold, test_ids, reader=CountingReader)
    jobs = [CrossFitEntry(name, make, toy_sources(store, members, ids, fold, test_ids)[0], MemoryWriter(),
                          member_columns(members, MEMBERS))
            for name, members, make in toy_entries(f"sqlite:///{tmp_path / 'optuna.db'}")]
    fit_predict_all(jobs, train, test)
    assert CountingReader.counts == Counter({("test", img): 1 for img in test_ids} | {("train", img): 1 for img in ids})
    out = capsys.readouterr().out
    for job in jobs:  # each entry's line, as bench.scale reads it
        assert f"\n{job.name}: cross-fit " in f"\n{out}" and " s on test maps" in out


def test_member_columns_name_the_subset_and_refuse_others():
    assert member_columns(("a", "b"), ("a", "b")) is None
    assert member_columns(("c", "a"), ("a", "b", "c")) == (2, 0)
    with pytest.raises(ValueError, match="not among the maps read"):
        member_columns(("a", "d"), ("a", "b", "c"))


@pytest.mark.slow
def test_the_cnn_stacker_gets_its_photos_and_its_columns_in_the_one_pass(tiny_data_master):
    """The one entry that looks at the photos, on a subset of the members read, one epoch: the same maps."""
    import dataclasses

    from carvana.dataset import CarvanaData
    from stacking.maps import PhotoReader
    from zoo.cnn_stacker import CnnStacker

    data = CarvanaData(tiny_data_master)
    ids = sorted(data.train_ids)[:48]  # 3 cars, one per fold
    truth = np.stack([data.load_mask(i) for i in ids])
    rng = np.random.default_rng(0)
    maps = np.rint(np.clip(truth[:, None] * 0.7 + 0.15 + rng.normal(0, 0.2, (len(ids), 3, *truth.shape[1:])), 0, 1)
                   * 255).astype(np.uint8)
    fold = [i // 16 for i in range(len(ids))]
    photo = PhotoReader(tiny_data_master, "train")

    def sources(members: tuple[int, ...]) -> tuple[TrainMaps, MapsOfTest]:
        train = dataclasses.replace(TrainMaps.from_arrays(maps[:, list(members)], truth, ids=ids, fold=fold, chunk=8),
                                    photo=photo)
        return train, MapsOfTest(train.read, tuple(ids[::5]), chunk=3, photo=photo)  # train photos as test photos

    def make() -> CnnStacker:
        return CnnStacker(height=32, width=48, epochs=1, seed=3)

    reference = MemoryWriter()
    per_entry_fit_predict(make, *sources((2, 0)), reference)
    one_pass = CrossFitEntry("cnn_stacker", make, sources((2, 0))[0], MemoryWriter(), (2, 0))
    fit_predict_all([one_pass], *sources((0, 1, 2)))
    assert_same_maps(one_pass.writer, reference, "cnn_stacker")


# ---- `workbench stack` ---------------------------------------------------------------------------------------------
STACK = """
stack:
  blends: [mean, weighted_mean]
  stackers: [lightgbm, logistic]
  max_pixels: 5000
  n_submissions: 1
  postprocess: []
tune: {n_trials: 4, members: [c, a]}
compute: {cpu_workers: 1}
"""


def stored_members_run(data: Path, root: Path) -> Path:
    """A run without a zoo whose store holds members a, b, c: noisy maps of the truth (test: of blobs)."""
    from workbench.config import load_config
    from workbench.run import Run
    from workbench.steps import make_folds

    path = root / "run.yaml"
    path.write_text(f"data: {data}\nrun_dir: {root / 'run'}\nfolds: {{n_folds: 3}}\n" + STACK)
    config = load_config(path)
    make_folds(config)
    run = Run.open(config)
    rng = np.random.default_rng(0)
    store = Store(config.run_dir / "oof")
    for name, noise in zip("abc", (30, 60, 90)):
        with store.open_member(name, {"name": name}, run.folds.hash, run.resolution) as writer:
            for img, k in run.folds.fold_of.items():
                writer.write("train", img, np.clip(run.truth(img) * 230.0 + rng.normal(10, noise, run.resolution),
                                                   0, 255).astype(np.uint8), fold=k)
            for img in run.data.test_ids:
                writer.write("test", img, rng.integers(0, 256, run.resolution, dtype=np.uint8))
    return path


@pytest.mark.slow
def test_stack_writes_entries_byte_identical_to_the_per_entry_path_reading_test_maps_once(
    tiny_data, tmp_path, monkeypatch, capsys
):
    from workbench.config import load_config
    from workbench.entries import EntryContext, planned_entries
    from workbench.run import Run
    from workbench.stack import stack

    config = load_config(stored_members_run(tiny_data, tmp_path))
    reads: Counter = Counter()
    real_read = StoreReader.__call__

    def counted(self, ids):
        reads.update((self.split, img) for img in ids)
        return real_read(self, ids)

    monkeypatch.setattr(StoreReader, "__call__", counted)
    stack(config, progress=False)
    run = Run.open(config)
    assert {img for split, img in reads if split == "test"} == set(run.data.test_ids)
    assert all(n == 1 for (split, _), n in reads.items() if split == "test"), reads  # once, not once per entry
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("test maps: ")]) == 1
    monkeypatch.setattr(StoreReader, "__call__", real_read)
    planned = planned_entries(EntryContext.of(run, ["a", "b", "c"], False))
    assert [p.name for p in planned] == ["mean", "weighted_mean", "lightgbm", "logistic", "tuned"]
    assert planned[-1].members == ("c", "a")
    entries = run.entries_store
    for entry in planned:  # the tuned blend's studies are complete: the reference reads their best trials back
        reference = MemoryWriter()
        per_entry_fit_predict(entry.make, run.train_maps(entry.members), run.test_maps(entry.members), reference)
        for (split, img), (level, k) in levels_of(reference).items():
            np.testing.assert_array_equal(entries.read(entry.name, split, img), level, err_msg=f"{entry.name} {img}")
            if split == "train":
                assert entries.train_folds(entry.name)[img] == [k]


@pytest.mark.slow
def test_a_failed_pass_swaps_no_entry_in_and_a_rerun_builds_them(tiny_data, tmp_path, monkeypatch, capsys):
    import stacking.crossfit
    from workbench.config import load_config
    from workbench.stack import stack

    config = load_config(stored_members_run(tiny_data, tmp_path))
    real_chunk, calls = stacking.crossfit._predict_chunk, []

    def dies_on_the_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed in the test pass")
        return real_chunk(*args)

    monkeypatch.setattr(stacking.crossfit, "_predict_chunk", dies_on_the_second_chunk)
    with pytest.raises(RuntimeError, match="killed in the test pass"):
        stack(config, progress=False)
    entries = Store(config.run_dir / "stack")
    assert not entries.path.is_dir() or entries.members() == []  # no entry is complete before its test maps
    monkeypatch.setattr(stacking.crossfit, "_predict_chunk", real_chunk)
    capsys.readouterr()
    stack(config, progress=False)
    assert {"mean", "weighted_mean", "lightgbm", "logistic", "tuned"} <= set(entries.members())
    stack(config, progress=False)
    out = capsys.readouterr().out
    for name in ("mean", "weighted_mean", "lightgbm", "logistic", "tuned"):
        assert f"{name}: complete, skipped" in out
