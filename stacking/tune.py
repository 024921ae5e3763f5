"""Optuna tuning of the blend's threshold (global or per angle) and member weights on honest OOF maps.

Every trial is scored by `DiceEvaluator` (exact mean per-image Dice, see stacking/evaluate.py) on the
images of some folds. The search space (`TuneSpace`) has these parameters:

* `threshold`: the global threshold in `threshold_range`.
* `t01`..`t16` (per_angle): OFFSETS added to `threshold` for photos of that angle, in +-max_offset;
  the angle's threshold is clip(threshold + offset, *threshold_range). Offsets (not absolute values)
  keep `threshold` meaningful and let TPE move all angles at once.
* `w_<member>` (tune_weights, 2+ members): weights in [0, 1], normalised by the evaluator; all zero
  counts as equal weights.

`stacking.tuned` makes the tuned blend an entry and the tuning honest (`nested_tune`): the params applied to
fold k's images come from a study that never scored a fold-k image; the full study (all folds) gives the
params for the test set. Studies live in any Optuna storage (`stacking.storage`); several processes may work
on one study at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import optuna

from carvana.atomic import pid_alive
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from oof import Store
from stacking.evaluate import (
    N_ANGLES,
    FoldedEvaluator,
)
from stacking.storage import fail_silent_trials, open_storage, quiet_experimental

WORKER = f"{socket.gethostname()}:{os.getpid()}"
METRIC = "mean Dice"  # the objective's name, shown by optuna-dashboard
ATTR = "workbench_tune"  # the study's user attr holding the members, folds, space and context it was tuned with
COMPLETE, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
_ALIVE = (COMPLETE, RUNNING, optuna.trial.TrialState.WAITING)  # trials that will end COMPLETE unless they fail


def build_folded_evaluator(
    store: Store, members: Sequence[str], fold_of: Mapping[str, int], truths: Callable[[str], np.ndarray]
) -> FoldedEvaluator:
    """One DiceEvaluator per fold of `fold_of` ({img: fold}), streamed from the store in one pass.

    `truths(img)` must give the (H, W) 0/1 truth at the store's resolution."""
    from stacking.maps import StoreReader, TrainMaps

    train = TrainMaps(StoreReader(store, tuple(members), "train"), truths, fold_of, tuple(members))
    return train.evaluator().folded


@dataclass(frozen=True)
class TuneSpace:
    """What a study searches: see the module docstring for the parameters."""

    per_angle: bool = True
    tune_weights: bool = True
    threshold_range: tuple[float, float] = (0.2, 0.8)
    max_offset: float = 0.1

    def __post_init__(self) -> None:
        low, high = self.threshold_range
        if not 0 < low <= 0.5 <= high <= 1:
            raise ValueError(f"threshold_range must satisfy 0 < low <= 0.5 <= high <= 1, got {self.threshold_range}")
        if not 0 < self.max_offset <= 0.5:
            raise ValueError(f"max_offset must be in (0, 0.5], got {self.max_offset}")

    def distributions(self, members: Sequence[str]) -> dict[str, optuna.distributions.FloatDistribution]:
        """The search space: `threshold`, then `t01`..`t16` (per_angle), then `w_<member>` (tune_weights)."""
        space = {"threshold": optuna.distributions.FloatDistribution(*self.threshold_range)}
        for a in range(1, N_ANGLES + 1) if self.per_angle else ():
            space[f"t{a:02d}"] = optuna.distributions.FloatDistribution(-self.max_offset, self.max_offset)
        for m in members if self.tune_weights and len(members) > 1 else ():
            space[f"w_{m}"] = optuna.distributions.FloatDistribution(0.0, 1.0)
        return space

    def baseline(self, members: Sequence[str]) -> dict[str, float]:
        """The plain blend's params: threshold 0.5 for every angle, equal weights."""
        return {
            name: 0.5 if name == "threshold" else 0.0 if name[0] == "t" else 1.0 for name in self.distributions(members)
        }

    def suggest(self, trial: optuna.Trial, members: Sequence[str]) -> dict[str, float]:
        return {name: trial.suggest_float(name, d.low, d.high) for name, d in self.distributions(members).items()}

    def decode(self, params: Mapping[str, float], members: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(thresholds (16,) float64 by angle, weights (M,) float64 summing to 1) of a trial's params."""
        offsets = np.array([params.get(f"t{a:02d}", 0.0) for a in range(1, N_ANGLES + 1)])
        threshold = np.clip(params["threshold"] + offsets, *self.threshold_range)
        weights = np.array([params.get(f"w_{m}", 1.0) for m in members], dtype=np.float64)
        if weights.sum() <= 0:
            weights = np.ones(len(members))
        return threshold, weights / weights.sum()


@dataclass
class TunedParams:
    """A study's best trial, decoded: threshold (16,) by angle, weights (M,) in `members` order."""

    threshold: np.ndarray
    weights: np.ndarray
    value: float
    n_trials: int  # COMPLETE trials in the study
    members: tuple[str, ...] = ()
    params: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold.tolist(),
            "weights": dict(zip(self.members, self.weights.tolist())),
            "value": self.value,
            "n_trials": self.n_trials,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, saved: Mapping) -> TunedParams:
        """Read back `to_dict` (e.g. RUN/tune.json's "params")."""
        return cls(
            np.array(saved["threshold"], dtype=np.float64),
            np.array(list(saved["weights"].values())),
            float(saved["value"]),
            int(saved["n_trials"]),
            tuple(saved["weights"]),
            dict(saved["params"]),
        )


def tune_study(
    evaluator: FoldedEvaluator,
    folds: Sequence[int],
    members: Sequence[str],
    space: TuneSpace,
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    n_trials: int,
    seed: int,
    *,
    context: Mapping[str, object] | None = None,
    progress: bool = False,
    user_attrs: Mapping[str, object] | None = None,
    starts: Callable[[], Sequence[Mapping[str, float]]] | None = None,
) -> TunedParams:
    """Run trials until the study has `n_trials` COMPLETE trials in total; return its best.

    A new study starts with the baseline (threshold 0.5, equal weights) as trial 0 and then the params
    `starts()` returns (called only then; e.g. the weighted blend's weights: warm starts that TPE refines)
    as finished trials, all counted in `n_trials`. Re-running continues
    the study; several processes on one study together stop at `n_trials`. `context` (JSON-able,
    e.g. the folds' hash) is stored with the members, folds and space: reusing the study with any of
    them different is refused. `user_attrs` (e.g. run, entry, outer fold) are written on the new study as
    readable attributes for optuna-dashboard; the metric is named "mean Dice". The sampler's seed is `seed`
    + the number of trials already there, so a single process is reproducible and a worker joining later
    draws other random trials.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    storage = open_storage(storage) if isinstance(storage, str) else storage
    attrs = {
        "members": list(members),
        "folds": [int(k) for k in folds],
        "space": _jsonable(asdict(space)),
        "context": _jsonable(dict(context or {})),
    }
    baseline = space.baseline(members)

    def first_trials() -> list[optuna.trial.FrozenTrial]:
        warm = starts() if starts is not None and n_trials > 1 else ()
        distributions: dict[str, optuna.distributions.BaseDistribution] = {**space.distributions(members)}
        return [
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=evaluator.score(*space.decode(params, members), folds),
                user_attrs={"worker": WORKER, kind: True},
            )
            for kind, params in [("baseline", baseline), *(("warm_start", {**baseline, **p}) for p in warm)]
        ][:n_trials]

    study = _open_study(storage, study_name, attrs, first_trials, user_attrs or {})
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)))
    surplus: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", WORKER)
        ahead = sum(t.number < trial.number for t in trial.study.get_trials(deepcopy=False, states=_ALIVE))
        if ahead >= n_trials:  # another worker took the last slot between our count and our ask
            surplus.append(trial.number)
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned(f"surplus: the study already has {n_trials} trials")
        threshold, weights = space.decode(space.suggest(trial, members), members)
        return evaluator.score(threshold, weights, folds)

    with progress_bar(total=n_trials, desc=study_name, disable=not progress, leave=False) as bar:
        while not surplus:
            n_done, n_running = _count_trials(study)
            bar.update(n_done - bar.n)
            if n_done + n_running >= n_trials:
                break
            study.optimize(objective, n_trials=1)
    return best_params(study, members, space)


def best_params(study: optuna.Study, members: Sequence[str], space: TuneSpace) -> TunedParams:
    """The study's best trial as TunedParams (WorkbenchError when it has no complete trial)."""
    complete = study.get_trials(deepcopy=False, states=(COMPLETE,))
    if not complete:
        raise WorkbenchError(f"study {study.study_name}: no complete trial yet; run `workbench tune` to add some")
    best = max(complete, key=lambda t: (t.value, -t.number))
    assert best.value is not None  # a complete trial has its value
    threshold, weights = space.decode(best.params, members)
    return TunedParams(threshold, weights, float(best.value), len(complete), tuple(members), dict(best.params))


def _count_trials(study: optuna.Study) -> tuple[int, int]:
    """(COMPLETE, live RUNNING) trials, after failing the RUNNING trials of workers that died."""
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)  # heartbeat storages only; a no-op elsewhere
    fail_silent_trials(study)  # journal storages: workers dead on any host
    trials = study.get_trials(deepcopy=False)
    host = socket.gethostname()
    n_running = 0
    for trial in trials:
        if trial.state != RUNNING:
            continue
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            n_running += 1
    return sum(t.state == COMPLETE for t in trials), n_running


def _open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    attrs: dict,
    first_trials: Callable[[], list[optuna.trial.FrozenTrial]],
    labels: Mapping[str, object],
) -> optuna.Study:
    """Create the study with its first trials (the baseline, warm starts) finished, or load it and refuse a
    mismatched reuse.

    Not enqueue_trial: on SQLite two workers can both pop the same WAITING trial (no row locks there).
    """
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        _check_attrs(study, attrs)
        return study
    study.set_user_attr(ATTR, attrs)  # one write, so a worker loading the study sees all of it or nothing
    with quiet_experimental():
        study.set_metric_names([METRIC])
    for key, value in labels.items():  # readable labels for the dashboard, never compared
        study.set_user_attr(key, _jsonable(value))
    study.add_trials(first_trials())
    return study


def _check_attrs(study: optuna.Study, attrs: dict) -> None:
    stored = study.user_attrs.get(ATTR)
    if stored is None:  # its creator has not written them yet (two workers starting at once)
        return
    for key, value in attrs.items():
        if stored.get(key) != value:
            raise WorkbenchError(
                f"study {study.study_name!r} was tuned with {key} = {stored.get(key)!r}, now {value!r}; its trials do "
                "not apply: set `tune.study` to a new name, or delete it (`optuna delete-study --storage URL "
                f"--study-name {study.study_name}`)"
            )


def _jsonable(value: object) -> object:
    """Tuples as lists, so a value compares equal to itself read back from the storage."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
