"""`workbench stack` / `make stack`: blends, learned stackers and the tuned blend over the members' OOF
maps, the mean of the learned ones, each scored honestly with car-grouped CV, the leaderboard, the report
and the submissions: the chosen entry (`stacking.choice`: the best by honest OOF score when its gain over the
simpler candidates is clear of the noise, never chosen by test score) and a second one.

The verb opens the Run (data checked once), fits the config's entries (`workbench.entries`: the table of
entries and the functions that build their maps) through the one cross-fit loop, every entry's maps
predicted in one pass over the members' maps (each test photo's maps read once for all entries), and stores
them in a second store, `RUN/stack/`, beside the members' `RUN/oof/`; a re-run skips entries already complete
for the same members and settings.
"""

from __future__ import annotations

import functools
import time

from carvana.atomic import copy_atomic
from carvana.errors import WorkbenchError
from oof import recover
from stacking.choice import Choice, choose, mark_choice
from stacking.crossfit import MapWriter, TestClock
from stacking.ensemble import ENTRIES_MEAN, entries_mean_spec, is_learned, write_entries_mean
from stacking.leaderboard import EntryScore, add_gains, format_table, score_entries, write_leaderboard
from stacking.postprocess import postprocess_spec, postprocessed_name, write_postprocessed
from workbench.compute import parallel_backend
from workbench.config import ExperimentConfig
from workbench.entries import EntryContext, MemberMaps, build_entry, build_estimators, planned_entries
from workbench.imports import imported_members
from workbench.report import report_members, write_report
from workbench.run import Run
from workbench.runlock import run_lock
from workbench.submit import local_score, submit
from workbench.tune import complete_members
from zoo.runner import member_finished


def finished_members(run: Run) -> list[str]:
    """The config's members with every fold trained and test maps made, and the imported members (coverage-
    and resolution-checked); without a zoo in the config, every member of the store with all its maps."""
    config, store, folds = run.config, run.members_store, run.folds
    if config.zoo:
        names = [s.name for s in config.zoo if member_finished(config.run_dir, s, folds.n_folds)]
        names += imported_members(store)
    else:
        test_ids = set(run.data.test_ids)
        names = [m for m in complete_members(store, folds.fold_of) if set(store.ids(m, "test")) == test_ids]
    unfinished = [s.name for s in config.zoo if s.name not in names]
    if unfinished:
        print(f"not stacked (not finished; run `workbench fold-train`): {', '.join(unfinished)}")
    if len(names) < 2:
        raise WorkbenchError(
            f"{store.path}: stacking needs at least 2 finished members, found {names}; "
            "run `workbench fold-train --config ...` first"
        )
    if config.tune.members and not set(config.tune.members) <= set(names):
        raise WorkbenchError(
            f"tune.members {list(config.tune.members)} must be finished members of the zoo or imported ones; "
            f"finished: {', '.join(names)}"
        )
    run.check_resolution(names)
    for name in names:
        store.check_coverage(name, folds.fold_of, folds.hash)
        store.check_test(name, run.data.test_ids)
    return names


def stack(config: ExperimentConfig, progress: bool = True) -> list[dict]:
    """Fit and score every entry, write the leaderboard, and return its rows (best first)."""
    start = time.time()
    run = Run.open(config)
    run.folds  # noqa: B018 (a run without folds is refused before the lock file is made)
    # The outer backend keeps one Ray connection (engine: ray) for every entry's test-map shards.
    with run_lock(config.run_dir, "stack"), parallel_backend(config.compute):
        recover(run.entries_store)
        return _stack(run, start, progress)


def _stack(run: Run, start: float, progress: bool) -> list[dict]:
    config = run.config
    members = finished_members(run)
    kinds = {m: "member" for m in members}
    imported = set(imported_members(run.members_store))
    clock, maps = TestClock(), MemberMaps(run)
    planned = planned_entries(EntryContext.of(run, members, progress))
    results = build_estimators(run, planned, maps, clock, progress)  # one pass over the members' maps for all
    kinds.update({entry.name: entry.kind for entry in planned})
    learned = [name for name, kind in kinds.items() if is_learned(name, kind)]
    if config.stack.entries_mean and len(learned) >= 2:
        stack_entries_mean(run, learned, clock)
        kinds[ENTRIES_MEAN] = "ensemble"
    stores = {"member": run.members_store}
    entries = [(stores.get(kind, run.entries_store), name, kind) for name, kind in kinds.items()]
    scores = score_entries(entries, run.data, run.folds, run.native_hw, progress=progress)
    for score in scores:
        if score.entry in imported:
            score.extra["source"] = "imported"
        for key, value in (results.get(score.entry) or {}).items():
            score.extra[key] = f"{value:.6f}"  # tuned_on_mean_dice: optimistic, tuned and scored on the same images
    scores += stack_postprocessed(run, scores, progress, clock)
    print(f"test maps: {clock.seconds:.1f} s (every entry's test maps written by this stack, together)")
    add_gains(scores)
    choice = choose(scores)
    mark_choice(scores, choice)  # recorded in the leaderboard: `workbench submit` reads it back
    rows = write_leaderboard(run.paths.leaderboard, scores)
    print(f"\n{run.paths.leaderboard} (stack took {time.time() - start:.0f} s):")
    print(format_table(rows))
    print("\n".join(choice.lines()))
    print(f"report: {write_report(config.run_dir, run.data, rows, run.entries_store, run.members_store) / 'report.md'}")
    print(f"member report: {report_members(config.run_dir, rows, maps(tuple(members))[0])}")
    write_submissions(run, rows, choice, progress)
    return rows


def stack_entries_mean(run: Run, entries: list[str], clock: TestClock) -> None:
    """The mean of the learned entries' stored maps (`stacking.ensemble`); rebuilt when one of them changed."""
    store = run.entries_store
    n_maps = len(store.ids(entries[0], "train")), len(store.ids(entries[0], "test"))
    started = time.perf_counter()

    def write(writer: MapWriter) -> None:
        write_entries_mean(store, entries, writer, clock)
        print(f"{ENTRIES_MEAN}: the mean of {', '.join(entries)}, {time.perf_counter() - started:.1f} s")

    build_entry(run, ENTRIES_MEAN, entries_mean_spec(store, entries), n_maps, write)


def stack_postprocessed(run: Run, scores: list[EntryScore], progress: bool, clock: TestClock) -> list[EntryScore]:
    """nnU-Net's rule: each of `stack.postprocess` applied to the best entry, kept only if it beats it on OOF."""
    best = max(scores, key=lambda s: s.oof_mean_dice)
    source = run.members_store if best.kind == "member" else run.entries_store
    n_maps = len(source.ids(best.entry, "train")), len(source.ids(best.entry, "test"))
    candidates = []
    for operation in run.config.stack.postprocess:
        name, spec = postprocessed_name(best.entry, operation), postprocess_spec(source, best.entry, operation)
        build_entry(
            run, name, spec, n_maps, functools.partial(write_postprocessed, source, best.entry, operation, clock=clock)
        )
        candidates.append((run.entries_store, name, "postprocess"))
    scored = score_entries(candidates, run.data, run.folds, run.native_hw, progress=progress)
    for s in scored:
        verdict = "kept" if s.oof_mean_dice > best.oof_mean_dice else "not kept"
        print(f"{s.entry}: OOF mean Dice {s.oof_mean_dice:.6f} vs {best.entry} {best.oof_mean_dice:.6f}: {verdict}")
    return [s for s in scored if s.oof_mean_dice > best.oof_mean_dice]


def write_submissions(run: Run, rows: list[dict], choice: Choice, progress: bool) -> None:
    """One submission per top entry by honest OOF, and for the chosen and the second entries, in
    RUN/submissions/ (for `workbench blend` and Kaggle's two picks); the chosen entry's as RUN/submission.csv.gz."""
    config = run.config
    folder = run.paths.submissions
    top = [row["entry"] for row in rows[: max(1, config.stack.n_submissions)]]
    for entry in dict.fromkeys([*top, choice.entry, *([choice.second] if choice.second else [])]):
        submit(config, entry=entry, out_path=folder / f"{entry}.csv.gz", progress=progress, run=run)
    path = run.paths.submission
    copy_atomic(folder / f"{choice.entry}.json", path.with_name("submission.json"))
    copy_atomic(folder / f"{choice.entry}.csv.gz", path)
    second = f"; second submission: {folder / f'{choice.second}.csv.gz'}" if choice.second else ""
    print(f"\n{path}: from {choice.entry} (the chosen entry){second}")
    score = local_score(config, path, run=run)
    if score is not None:
        print(f"local score against {config.data / 'test_masks.csv'}: mean Dice {score.mean_dice:.6f}")
