"""The OOF store: exact round trips, honest-coverage checks, the spec guard, concurrent fold writers."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from carvana.errors import WorkbenchError
from oof import Store
from oof.member import record_sessions

SHAPE = (32, 48)
FOLDS_HASH = hashlib.sha256(b"img,car,fold\n").hexdigest()
OTHER_HASH = hashlib.sha256(b"other folds").hexdigest()
SPEC = {"arch": "unet", "encoder": "resnet34", "size": (32, 48), "epochs": 1}
CARS = [f"{c:012x}" for c in (0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6)]
N_FOLDS = 3
FOLD_OF = {f"{car}_{angle:02d}": i % N_FOLDS for i, car in enumerate(CARS) for angle in (1, 2)}
TEST_IDS = [f"{0xFEED:012x}_{angle:02d}" for angle in (1, 2, 3)]


def smooth_map(seed: int) -> np.ndarray:
    """A (32, 48) uint8 map: mostly 0/255 with a soft band, like a real member's prediction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    dist = np.hypot((yy - 16) / 10, (xx - 24 + rng.integers(-3, 4)) / 18)
    return np.rint(np.clip((1.2 - dist) * 3, 0, 1) * 255).astype(np.uint8)


def honest_store(root: Path) -> Store:
    store = Store(root / "oof")
    with store.open_member("unet_resnet34_32", SPEC, FOLDS_HASH, SHAPE) as writer:
        for i, (img, fold) in enumerate(FOLD_OF.items()):
            writer.write("train", img, smooth_map(i), fold=fold)
        for i, img in enumerate(TEST_IDS):
            writer.write("test", img, smooth_map(100 + i))
    return store


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_round_trip_uint8_is_exact(tmp_path):
    store = honest_store(tmp_path)
    for i, img in enumerate(FOLD_OF):
        got = store.read("unet_resnet34_32", "train", img)
        assert got.dtype == np.uint8 and got.shape == SHAPE
        np.testing.assert_array_equal(got, smooth_map(i))
    np.testing.assert_array_equal(store.read("unet_resnet34_32", "test", TEST_IDS[1] + ".jpg"), smooth_map(101))


def test_float_input_rounds_like_the_obvious_version(tmp_path):
    store = Store(tmp_path / "oof")
    proba = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    proba[0, :4] = [0.0, 1.0, 0.5 / 255, 1.5 / 255]
    with store.open_member("m", SPEC, FOLDS_HASH, SHAPE) as writer:
        writer.write("test", TEST_IDS[0], proba)
    slow = np.array([[round(float(p) * 255.0) for p in row] for row in proba], dtype=np.uint8)
    np.testing.assert_array_equal(store.read("m", "test", TEST_IDS[0]), slow)


@pytest.mark.parametrize("bad", [np.nan, 1.01, -0.2])
def test_float_outside_unit_interval_is_refused(tmp_path, bad):
    store = Store(tmp_path / "oof")
    writer = store.open_member("m", SPEC, FOLDS_HASH, SHAPE)
    proba = np.full(SHAPE, 0.5, dtype=np.float32)
    proba[3, 4] = bad
    with pytest.raises(WorkbenchError, match=TEST_IDS[0]):
        writer.write("test", TEST_IDS[0], proba)
    assert not store.has("m", "test", TEST_IDS[0])


def test_ids_are_sorted_canonical_and_read_many_keeps_order(tmp_path):
    store = honest_store(tmp_path)
    assert store.members() == ["unet_resnet34_32"]
    assert store.ids("unet_resnet34_32", "train") == sorted(FOLD_OF)
    assert store.ids("unet_resnet34_32", "test") == sorted(TEST_IDS)
    assert store.has("unet_resnet34_32", "train", CARS[0] + "_01.jpg")
    assert not store.has("unet_resnet34_32", "test", CARS[0] + "_01")
    order = list(reversed(sorted(FOLD_OF)))
    for n_threads in (1, 4):
        many = store.read_many("unet_resnet34_32", "train", order, n_threads=n_threads)
        assert many.shape == (len(order), *SHAPE) and many.dtype == np.uint8
        for row, img in zip(many, order):
            np.testing.assert_array_equal(row, store.read("unet_resnet34_32", "train", img))
    with pytest.raises(ValueError, match="not an image id"):
        store.read("unet_resnet34_32", "train", CARS[0] + "_17")


def test_honest_store_passes_both_checks(tmp_path):
    store = honest_store(tmp_path)
    store.check_coverage("unet_resnet34_32", {img + ".jpg": fold for img, fold in FOLD_OF.items()}, FOLDS_HASH)
    store.check_test("unet_resnet34_32", TEST_IDS)


def test_missing_oof_map_is_refused(tmp_path):
    store = honest_store(tmp_path)
    img = sorted(FOLD_OF)[3]
    next((tmp_path / "oof" / "unet_resnet34_32" / "train").rglob(img + ".*")).unlink()
    with pytest.raises(WorkbenchError, match=rf"no OOF map of train image {img} \(fold {FOLD_OF[img]}\).*fold-train"):
        store.check_coverage("unet_resnet34_32", FOLD_OF, FOLDS_HASH)


def test_extra_oof_map_is_refused(tmp_path):
    store = honest_store(tmp_path)
    extra = f"{0xABC:012x}_05"
    store.write("unet_resnet34_32", "train", extra, smooth_map(0), fold=1)
    with pytest.raises(WorkbenchError, match=f"{extra}.*not in folds.csv"):
        store.check_coverage("unet_resnet34_32", FOLD_OF, FOLDS_HASH)


def test_map_from_the_fold_that_trained_on_the_car_is_a_leak(tmp_path):
    store = honest_store(tmp_path)
    img = sorted(FOLD_OF)[0]
    leaky_fold = (FOLD_OF[img] + 1) % N_FOLDS
    # Written by the wrong fold alone, and beside the right fold's map: both are leaks.
    store.write("unet_resnet34_32", "train", img, smooth_map(1), fold=leaky_fold)
    with pytest.raises(WorkbenchError, match=f"{img} was written by fold {leaky_fold}.*leak"):
        store.check_coverage("unet_resnet34_32", FOLD_OF, FOLDS_HASH)
    with pytest.raises(WorkbenchError, match="several folds"):
        store.read("unet_resnet34_32", "train", img)
    (tmp_path / "oof" / "unet_resnet34_32" / "train" / f"fold{FOLD_OF[img]}" / f"{img}.npy.zst").unlink()
    with pytest.raises(WorkbenchError, match="leak"):
        store.check_coverage("unet_resnet34_32", FOLD_OF, FOLDS_HASH)


def test_store_built_on_other_folds_is_refused(tmp_path):
    store = honest_store(tmp_path)
    with pytest.raises(WorkbenchError, match=r"unet_resnet34_32.*other folds.*fold-train --retrain unet_resnet34_32"):
        store.check_coverage("unet_resnet34_32", FOLD_OF, OTHER_HASH)


def test_test_maps_missing_or_extra_are_refused(tmp_path):
    store = honest_store(tmp_path)
    with pytest.raises(WorkbenchError, match=f"no test map of {0xFEED:012x}_04"):
        store.check_test("unet_resnet34_32", TEST_IDS + [f"{0xFEED:012x}_04"])
    with pytest.raises(WorkbenchError, match=f"test map of {TEST_IDS[0]}, an image not in the test set"):
        store.check_test("unet_resnet34_32", TEST_IDS[1:])


@pytest.mark.parametrize(
    "change", [{"spec": {**SPEC, "epochs": 2}}, {"folds_hash": OTHER_HASH}, {"resolution": (64, 96)}]
)
def test_changed_member_is_refused_and_reset_starts_afresh(tmp_path, change):
    store = honest_store(tmp_path)
    created = store.metadata("unet_resnet34_32")["created"]
    args = {"spec": SPEC, "folds_hash": FOLDS_HASH, "resolution": SHAPE, **change}
    with pytest.raises(WorkbenchError, match="unet_resnet34_32.*different.*--retrain unet_resnet34_32"):
        store.open_member("unet_resnet34_32", **args)
    assert len(store.ids("unet_resnet34_32", "train")) == len(FOLD_OF)
    # Reopening unchanged keeps the maps (a re-run job resumes); a tuple spec equals its JSON list.
    store.open_member("unet_resnet34_32", {**SPEC, "size": [32, 48]}, FOLDS_HASH, list(SHAPE))
    assert store.metadata("unet_resnet34_32")["created"] == created
    store.open_member("unet_resnet34_32", reset=True, **args)
    assert store.ids("unet_resnet34_32", "train") == [] and store.ids("unet_resnet34_32", "test") == []
    meta = store.metadata("unet_resnet34_32")
    assert meta["folds_hash"] == args["folds_hash"] and tuple(meta["resolution"]) == tuple(args["resolution"])
    assert meta["spec"] == {**args["spec"], "size": list(args["spec"]["size"])}


def test_settings_that_do_not_shape_the_maps_may_change_when_a_member_resumes(tmp_path):
    """A zoo member recorded with `num_workers: 0` resumes with `auto` (zoo.spec.UNSHAPING); any other change is
    still refused, and a store asked to compare everything still refuses the loading setting too."""
    from zoo.spec import UNSHAPING, MemberSpec, TrainConfig

    def spec(**train: object) -> MemberSpec:
        return MemberSpec("unet_resnet18_32", "unet", 32, 48, encoder="resnet18", train=TrainConfig(**train))

    store = Store(tmp_path / "oof")
    before, after, other = spec(num_workers=0), spec(), spec(epochs=9)
    assert before.to_dict() != after.to_dict() and before.hash == after.hash
    store.open_member(after.name, before.to_dict(), FOLDS_HASH, SHAPE, unshaping=UNSHAPING).close()
    store.open_member(after.name, after.to_dict(), FOLDS_HASH, SHAPE, unshaping=UNSHAPING).close()
    assert store.metadata(after.name)["spec"] == json.loads(json.dumps(before.to_dict()))  # the record is kept
    with pytest.raises(WorkbenchError, match=r"different spec \(keys train\)"):
        store.open_member(after.name, after.to_dict(), FOLDS_HASH, SHAPE)
    with pytest.raises(WorkbenchError, match=r"different spec \(keys train\)"):
        store.open_member(after.name, other.to_dict(), FOLDS_HASH, SHAPE, unshaping=UNSHAPING)


def test_writer_of_a_member_reset_meanwhile_is_stopped(tmp_path):
    store = Store(tmp_path / "oof")
    stale = store.open_member("m", SPEC, FOLDS_HASH, SHAPE)
    Store(tmp_path / "oof").open_member("m", {**SPEC, "epochs": 9}, FOLDS_HASH, SHAPE, reset=True)
    with pytest.raises(WorkbenchError, match="reset by another process"):
        stale.write("test", TEST_IDS[0], smooth_map(0))


def test_every_member_shares_the_store_resolution(tmp_path):
    store = honest_store(tmp_path)
    with pytest.raises(WorkbenchError, match=r"unet_resnet34_32 holds maps at \(32, 48\)"):
        store.open_member("other", SPEC, FOLDS_HASH, (64, 96))
    with pytest.raises(WorkbenchError, match=r"resize predictions"):
        store.write("unet_resnet34_32", "test", TEST_IDS[0], np.zeros((64, 96), np.uint8))


def test_fold_is_required_for_train_and_refused_for_test(tmp_path):
    store = honest_store(tmp_path)
    img = sorted(FOLD_OF)[0]
    with pytest.raises(ValueError, match="needs the fold"):
        store.write("unet_resnet34_32", "train", img, smooth_map(0))
    with pytest.raises(ValueError, match="fold=None"):
        store.write("unet_resnet34_32", "test", TEST_IDS[0], smooth_map(0), fold=0)


def _write_fold(store_path: str, fold: int, n_rounds: int) -> None:
    """One fold job: reopen the member and write this fold's images, several rounds (a spawned process)."""
    store = Store(store_path)
    for _ in range(n_rounds):
        with store.open_member("unet_resnet34_32", SPEC, FOLDS_HASH, SHAPE) as writer:
            for i, (img, img_fold) in enumerate(FOLD_OF.items()):
                if img_fold == fold:
                    writer.write("train", img, smooth_map(i), fold=fold)


def test_concurrent_fold_writers_keep_metadata_consistent(tmp_path):
    store_path = tmp_path / "oof"
    context = multiprocessing.get_context("spawn")
    jobs = [context.Process(target=_write_fold, args=(str(store_path), fold, 15)) for fold in (0, 1)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert [job.exitcode for job in jobs] == [0, 0]
    _write_fold(str(store_path), 2, 1)
    store = Store(store_path)
    store.check_coverage("unet_resnet34_32", FOLD_OF, FOLDS_HASH)
    sessions = store.metadata("unet_resnet34_32")["sessions"]
    per_fold = {f"train/fold{k}": sum(f == k for f in FOLD_OF.values()) for k in range(N_FOLDS)}
    assert {name: s["n_maps"] for name, s in sessions.items()} == per_fold
    assert not [p for p in files_under(store_path) if p.name.endswith(".tmp")]


def _record_many(store_path: str, fold: int, n_records: int, barrier) -> None:
    """Many read-modify-writes of member.json, each adding its own key (a spawned process)."""
    meta = Store(store_path).metadata("m")
    barrier.wait()
    for i in range(n_records):
        record_sessions(Path(store_path) / "m", meta["generation"], {f"train/fold{fold}/{i}": i})


def test_concurrent_metadata_updates_lose_nothing(tmp_path):
    store = Store(tmp_path / "oof")
    store.open_member("m", SPEC, FOLDS_HASH, SHAPE)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    jobs = [context.Process(target=_record_many, args=(str(store.path), fold, 50, barrier)) for fold in (0, 1)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert [job.exitcode for job in jobs] == [0, 0]
    assert len(store.metadata("m")["sessions"]) == 2 * 50


def test_writes_leave_no_temp_files_even_when_they_fail(tmp_path, monkeypatch):
    store = honest_store(tmp_path)
    names = {p.name for p in files_under(tmp_path / "oof")}
    assert names == {"member.json", ".lock"} | {f"{img}.npy.zst" for img in [*FOLD_OF, *TEST_IDS]}

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("carvana.atomic.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.write("unet_resnet34_32", "test", f"{0xFEED:012x}_09", smooth_map(0))
    assert {p.name for p in files_under(tmp_path / "oof")} == names


def test_missing_store_and_damaged_map_give_clear_errors(tmp_path):
    missing = Store(tmp_path / "no_run" / "oof")
    for call in (missing.members, lambda: missing.read("m", "train", sorted(FOLD_OF)[0])):
        with pytest.raises(WorkbenchError, match=r"no_run/oof: no OOF store here.*fold-train"):
            call()
    store = honest_store(tmp_path)
    with pytest.raises(WorkbenchError, match=r"no member 'nope'.*members: unet_resnet34_32"):
        store.ids("nope", "train")
    path = tmp_path / "oof" / "unet_resnet34_32" / "test" / f"{TEST_IDS[0]}.npy.zst"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(WorkbenchError, match=rf"{TEST_IDS[0]}.npy.zst: damaged map"):
        store.read("unet_resnet34_32", "test", TEST_IDS[0])
