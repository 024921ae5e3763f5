"""`workbench stack` / `make stack`: blends, learned stackers and the tuned blend over the members' OOF
maps, the mean of the learned ones, each scored honestly with car-grouped CV, the leaderboard, the report
and the submissions: the chosen entry (`stacking.choice`: the best by honest OOF score when its gain over the
simpler candidates is clear of the noise, never chosen by test score) and a second one.

The verb opens the Run (data checked once), streams the members' maps through the one cross-fit loop
(`stacking.crossfit.fit_predict`) for every entry and stores the entry's maps in a second store,
`RUN/stack/`, beside the members' `RUN/oof/`; a re-run skips entries already complete for the same
members and settings.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from carvana.atomic import copy_atomic
from carvana.errors import WorkbenchError
from oof import Store, rebuild, recover
from stacking.blenders import make_blender
from stacking.choice import Choice, choose, mark_choice
from stacking.crossfit import Entry, EntryT, TestClock, fit_predict
from stacking.ensemble import ENTRIES_MEAN, entries_mean_spec, is_learned, write_entries_mean
from stacking.leaderboard import EntryScore, add_gains, format_table, score_entries, write_leaderboard
from stacking.maps import TestMaps, TrainMaps
from stacking.pixel_stacker import make_stacker
from stacking.postprocess import postprocess_spec, postprocessed_name, write_postprocessed
from stacking.robust import Guarded
from workbench.compute import parallel_backend
from workbench.config import ExperimentConfig
from workbench.imports import imported_members
from workbench.report import report_members, write_report
from workbench.run import Run
from workbench.runlock import run_lock
from workbench.submit import SUBMISSION, local_score, submit
from workbench.tune import TUNED_ENTRY, complete_members, tuned_blend_factory
from zoo.runner import member_finished

CNN_ENTRY = "cnn_stacker"


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


def entry_spec(name: str, model: Entry, members: list[str], member_store: Store, data: dict) -> dict:
    """What an entry's maps depend on: its settings, the exact member maps it was fitted on and the data."""
    params = {k: repr(v) for k, v in model.get_params().items() if k != "progress"}
    return {
        "entry": name,
        "params": params,
        "members": members,
        "data": data,
        "member_generations": [member_store.metadata(m)["generation"] for m in members],
    }


def entry_complete(store: Store, name: str, spec: dict, n_train: int, n_test: int) -> bool:
    if not store.path.is_dir() or name not in store.members():
        return False
    try:
        meta = store.metadata(name)
    except WorkbenchError:  # a damaged member.json: the entry is rebuilt (beside it, swapped in when complete)
        return False
    return meta["spec"] == spec and len(store.ids(name, "train")) == n_train and len(store.ids(name, "test")) == n_test


def run_entry(
    run: Run,
    name: str,
    make: Callable[[], EntryT],
    train: TrainMaps,
    test: TestMaps,
    progress: bool,
    clock: TestClock | None = None,
) -> EntryT | None:
    """The entry's honest OOF maps and test maps in RUN/stack (skipped when complete); the fit on all folds."""
    store = run.entries_store
    spec = entry_spec(
        name, make(), list(train.members), run.members_store, {k: v for k, v in run.fingerprint.items() if k != "data"}
    )
    if entry_complete(store, name, spec, train.n_images, len(test.ids)):
        print(f"{name}: complete, skipped")
        return None
    with (
        rebuild(store, name) as beside,
        beside.open_member(name, spec, run.folds.hash, run.resolution) as writer,
        parallel_backend(run.config.compute) as n_jobs,
    ):
        return fit_predict(make, train, test, writer, progress=progress, desc=name, n_jobs=n_jobs, clock=clock)


def entry_factories(config: ExperimentConfig) -> dict[str, tuple[str, Callable[[], Entry]]]:
    """{entry name: (kind, a function making an unfitted estimator)} of the config's blends and stackers."""
    entries: dict[str, tuple[str, Callable[[], Entry]]] = {}
    for name in config.stack.blends:
        entries[name] = ("blend", functools.partial(make_blender, name))
    lo, hi = config.stack.band
    for name in config.stack.stackers:
        params = {
            "lo": lo,
            "hi": hi,
            "max_pixels": config.stack.max_pixels,
            "random_state": config.seed,
            "max_band_share": config.stack.max_band_share,
            "weighting": config.stack.weighting,
        }
        make: Callable[[], Entry]
        if config.stack.guard:
            make = functools.partial(Guarded, stacker=name, params=params)
        else:
            make = functools.partial(make_stacker, name, **params)
        entries[name] = ("stacker", make)
    if config.stack.cnn_epochs:
        entries[CNN_ENTRY] = ("cnn", lambda: cnn_stacker(config))
    return entries


def cnn_stacker(config: ExperimentConfig) -> Entry:
    from zoo.cnn_stacker import CnnStacker  # torch is imported only when the entry is fitted

    width, height = config.stack.cnn_size
    return CnnStacker(height=height, width=width, epochs=config.stack.cnn_epochs, seed=config.seed)


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
    train, test = run.train_maps(members), run.test_maps(members)
    kinds = {m: "member" for m in members}
    imported = set(imported_members(run.members_store))
    clock = TestClock()
    for name, (kind, make) in entry_factories(config).items():
        run_entry(run, name, make, train, test, progress, clock)
        kinds[name] = kind
    tuned_on = stack_tuned(run, members, train, test, progress, clock)
    kinds[TUNED_ENTRY] = "tuned"
    learned = [name for name, kind in kinds.items() if is_learned(name, kind)]
    if config.stack.entries_mean and len(learned) >= 2:
        stack_entries_mean(run, learned, clock)
        kinds[ENTRIES_MEAN] = "ensemble"
    stores = {"member": run.members_store}
    entries = [(stores.get(kind, run.entries_store), name, kind) for name, kind in kinds.items()]
    scores = score_entries(entries, run.data, run.folds, run.summary.size, progress=progress)
    for score in scores:
        if score.entry in imported:
            score.extra["source"] = "imported"
    tuned = next(s for s in scores if s.entry == TUNED_ENTRY)
    tuned.extra["tuned_on_mean_dice"] = f"{tuned_on:.6f}"  # optimistic: tuned and scored on the same images
    scores += stack_postprocessed(run, scores, progress, clock)
    print(f"test maps: {clock.seconds:.1f} s (every entry's test maps written by this stack, together)")
    add_gains(scores)
    choice = choose(scores)
    mark_choice(scores, choice)  # recorded in the leaderboard: `workbench submit` reads it back
    rows = write_leaderboard(config.run_dir / "leaderboard.csv", scores)
    print(f"\n{config.run_dir / 'leaderboard.csv'} (stack took {time.time() - start:.0f} s):")
    print(format_table(rows))
    print("\n".join(choice.lines()))
    print(f"report: {write_report(config.run_dir, run.data, rows, run.entries_store, run.members_store) / 'report.md'}")
    print(f"member report: {report_members(config.run_dir, rows, train)}")
    write_submissions(run, rows, choice, progress)
    return rows


def stack_tuned(
    run: Run, members: list[str], train: TrainMaps, test: TestMaps, progress: bool, clock: TestClock
) -> float:
    """The tuned blend through the same loop (its studies shared with `workbench tune`); its tuned-on score."""
    tuned_members = list(run.config.tune.members or members)
    if tuned_members != members:
        train, test = run.train_maps(tuned_members), run.test_maps(tuned_members)
    make = tuned_blend_factory(run, tuned_members, progress)
    model = run_entry(run, TUNED_ENTRY, make, train, test, progress, clock)
    return (model or make().fit(train)).params_.value  # a skipped entry: its finished study answers at once


def stack_entries_mean(run: Run, entries: list[str], clock: TestClock) -> None:
    """The mean of the learned entries' stored maps (`stacking.ensemble`); rebuilt when one of them changed."""
    store = run.entries_store
    spec = entries_mean_spec(store, entries)
    n_train, n_test = len(store.ids(entries[0], "train")), len(store.ids(entries[0], "test"))
    if entry_complete(store, ENTRIES_MEAN, spec, n_train, n_test):
        print(f"{ENTRIES_MEAN}: complete, skipped")
        return
    start = time.perf_counter()
    with (
        rebuild(store, ENTRIES_MEAN) as beside,
        beside.open_member(ENTRIES_MEAN, spec, run.folds.hash, run.resolution) as writer,
    ):
        write_entries_mean(store, entries, writer, clock)
    print(f"{ENTRIES_MEAN}: the mean of {', '.join(entries)}, {time.perf_counter() - start:.1f} s")


def stack_postprocessed(run: Run, scores: list[EntryScore], progress: bool, clock: TestClock) -> list[EntryScore]:
    """nnU-Net's rule: each of `stack.postprocess` applied to the best entry, kept only if it beats it on OOF."""
    best = max(scores, key=lambda s: s.oof_mean_dice)
    source, store = run.members_store if best.kind == "member" else run.entries_store, run.entries_store
    candidates = []
    for operation in run.config.stack.postprocess:
        name, spec = postprocessed_name(best.entry, operation), postprocess_spec(source, best.entry, operation)
        n_test = len(source.ids(best.entry, "test"))
        if not entry_complete(store, name, spec, len(source.ids(best.entry, "train")), n_test):
            with rebuild(store, name) as beside, beside.open_member(name, spec, run.folds.hash, run.resolution) as w:
                write_postprocessed(source, best.entry, operation, w, clock)
        candidates.append((store, name, "postprocess"))
    scored = score_entries(candidates, run.data, run.folds, run.summary.size, progress=progress)
    for s in scored:
        verdict = "kept" if s.oof_mean_dice > best.oof_mean_dice else "not kept"
        print(f"{s.entry}: OOF mean Dice {s.oof_mean_dice:.6f} vs {best.entry} {best.oof_mean_dice:.6f}: {verdict}")
    return [s for s in scored if s.oof_mean_dice > best.oof_mean_dice]


def write_submissions(run: Run, rows: list[dict], choice: Choice, progress: bool) -> None:
    """One submission per top entry by honest OOF, and for the chosen and the second entries, in
    RUN/submissions/ (for `workbench blend` and Kaggle's two picks); the chosen entry's as RUN/submission.csv.gz."""
    config = run.config
    folder = config.run_dir / "submissions"
    top = [row["entry"] for row in rows[: max(1, config.stack.n_submissions)]]
    for entry in dict.fromkeys([*top, choice.entry, *([choice.second] if choice.second else [])]):
        submit(config, entry=entry, out_path=folder / f"{entry}.csv.gz", progress=progress, run=run)
    path = config.run_dir / SUBMISSION
    copy_atomic(folder / f"{choice.entry}.json", path.with_name("submission.json"))
    copy_atomic(folder / f"{choice.entry}.csv.gz", path)
    second = f"; second submission: {folder / f'{choice.second}.csv.gz'}" if choice.second else ""
    print(f"\n{path}: from {choice.entry} (the chosen entry){second}")
    score = local_score(config, path, run=run)
    if score is not None:
        print(f"local score against {config.data / 'test_masks.csv'}: mean Dice {score.mean_dice:.6f}")
