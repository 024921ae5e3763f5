"""The table of stacking entries: which entries a config runs, how each is made, and the one function that
builds any entry's maps in the run's stack store.

Every entry is a scikit-learn estimator with one door, `fit(TrainMaps)` and `predict_proba(MapBatch)`
(`stacking.crossfit.Entry`). `ENTRY_TYPES` names every kind the workbench knows: the blends
(`stacking.blenders.BLENDERS`), the pixel stackers (`stacking.pixel_stacker.STACKERS`), the CNN stacker (torch,
in `zoo`) and the Optuna-tuned blend; with `stack.guard` the pixel stackers and the tuned blend are guarded by
inner folds (`stacking.robust`). `planned_entries` reads a config's `stack` section and lists what this run
fits, in order. `build_estimators` builds every estimator's maps through the one cross-fit loop in one pass over
the members' maps (`stacking.crossfit.fit_predict_all`); `build_entry` builds one entry made from stored maps
(the mean of the learned entries, post-processing) through its own writer. Both skip an entry complete for the
same members and settings, and rebuild the others beside their old maps, swapped in once complete.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from carvana.errors import WorkbenchError
from carvana.extras import require_extra
from carvana.registry import by_name
from oof import Store, rebuild
from stacking.blenders import BLENDERS, make_blender
from stacking.crossfit import CrossFitEntry, Entry, MapWriter, TestClock, fit_predict_all, member_columns
from stacking.maps import TestMaps, TrainMaps
from stacking.pixel_stacker import STACKERS, make_stacker
from stacking.robust import Guarded
from workbench.compute import parallel_backend
from workbench.config import ExperimentConfig
from workbench.run import Run
from workbench.tune import TUNED_ENTRY, study_context, tuned_blend

CNN_ENTRY = "cnn_stacker"


@dataclass(frozen=True)
class EntryContext:
    """What making a run's entries takes: the config, the members stacked, the tuned blend's members and the
    context its studies are named from (`workbench.tune.study_name`), and whether to draw progress bars."""

    config: ExperimentConfig
    members: tuple[str, ...]
    tuned_members: tuple[str, ...]
    study_context: dict
    progress: bool = False

    @classmethod
    def of(cls, run: Run, members: list[str], progress: bool) -> EntryContext:
        tuned = list(run.config.tune.members or members)
        return cls(run.config, tuple(members), tuple(tuned), study_context(run, tuned), progress)


@dataclass(frozen=True)
class EntryType:
    """A kind of entry: its leaderboard name and kind, and `make(context)` -> a new unfitted estimator."""

    name: str
    kind: str  # "blend" | "stacker" | "cnn" | "tuned" (the leaderboard's kind column)
    make: Callable[[EntryContext], Entry]
    tuned_members: bool = False  # fitted on `tune.members` (the tuned blend) rather than every stacked member


def _blend(name: str, context: EntryContext) -> Entry:
    return make_blender(name)


def stacker_params(config: ExperimentConfig) -> dict:
    """The pixel stackers' parameters (`stacking.pixel_stacker.PixelStacker`) a config's `stack` section sets."""
    stack = config.stack
    lo, hi = stack.band
    return {
        "lo": lo,
        "hi": hi,
        "max_pixels": stack.max_pixels,
        "random_state": config.seed,
        "max_band_share": stack.max_band_share,
        "weighting": stack.weighting,
        "monotone": stack.monotone,
    }


def _stacker(name: str, context: EntryContext) -> Entry:
    return _guarded(name, make_stacker(name, **stacker_params(context.config)), context)


def _guarded(name: str, entry: Entry, context: EntryContext) -> Entry:
    """`entry`, or `entry` guarded by inner folds (`stacking.robust.Guarded`) when the config's `stack.guard`."""
    return Guarded(entry=entry, name=name) if context.config.stack.guard else entry


def _cnn(context: EntryContext) -> Entry:
    from zoo.cnn_stacker import CnnStacker  # torch is imported only when a config asks for the entry

    config = context.config
    width, height = config.stack.cnn_size
    return CnnStacker(height=height, width=width, epochs=config.stack.cnn_epochs, seed=config.seed)


def _tuned(context: EntryContext) -> Entry:
    blend = tuned_blend(context.config, list(context.tuned_members), context.study_context, context.progress)
    return _guarded(TUNED_ENTRY, blend, context)


_registry = functools.partial(by_name, what="entry")

ENTRY_TYPES = _registry(
    [EntryType(name, "blend", functools.partial(_blend, name)) for name in BLENDERS]
    + [EntryType(name, "stacker", functools.partial(_stacker, name)) for name in STACKERS]
    + [EntryType(CNN_ENTRY, "cnn", _cnn), EntryType(TUNED_ENTRY, "tuned", _tuned, tuned_members=True)]
)


@dataclass(frozen=True)
class PlannedEntry:
    """One entry a stack fits: its name, kind, the members it is fitted on, and a maker of new estimators."""

    name: str
    kind: str
    members: tuple[str, ...]
    make: Callable[[], Entry]


def planned_entries(context: EntryContext) -> list[PlannedEntry]:
    """The config's entries in the order they are fitted: `stack.blends`, `stack.stackers`, the CNN stacker when
    `stack.cnn_epochs` > 0, and the tuned blend (always)."""
    stack = context.config.stack
    if stack.cnn_epochs:  # a core install has no PyTorch: one line naming the extra, before any entry is fitted
        require_extra("torch", "torch", "stack.cnn_epochs > 0 (the CNN stacker)")
    names = [*stack.blends, *stack.stackers, *([CNN_ENTRY] if stack.cnn_epochs else []), TUNED_ENTRY]
    planned = []  # the names are the table's: the config refuses others when it is loaded
    for name in names:
        entry = ENTRY_TYPES[name]
        members = context.tuned_members if entry.tuned_members else context.members
        planned.append(PlannedEntry(name, entry.kind, members, functools.partial(entry.make, context)))
    return planned


def estimator_spec(planned: PlannedEntry, member_store: Store, data: dict) -> dict:
    """What an estimator entry's maps depend on: its settings, the exact member maps it is fitted on, the data."""
    params = {k: repr(v) for k, v in planned.make().get_params().items() if k != "progress"}
    return {
        "entry": planned.name,
        "params": params,
        "members": list(planned.members),
        "data": data,
        "member_generations": [member_store.metadata(m)["generation"] for m in planned.members],
    }


def entry_complete(store: Store, name: str, spec: dict, n_train: int, n_test: int) -> bool:
    """Whether `name` in `store` holds every map (n_train OOF, n_test test) for exactly `spec`."""
    if not store.path.is_dir() or name not in store.members():
        return False
    try:
        meta = store.metadata(name)
    except WorkbenchError:  # a damaged member.json: the entry is rebuilt (beside it, swapped in when complete)
        return False
    return meta["spec"] == spec and len(store.ids(name, "train")) == n_train and len(store.ids(name, "test")) == n_test


def skipped(store: Store, name: str, spec: dict, n_maps: tuple[int, int]) -> tuple[bool, dict | None]:
    """(True, the result recorded with it) when `name` is complete for `spec`, saying that it is skipped; else
    (False, None): the one "skip when complete" of every entry."""
    if not entry_complete(store, name, spec, *n_maps):
        return False, None
    print(f"{name}: complete, skipped")
    return True, store.metadata(name).get("result")


def build_entry(
    run: Run, name: str, spec: dict, n_maps: tuple[int, int], write: Callable[[MapWriter], dict | None]
) -> dict | None:
    """Build entry `name`'s maps in the run's stack store unless they are complete for `spec` (then print that
    it was skipped): rebuilt beside the old maps by `write(writer)`, swapped in once complete. `write` may
    return a result worth keeping (e.g. the tuned blend's tuned-on score), recorded in the entry's member.json;
    returns that result (the recorded one for a skipped entry), or None."""
    store = run.entries_store
    complete, recorded = skipped(store, name, spec, n_maps)
    if complete:
        return recorded
    with rebuild(store, name) as beside, beside.open_member(name, spec, run.folds.hash, run.resolution) as writer:
        result = write(writer)
        if result is not None:
            writer.record(result)
    return result


class MemberMaps:
    """The run's TrainMaps and TestMaps of each tuple of members, made once (entries with the same members share
    one TrainMaps, so one evaluator pass)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.made: dict[tuple[str, ...], tuple[TrainMaps, TestMaps]] = {}

    def __call__(self, members: tuple[str, ...]) -> tuple[TrainMaps, TestMaps]:
        if members not in self.made:
            self.made[members] = (self.run.train_maps(members), self.run.test_maps(members))
        return self.made[members]


def build_estimators(
    run: Run, planned: Sequence[PlannedEntry], maps: MemberMaps, clock: TestClock, progress: bool
) -> dict[str, dict | None]:
    """Every estimator entry not yet complete through the one cross-fit loop, together (`fit_predict_all`): each
    entry's fits, then one read of the members' maps of every train chunk and test photo for all of them (the
    union of their members; test maps by joblib workers under the run's compute engine). Each entry is rebuilt
    beside its old maps and swapped in once its test maps are written; complete ones are skipped. Returns each
    entry's result (`fitted_result`, the recorded one for a skipped entry), in the planned order."""
    store, results, todo = run.entries_store, {}, []
    data = {k: v for k, v in run.fingerprint.items() if k != "data"}
    for entry in planned:
        spec, (train, test) = estimator_spec(entry, run.members_store, data), maps(entry.members)
        complete, results[entry.name] = skipped(store, entry.name, spec, (train.n_images, len(test.ids)))
        if not complete:
            todo.append((entry, spec))
    if todo:
        results.update(_build_together(run, todo, maps, clock, progress))
    return {entry.name: results[entry.name] for entry in planned}


def _build_together(
    run: Run, todo: list[tuple[PlannedEntry, dict]], maps: MemberMaps, clock: TestClock, progress: bool
) -> dict[str, dict | None]:
    """Each entry's maps written beside its old ones (its own writer), all swapped in after the test pass."""
    read = tuple(dict.fromkeys(m for entry, _ in todo for m in entry.members))  # the union, each member once
    results: dict[str, dict | None] = {}
    with contextlib.ExitStack() as opened:
        jobs, writers = [], []
        for entry, spec in todo:
            beside = opened.enter_context(rebuild(run.entries_store, entry.name))
            writer = opened.enter_context(beside.open_member(entry.name, spec, run.folds.hash, run.resolution))
            columns = member_columns(entry.members, read)
            jobs.append(CrossFitEntry(entry.name, entry.make, maps(entry.members)[0], writer, columns))
            writers.append(writer)
        with parallel_backend(run.config.compute) as n_jobs:
            fit_jobs = n_jobs if run.config.stack.fit_jobs == -1 else run.config.stack.fit_jobs
            models = fit_predict_all(
                jobs, *maps(read), progress=progress, n_jobs=n_jobs, fit_jobs=fit_jobs, clock=clock
            )
        for job, writer, model in zip(jobs, writers, models):
            result = results[job.name] = fitted_result(model)
            if result is not None:
                writer.record(result)
    return results


def fitted_result(model: Entry) -> dict | None:
    """What a fitted entry reports beyond its maps: the tuned blend's score on the images it was tuned on."""
    params = getattr(model, "params_", None)
    return None if params is None else {"tuned_on_mean_dice": float(params.value)}
