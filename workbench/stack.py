"""`workbench stack` / `make stack`: blends and learned stackers over the members' OOF maps, each
scored honestly with car-grouped CV, Optuna-tuned thresholds and weights, the leaderboard, and the
submission from the best entry by honest OOF score (never by test score).

Every entry is fitted on the OOF maps of folds != k and predicts fold k (its own OOF maps, which its
score comes from), then refitted on every fold to predict the test set. Entry maps live in a second
store, `RUN/stack/`, beside the members' `RUN/oof/`; a re-run skips entries already complete for
the same members and settings.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from carvana.atomic import copy_atomic
from carvana.dataset import CarvanaData, angle_of
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from carvana.validate import check_data
from folds import Folds
from oof import Store
from stacking.blenders import make_blender
from stacking.leaderboard import (
    EntryScore,
    format_table,
    score_entry,
    write_leaderboard,
)
from stacking.oof_table import OofTable, test_maps
from stacking.pixel_stacker import PixelStacker, make_stacker
from workbench.config import ExperimentConfig
from workbench.report import write_report
from workbench.steps import load_folds
from workbench.submit import SUBMISSION, local_score, submit
from workbench.tuned_entry import ENTRY, run_tuned_entry
from zoo.runner import member_finished

TEST_CHUNK = 32  # test images blended at a time: bounded memory at any test size


def finished_members(config: ExperimentConfig, store: Store, folds: Folds, data: CarvanaData) -> list[str]:
    """The config's members with every fold trained and test maps made (coverage-checked)."""
    names = [s.name for s in config.zoo if member_finished(config.run_dir, s, folds.n_folds)]
    unfinished = [s.name for s in config.zoo if s.name not in names]
    if unfinished:
        print(f"not stacked (not finished; run `workbench fold-train`): {', '.join(unfinished)}")
    if len(names) < 2:
        raise WorkbenchError(f"{store.path}: stacking needs at least 2 finished members, found {names}; "
                             "run `workbench fold-train --config ...` first")
    if config.tune.members and not set(config.tune.members) <= set(names):
        raise WorkbenchError(f"tune.members {list(config.tune.members)} must be finished members of the zoo; "
                             f"finished: {', '.join(names)}")
    for name in names:
        store.check_coverage(name, folds.fold_of, folds.hash)
        store.check_test(name, data.test_ids)
    return names


def entry_spec(name: str, model, members: list[str], member_store: Store) -> dict:
    """What an entry's maps depend on: its settings and the exact member maps it was fitted on."""
    return {"entry": name, "params": {k: repr(v) for k, v in model.get_params().items()}, "members": members,
            "member_generations": [member_store.metadata(m)["generation"] for m in members]}


def entry_complete(store: Store, name: str, spec: dict, n_train: int, n_test: int) -> bool:
    if not store.path.is_dir() or name not in store.members():
        return False
    meta = store.metadata(name)
    return (meta["spec"] == spec and len(store.ids(name, "train")) == n_train
            and len(store.ids(name, "test")) == n_test)


def fit_model(model, table: OofTable, idx: np.ndarray):
    """Fit on the images at `idx`; pixel stackers stream them (no copy of the maps)."""
    if isinstance(model, PixelStacker):
        stream = ((table.maps[i], table.truth[i], int(table.angle[i])) for i in idx)
        return model.fit(stream, n_images=len(idx))
    return model.fit(table.maps[idx], table.truth[idx])


def predict_model(model, maps: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(n, H, W) float32 from (n, M, H, W) uint8 member maps; pixel stackers also use the angles."""
    if isinstance(model, PixelStacker):
        return model.predict_proba(maps, angles=angles)
    return model.predict_proba(maps)


def run_entry(name: str, make: Callable[[], object], table: OofTable, folds: Folds, entry_store: Store,
              member_store: Store, test_ids: list[str], progress: bool) -> None:
    """Nested car-grouped CV maps for the train images, then a fit on all folds for the test images."""
    spec = entry_spec(name, make(), table.members, member_store)
    resolution = table.truth.shape[1:]
    if entry_complete(entry_store, name, spec, len(table.ids), len(test_ids)):
        print(f"{name}: complete, skipped")
        return
    reset = entry_store.path.is_dir() and name in entry_store.members()
    with entry_store.open_member(name, spec, folds.hash, resolution, reset=reset) as writer:
        for k in progress_bar(range(folds.n_folds), desc=f"{name}: nested CV", leave=False, disable=not progress):
            fit_idx, held = table.select([j for j in range(folds.n_folds) if j != k]), table.select([k])
            model = fit_model(make(), table, fit_idx)
            for i, proba in zip(held, predict_model(model, table.maps[held], table.angle[held])):
                writer.write("train", table.ids[i], proba, fold=k)
        model = fit_model(make(), table, np.arange(len(table.ids)))
        for start in range(0, len(test_ids), TEST_CHUNK):
            chunk = test_ids[start:start + TEST_CHUNK]
            angles = np.array([angle_of(img) for img in chunk])
            for img, proba in zip(chunk, predict_model(model, test_maps(member_store, table.members, chunk), angles)):
                writer.write("test", img, proba)


def entry_factories(config: ExperimentConfig) -> dict[str, tuple[str, Callable[[], object]]]:
    """{entry name: (kind, a function making an unfitted estimator)}."""
    entries: dict[str, tuple[str, Callable[[], object]]] = {}
    for name in config.stack.blends:
        entries[name] = ("blend", lambda name=name: make_blender(name))
    for name in config.stack.stackers:
        lo, hi = config.stack.band
        entries[name] = ("stacker", lambda name=name: make_stacker(name, lo=lo, hi=hi, max_pixels=config.stack.max_pixels,
                                                                  random_state=config.seed))
    return entries


def stack(config: ExperimentConfig, progress: bool = True) -> list[dict]:
    """Fit and score every entry, write the leaderboard, and return its rows (best first)."""
    start = time.time()
    summary = check_data(config.data)
    data = CarvanaData(config.data)
    folds = load_folds(config)
    member_store, entry_store = Store(config.run_dir / "oof"), Store(config.run_dir / "stack")
    members = finished_members(config, member_store, folds, data)
    table = OofTable.load(member_store, members, data, folds, (summary.size[1], summary.size[0]))
    scores: list[EntryScore] = [score_entry(member_store, m, "member", data, folds, summary.size) for m in members]
    for name, (kind, make) in entry_factories(config).items():
        run_entry(name, make, table, folds, entry_store, member_store, data.test_ids, progress)
        scores.append(score_entry(entry_store, name, kind, data, folds, summary.size))
    tuned_on = run_tuned_entry(config, table, folds, entry_store, member_store, data.test_ids, progress)
    scores.append(score_entry(entry_store, ENTRY, "tuned", data, folds, summary.size))
    scores[-1].extra["tuned_on_mean_dice"] = f"{tuned_on:.6f}"  # optimistic: tuned and scored on the same images
    rows = write_leaderboard(config.run_dir / "leaderboard.csv", scores)
    print(f"\n{config.run_dir / 'leaderboard.csv'} (stack took {time.time() - start:.0f} s):")
    print(format_table(rows))
    print(f"report: {write_report(config.run_dir, data, rows, entry_store, member_store) / 'report.md'}")
    write_submissions(config, rows, progress)
    return rows


def write_submissions(config: ExperimentConfig, rows: list[dict], progress: bool) -> None:
    """One submission per top entry in RUN/submissions/ (for `workbench blend`), and the best entry's
    (by honest OOF score) as RUN/submission.csv.gz."""
    folder = config.run_dir / "submissions"
    for row in rows[:max(1, config.stack.n_submissions)]:
        submit(config, entry=row["entry"], out_path=folder / f"{row['entry']}.csv.gz", progress=progress)
    best = rows[0]["entry"]
    path = config.run_dir / SUBMISSION
    copy_atomic(folder / f"{best}.json", path.with_name("submission.json"))
    copy_atomic(folder / f"{best}.csv.gz", path)
    print(f"\n{path}: from {best} (best honest OOF mean Dice {float(rows[0]['oof_mean_dice']):.6f})")
    score = local_score(config, path)
    if score is not None:
        print(f"local score against {config.data / 'test_masks.csv'}: mean Dice {score.mean_dice:.6f}")
