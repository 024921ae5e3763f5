"""The jobs of `workbench fold-train`: plain picklable records and the one body that runs any of them
(on the driver with the local engine, in a Ray worker, or as one SLURM array task).

Every job claims its work first (`workbench.claims`), so two processes never train one member x fold
or predict one test shard; the job then records where it ran in the fold's `done.json`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.claims import ClaimedElsewhere, claimed
from workbench.config import ExperimentConfig
from workbench.run import Run
from zoo.pseudo import label_fold, load_pseudo_set, pseudo_dir
from zoo.runner import fold_done, member_dir, predict_member_test, run_member_fold

__all__ = ["FOLD", "PSEUDO", "TEST_SHARD", "Job", "provenance", "run_job"]

FOLD, TEST_SHARD, PSEUDO = "fold", "test_shard", "pseudo"


@dataclass(frozen=True)
class Job:
    """One unit of work: `member` x fold `index`, test shard `index` of `n_shards` of `member`, or fold `index`
    of the pseudo-label set named `member`."""

    config: ExperimentConfig
    kind: str
    member: str
    index: int
    n_shards: int = 1
    progress: bool = True

    def __str__(self) -> str:
        if self.kind in (FOLD, PSEUDO):
            return f"{self.member}/fold{self.index}"
        return f"{self.member}/test{self.index + 1}of{self.n_shards}"

    def claim_path(self) -> Path:
        if self.kind == PSEUDO:
            return pseudo_dir(self.config.run_dir, self.member) / f"fold{self.index}.claim"
        folder = member_dir(self.config.run_dir, self.config.member(self.member))
        if self.kind == FOLD:
            return folder / f"fold{self.index}" / "claim.json"
        return folder / "test_shards" / f"{self.index}-of-{self.n_shards}.claim"


def run_job(job: Job) -> dict:
    """Run `job` under its claim; {"status": trained | predicted | done | claimed, ...where it ran}."""
    config = job.config
    task_id = os.environ.get("WORKBENCH_TASK_ID") or None
    _limit_threads(config)
    try:
        job.claim_path().parent.mkdir(parents=True, exist_ok=True)
        with claimed(job.claim_path(), config.compute.claim_grace_s, task_id):
            if job.kind == FOLD and fold_done(config.run_dir, config.member(job.member), job.index):
                return {"status": "done"}
            return _run_claimed(job, task_id)
    except ClaimedElsewhere as busy:
        return {"status": "claimed", "owner": busy.owner}


def _run_claimed(job: Job, task_id: str | None) -> dict:
    config = job.config
    run = Run.open(config)
    data, folds, store, resolution = run.data, run.folds, run.members_store, run.resolution
    where = provenance(job, task_id)
    if job.kind == PSEUDO:
        specs = {spec.name: spec for spec in config.zoo}
        made = label_fold(
            config.pseudo_set(job.member), job.index, specs, data, folds, config.run_dir, resolution, job.progress
        )
        return {"status": "labelled" if made else "done", **where}
    spec = config.member(job.member)
    if job.kind == FOLD:
        pseudo = None
        if spec.train.pseudo:  # fold k's labels, made by models that never saw fold k's cars (checked)
            specs = {s.name: s for s in config.zoo}
            pseudo = load_pseudo_set(config.pseudo_set(spec.train.pseudo), job.index, config.run_dir, folds, specs)
        run_member_fold(
            spec,
            job.index,
            data,
            folds,
            config.run_dir,
            store,
            resolution,
            job.progress,
            cache_dir=config.compute.cache_dir,
            provenance=where,
            pseudo=pseudo,
        )
        return {"status": "trained", **where}
    predicted = predict_member_test(
        spec, folds, data, config.run_dir, store, resolution, job.progress, shard=(job.index, job.n_shards)
    )
    return {"status": "predicted" if predicted else "done", **where}


def provenance(job: Job, task_id: str | None) -> dict:
    """Where and how this attempt runs: host, pid, engine, task id, attempt (1 = first), GPUs."""
    log_path = job.claim_path().with_name(job.claim_path().name + ".attempts")
    earlier = log_path.read_text().splitlines() if log_path.exists() else []
    attempt = 1 + sum(1 for line in earlier if task_id and json.loads(line).get("task_id") == task_id)
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "engine": os.environ.get("WORKBENCH_ENGINE", "local"),
        "task_id": task_id,
        "attempt": attempt,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": time.time(),
    }
    with open(log_path, "a") as f:  # appended under the job's claim: one writer at a time
        f.write(json.dumps(record) + "\n")
    return record


def _limit_threads(config: ExperimentConfig) -> None:
    """In a Ray worker, torch uses the job's CPUs, not every core of the node."""
    if os.environ.get("WORKBENCH_ENGINE") == "ray" and config.compute.cpus_per_job:
        import torch

        torch.set_num_threads(config.compute.cpus_per_job)
