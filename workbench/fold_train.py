"""`workbench fold-train`: every member x fold of the config that is not finished, then each
member's test maps and the members' rows of the leaderboard."""
from __future__ import annotations

import time

from carvana.dataset import CarvanaData
from carvana.errors import WorkbenchError
from carvana.validate import check_data
from oof import Store
from stacking.leaderboard import format_table, score_entry, write_leaderboard
from workbench.config import ExperimentConfig
from workbench.steps import make_folds
from zoo.runner import (
    claim_member,
    fold_done,
    member_finished,
    predict_member_test,
    run_member_fold,
)


def store_resolution(config: ExperimentConfig, size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the store's maps: `oof.resolution` (given as W x H) or the data's size."""
    width, height = config.oof.resolution or size
    return height, width


def fold_train(config: ExperimentConfig, member: str | None = None, fold: int | None = None,
               retrain: tuple[str, ...] = (), progress: bool = True) -> None:
    """Train what is not finished; `member` / `fold` restrict the work to one job of a fan-out."""
    if not config.zoo:  # before make_folds writes anything
        raise WorkbenchError("the config has no `zoo: members:`; add members (see configs/demo.yaml)")
    summary = check_data(config.data)
    data = CarvanaData(config.data)
    folds = make_folds(config)
    if fold is not None and not 0 <= fold < folds.n_folds:
        raise WorkbenchError(f"--fold {fold}: this run has folds 0..{folds.n_folds - 1}")
    specs = [config.member(member)] if member else list(config.zoo)
    store = Store(config.run_dir / "oof")
    resolution = store_resolution(config, summary.size)
    start = time.time()
    for spec in specs:
        claim_member(config.run_dir, spec, folds.hash, retrain=spec.name in retrain)
        if spec.name in retrain:
            store.open_member(spec.name, spec.to_dict(), folds.hash, resolution, reset=True).close()
        for k in range(folds.n_folds) if fold is None else [fold]:
            if fold_done(config.run_dir, spec, k):
                print(f"{spec.name} fold {k}: done, skipped")
                continue
            run_member_fold(spec, k, data, folds, config.run_dir, store, resolution, progress)
            print(f"{spec.name} fold {k}: trained, OOF maps written")
        if all(fold_done(config.run_dir, spec, k) for k in range(folds.n_folds)):
            predict_member_test(spec, folds, data, config.run_dir, store, resolution, progress)
    # Members other jobs are still training are left out, not failed: fold jobs may run in parallel.
    finished = [s for s in config.zoo if member_finished(config.run_dir, s, folds.n_folds)]
    for spec in finished:
        store.check_coverage(spec.name, folds.fold_of, folds.hash)
        store.check_test(spec.name, data.test_ids)
    scores = [score_entry(store, s.name, "member", data, folds, summary.size) for s in finished]
    # Blend and stacker rows were built on the old member maps: they return with the next `stack`.
    rows = write_leaderboard(config.run_dir / "leaderboard.csv", scores, keep=lambda row: row["kind"] == "member")
    print(f"\n{config.run_dir / 'leaderboard.csv'} (fold-train took {time.time() - start:.0f} s):")
    print(format_table([r for r in rows if r["kind"] == "member"]))
