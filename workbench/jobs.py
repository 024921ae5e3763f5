"""The jobs of `workbench fold-train`: plain picklable records and the one body that runs any of them
(on the driver with the local engine, in a Ray worker, or as one SLURM array task).

Every job claims its work first (`workbench.claims`), so two processes never train one member x fold
or predict one test shard; the job then records where it ran in the fold's `done.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.claims import ClaimedElsewhere, claimed
from workbench.config import ExperimentConfig
from workbench.run import CheckedData, Run
from zoo.pseudo import label_fold, load_pseudo_set, pseudo_dir
from zoo.runner import fold_done, member_dir, predict_member_test, run_member_fold
from zoo.spec import MemberSpec

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
    checked: CheckedData | None = None  # the driver's data check, trusted by the job (None: the job checks)

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
    numbers = _compute_settings(config, config.member(job.member) if job.kind != PSEUDO else None)
    try:
        job.claim_path().parent.mkdir(parents=True, exist_ok=True)
        with claimed(job.claim_path(), config.compute.claim_grace_s, task_id):
            if job.kind == FOLD and fold_done(config.run_dir, config.member(job.member), job.index):
                return {"status": "done"}
            return _run_claimed(job, task_id, numbers)
    except ClaimedElsewhere as busy:
        return {"status": "claimed", "owner": busy.owner}


def _run_claimed(job: Job, task_id: str | None, numbers: dict) -> dict:
    config = job.config
    run = Run.open(config, job.checked)
    data, folds, store, resolution = run.data, run.folds, run.members_store, run.resolution
    where = {**provenance(job, task_id), "numbers": numbers}
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
            where["pseudo"] = {"set": pseudo.cfg.name, "generation": pseudo.generation}
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


def _compute_settings(config: ExperimentConfig, spec: MemberSpec | None) -> dict:
    """Set this process's thread count (`compute.threads`, else the job's CPUs on Ray) and PyTorch's
    deterministic algorithms as the config says, in every engine alike; return what decides the numbers, for
    the fold's `done.json`: the same CPU model and flags, thread count and library versions give the same maps."""
    import numpy
    import torch

    compute = config.compute
    on_ray = os.environ.get("WORKBENCH_ENGINE") == "ray"
    threads = compute.threads or (compute.cpus_per_job if on_ray else None)
    if threads:
        torch.set_num_threads(threads)
    if compute.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for deterministic GEMMs
        torch.use_deterministic_algorithms(True, warn_only=True)
    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__}
    if spec is not None and spec.framework == "keras":
        versions["tensorflow"] = _keras_threads(threads)
    cpu, flags = _cpu()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "versions": versions,
        "cpu": cpu,
        "cpu_flags": flags,
        "threads": torch.get_num_threads(),
        "deterministic": compute.deterministic,
        "device": device,
    }


def _keras_threads(threads: int | None) -> str:
    """TensorFlow's thread pools sized like PyTorch's (when TensorFlow has not started yet); its version."""
    from zoo.keras_models import import_tensorflow

    return import_tensorflow(threads).__version__


def _cpu() -> tuple[str, list[str]]:
    """The CPU model and the vector-instruction flags that change floating-point results (AVX2, AVX-512, AMX)."""
    model, flags = platform.machine(), []
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        model = next(
            (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), model
        )
        present = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        flags = sorted(f for f in present if f.startswith(("avx", "fma", "amx")))
    return model, flags
