"""`workbench fold-train`: the driver. It owns the plan (data checks, folds, the jobs not finished), hands
member x fold jobs to the compute engine, submits a member's test shards once its last fold returns,
and writes the members' leaderboard rows once, at the end.

Finished work is skipped (a fold's `done.json`, a shard's marker, a member's `test.json`), so re-running
the same command after any kill resumes the rest. Claims keep parallel processes (a second driver, a
manual or SLURM fan-out) from running one job twice.

About 300 lines: the plan, the driver's loop and the members' rows share the driver's state and its resume
rules; split apart they would pass that state through every call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

from carvana.atomic import file_lock, read_marker
from carvana.errors import WorkbenchError
from folds import Folds
from stacking.leaderboard import format_table, score_entries, write_leaderboard
from workbench.claims import ClaimedElsewhere, claimed, is_stale, read_claim
from workbench.compute import LocalEngine, Outcome, RayEngine, make_engine
from workbench.config import ExperimentConfig
from workbench.jobs import FOLD, TEST_SHARD, Job, run_job
from workbench.run import CheckedData, Run
from workbench.runfolder import RunPaths
from workbench.runlock import run_lock
from workbench.steps import make_folds
from zoo.pseudo import load_pseudo_set
from zoo.runner import claim_member, finish_member_test, fold_done, member_dir, member_finished
from zoo.spec import MemberSpec
from zoo.train_device import loader_workers

__all__ = ["all_jobs", "describe_jobs", "fold_train", "report_outcome", "resolve_compute"]


def all_jobs(config: ExperimentConfig, n_folds: int) -> list[tuple[MemberSpec, int]]:
    """Every member x fold in a fixed order (config order, then fold): `--job-index` counts in it."""
    return [(spec, k) for spec in config.zoo for k in range(n_folds)]


def describe_jobs(config: ExperimentConfig) -> str:
    """One line per member x fold: index, member, fold, state (done / pending / running on HOST pid PID)."""
    folds = make_folds(config)
    lines = []
    for index, (spec, k) in enumerate(all_jobs(config, folds.n_folds)):
        path = member_dir(config.run_dir, spec) / f"fold{k}" / "claim.json"
        owner = read_claim(path)
        state = "done" if fold_done(config.run_dir, spec, k) else "pending"
        if state == "pending" and owner:
            stale = is_stale(path, owner, config.compute.claim_grace_s)
            stale_note = " (stale: the next run takes it over)" if stale else ""
            state = f"running on {owner.get('host')} pid {owner.get('pid')}{stale_note}"
        lines.append(f"{index}\t{spec.name}\t{k}\t{state}")
    return "\n".join(["index\tmember\tfold\tstate", *lines])


def fold_train(
    config: ExperimentConfig,
    member: str | None = None,
    fold: int | None = None,
    retrain: tuple[str, ...] = (),
    progress: bool = True,
    job_index: int | None = None,
) -> None:
    """Train what is not finished; `member` / `fold` / `job_index` restrict the work to one job of a fan-out.

    Holds the run lock shared, so the processes of a fan-out run together; `retrain` holds it exclusively,
    since it discards maps that a `stack`, `submit` or `tune` may be reading (workbench.runlock)."""
    if not config.zoo:  # before make_folds writes anything
        raise WorkbenchError("the config has no `zoo: members:`; add members (see configs/demo.yaml)")
    run = Run.open(config)
    verb = " ".join(["fold-train", *(["--retrain", *retrain] if retrain else [])])
    with run_lock(config.run_dir, verb, shared=not retrain):
        _fold_train(run, member, fold, retrain, progress, job_index)


def _fold_train(
    run: Run, member: str | None, fold: int | None, retrain: tuple[str, ...], progress: bool, job_index: int | None
) -> None:
    config = run.config
    folds = make_folds(config, summary=run.summary)
    selected = _without_labels(
        config,
        folds,
        _select(config, folds.n_folds, member, fold, job_index),
        explicit=(member, fold, job_index) != (None, None, None),
    )
    start = time.time()
    for spec in dict.fromkeys(spec for spec, _ in selected):
        claim_member(config.run_dir, spec, folds.hash, retrain=spec.name in retrain)
        if spec.name in retrain:
            run.members_store.open_member(spec.name, spec.to_dict(), folds.hash, run.resolution, reset=True).close()
    failures = _drive(config, selected, folds.n_folds, progress, run.checked)
    _write_member_rows(run, folds, start)
    if failures:
        raise WorkbenchError(
            f"{len(failures)} job(s) failed ({', '.join(failures)}); the others finished: "
            "fix the cause and re-run the same command (finished work is skipped)"
        )


def _select(
    config: ExperimentConfig, n_folds: int, member: str | None, fold: int | None, job_index: int | None
) -> list[tuple[MemberSpec, int]]:
    jobs = all_jobs(config, n_folds)
    if job_index is not None:
        if member is not None or fold is not None:
            raise WorkbenchError("--job-index names one member x fold already; drop --member and --fold")
        if not 0 <= job_index < len(jobs):
            raise WorkbenchError(
                f"--job-index {job_index}: this run has jobs 0..{len(jobs) - 1} (see `workbench jobs --config ...`)"
            )
        return [jobs[job_index]]
    if fold is not None and not 0 <= fold < n_folds:
        raise WorkbenchError(f"--fold {fold}: this run has folds 0..{n_folds - 1}")
    if member is not None:
        config.member(member)  # an unknown name lists the valid ones
    return [(s, k) for s, k in jobs if member in (None, s.name) and fold in (None, k)]


def _without_labels(
    config: ExperimentConfig, folds: Folds, selected: list[tuple[MemberSpec, int]], explicit: bool
) -> list[tuple[MemberSpec, int]]:
    """The jobs that can run now: a pseudo-labelled member's fold waits until its pseudo-label set is made and
    current (`workbench pseudo-label`); a job asked for by name is refused with the set's own message."""
    specs = {spec.name: spec for spec in config.zoo}
    ready, waiting = [], {}
    for spec, k in selected:
        if not spec.train.pseudo:
            ready.append((spec, k))
            continue
        if fold_done(config.run_dir, spec, k):
            _warn_if_older_labels(config, folds, specs, spec, k)
            ready.append((spec, k))
            continue
        try:
            load_pseudo_set(config.pseudo_set(spec.train.pseudo), k, config.run_dir, folds, specs)
            ready.append((spec, k))
        except WorkbenchError:
            if explicit:
                raise  # naming the set, the fold and the fix
            waiting[spec.name] = spec.train.pseudo
    for name, set_name in waiting.items():
        print(f"{name}: waits for pseudo-label set {set_name} (run `workbench pseudo-label`, then fold-train again)")
    return ready


def _warn_if_older_labels(
    config: ExperimentConfig, folds: Folds, specs: dict[str, MemberSpec], spec: MemberSpec, k: int
) -> None:
    """A finished pseudo-labelled fold stays as it is, but says so when its set has been made again since."""
    trained_on = (read_marker(member_dir(config.run_dir, spec) / f"fold{k}" / "done.json") or {}).get("pseudo", {})
    try:
        current = load_pseudo_set(config.pseudo_set(spec.train.pseudo), k, config.run_dir, folds, specs).generation
    except WorkbenchError:
        current = None
    if trained_on.get("generation") != current:
        print(
            f"WARNING: {spec.name} fold {k} was trained on another version of pseudo-label set {spec.train.pseudo} "
            f"than the current one; `workbench fold-train --retrain {spec.name}` trains it on the current set"
        )


def _drive(
    config: ExperimentConfig, selected: list[tuple[MemberSpec, int]], n_folds: int, progress: bool, checked: CheckedData
) -> list[str]:
    """Run the selected fold jobs and the test shards they complete; return the failed jobs' names."""
    engine = make_engine(config.compute, run_job)
    with contextlib.ExitStack() as held:
        held.callback(engine.close)
        driver = _Driver(resolve_compute(config, engine), engine, held, n_folds, progress, checked)
        for spec, k in selected:
            if fold_done(driver.config.run_dir, spec, k):
                print(f"{spec.name} fold {k}: done, skipped")
            else:
                driver.submit(FOLD, spec.name, k)
        for spec in dict.fromkeys(spec for spec, _ in selected):
            driver.submit_test(spec)
        while engine.pending():
            driver.collect(engine.wait())
        return driver.failures


@dataclasses.dataclass
class _Driver:
    """The driver's state while jobs run: what it submitted, what failed, which test claims it holds."""

    config: ExperimentConfig  # compute defaults resolved: gpus_per_job, cpus_per_job, test_shards are set
    engine: LocalEngine | RayEngine
    held: contextlib.ExitStack
    n_folds: int
    progress: bool
    checked: CheckedData
    failures: list[str] = dataclasses.field(default_factory=list)
    shards_left: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def n_shards(self) -> int:
        return self.config.compute.test_shards or 1

    def submit(self, kind: str, member: str, index: int) -> None:
        compute = self.config.compute
        n_shards = self.n_shards if kind == TEST_SHARD else 1
        job = Job(self.config, kind, member, index, n_shards, self.progress, self.checked)
        self.engine.submit(job, compute.gpus_per_job or 0, compute.cpus_per_job or 1)

    def submit_test(self, spec: MemberSpec) -> None:
        """The member's test shards, once, when all its folds are done (this driver holds its test claim)."""
        run_dir = self.config.run_dir
        if spec.name in self.shards_left or not all(fold_done(run_dir, spec, k) for k in range(self.n_folds)):
            return
        if member_finished(run_dir, spec, self.n_folds):
            return
        try:
            claim = member_dir(run_dir, spec) / "test.claim"
            self.held.enter_context(claimed(claim, self.config.compute.claim_grace_s))
        except ClaimedElsewhere as busy:
            owner = busy.owner
            print(f"{spec.name}: test maps being made by {owner.get('host')} pid {owner.get('pid')}, skipped")
            return
        self.shards_left[spec.name] = self.n_shards
        for index in range(self.n_shards):
            self.submit(TEST_SHARD, spec.name, index)

    def collect(self, outcome: Outcome) -> None:
        """Report a finished job; submit the test shards a fold completes; finish a member's test maps."""
        if report_outcome(outcome):
            self.failures.append(str(outcome.job))
            return
        spec = self.config.member(outcome.job.member)
        if outcome.job.kind == FOLD:
            self.submit_test(spec)
            return
        self.shards_left[spec.name] -= 1
        if self.shards_left[spec.name] == 0 and finish_member_test(
            self.config.run_dir, spec, self.n_folds, self.n_shards
        ):
            print(f"{spec.name}: test maps complete")


def report_outcome(outcome: Outcome) -> bool:
    """Print the job's line; True when it failed (a job another live process holds is not a failure:
    that process finishes it, and the member's test maps)."""
    job, result = outcome.job, outcome.result or {}
    if outcome.error is not None:
        print(f"{job}: FAILED ({outcome.error})")
        print(f"{job}: {outcome.detail}", file=sys.stderr)
        return True
    status = str(result.get("status"))
    if status == "claimed":
        owner = result.get("owner") or {}
        print(f"{job}: claimed by {owner.get('host')} pid {owner.get('pid')} (another process runs it), skipped")
        return False
    where = f" on {result['host']} (GPUs {result.get('cuda_visible_devices')})" if result.get("engine") == "ray" else ""
    what = {"trained": "trained, OOF maps written", "predicted": "test maps written", "done": "done, skipped"}.get(
        status, status
    )
    print(f"{job}: {what}{where}")
    return False


def resolve_compute(config: ExperimentConfig, engine: LocalEngine | RayEngine) -> ExperimentConfig:
    """Absolute paths (workers may start elsewhere; every node mounts the run at the same path) and the
    compute defaults that depend on the machine or cluster; refuse what cannot be scheduled."""
    compute = config.compute
    n_gpus, n_cpus = engine.n_gpus(), engine.n_cpus()
    gpus = compute.gpus_per_job if compute.gpus_per_job is not None else (1 if n_gpus else 0)
    if compute.engine == "ray" and gpus > n_gpus:
        raise WorkbenchError(
            f"compute.gpus_per_job is {gpus} but the Ray cluster has {n_gpus} GPU(s); "
            "lower --gpus-per-job (0 trains on CPUs) or add GPU nodes"
        )
    workers = max((loader_workers(spec.train.num_workers, gpus > 0, n_cpus) for spec in config.zoo), default=0)
    cpus = compute.cpus_per_job or min(workers + 1, n_cpus)
    if compute.engine == "ray" and cpus > n_cpus:
        raise WorkbenchError(f"compute.cpus_per_job is {cpus} but the Ray cluster has {n_cpus} CPU(s); lower it")
    slots = (n_gpus // gpus if gpus else n_cpus // cpus) if compute.engine == "ray" else 0
    default_shards = max(1, 2 * slots)  # two per job slot: a slow shard does not hold up the others
    cache_dir = compute.cache_dir.resolve() if compute.cache_dir else None
    resolved = dataclasses.replace(
        compute,
        gpus_per_job=gpus,
        cpus_per_job=cpus,
        cache_dir=cache_dir,
        test_shards=compute.test_shards or default_shards,
    )
    return dataclasses.replace(config, data=config.data.resolve(), run_dir=config.run_dir.resolve(), compute=resolved)


def _write_member_rows(run: Run, folds: Folds, start: float) -> None:
    """Score every finished member and write their rows, under the leaderboard's lock (other drivers)."""
    # Members other processes are still training are left out, not failed: fold jobs may run in parallel.
    config, store = run.config, run.members_store
    finished = [s for s in config.zoo if member_finished(config.run_dir, s, folds.n_folds)]
    for spec in finished:
        store.check_coverage(spec.name, folds.fold_of, folds.hash)
        store.check_test(spec.name, run.data.test_ids)
    scores = score_entries([(store, s.name, "member") for s in finished], run.data, folds, run.native_hw)
    path = RunPaths(config.run_dir).leaderboard
    with file_lock(path.with_name(f".{path.name}.lock")):
        # Blend and stacker rows were built on the old member maps: they return with the next `stack`.
        rows = write_leaderboard(path, scores, keep=lambda row: row["kind"] == "member")
    print(f"\n{path} (fold-train took {time.time() - start:.0f} s):")
    print(format_table([r for r in rows if r["kind"] == "member"]))
