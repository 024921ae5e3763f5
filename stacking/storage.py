"""Tuning storage that fits the run: SQLite only on a local disk with the local engine, and dead journal
workers' trials failed whatever host they ran on.

SQLite's own documentation says every process on one database must be on one host (WAL) and that fcntl
locks are broken on many network file systems, so a run folder on NFS, Lustre, CIFS... or an engine that
spreads work over hosts needs `journal:PATH` (a journal file; O_EXCL locks work on NFSv3+) or a server
database (postgresql://...). Optuna heartbeats are RDB-only, and on a journal the workbench could fail
only the trials of dead processes on its own host; a trial lasts milliseconds here, so one still RUNNING
long after it started has lost its worker, on this host or another.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from pathlib import Path

import optuna

from carvana.errors import WorkbenchError
from stacking.sqlite_url import sqlite_path

__all__ = ["NETWORK_FS_TYPES", "SILENT_TRIAL_GRACE_S", "check_storage", "fail_silent_trials", "on_network_fs"]

NETWORK_FS_TYPES = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "ceph",
    "glusterfs",
    "beegfs",
    "fuse.sshfs",
    "fuse.gcsfuse",
    "fuse.s3fs",
    "fuse.mountpoint-s3",
    "fuse.juicefs",
    "9p",
    "afs",
)
SILENT_TRIAL_GRACE_S = 300.0  # a RUNNING trial this old (trials take ms to s) has lost its worker


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the file system holding `path`, from the mount table (`mounts`: /proc/self/mounts text)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def on_network_fs(path: Path, mounts: str | None = None) -> bool:
    return filesystem_type(path, mounts) in NETWORK_FS_TYPES


def check_storage(url: str, engine: str, mounts: str | None = None) -> str:
    """`url`, or WorkbenchError when it is SQLite on a network file system or with a non-local engine."""
    path = sqlite_path(url)
    if path is None:  # not SQLite, or an in-memory database
        return url
    fix = (
        f"set `tune.storage: journal:{path.with_suffix('.journal')}` (a journal file on the shared folder) "
        "or a PostgreSQL URL (postgresql://user@host/db) in the config"
    )
    if engine != "local":
        raise WorkbenchError(
            f"tune.storage {url}: SQLite cannot be shared by workers on several hosts "
            f"(compute.engine is {engine}); {fix}"
        )
    kind = filesystem_type(path.parent, mounts)
    if kind in NETWORK_FS_TYPES:
        raise WorkbenchError(
            f"tune.storage {url}: {path.parent} is on a network file system ({kind}), where "
            f"SQLite's locks are not safe; {fix}"
        )
    return url


def fail_silent_trials(
    study: optuna.Study, grace_s: float = SILENT_TRIAL_GRACE_S, now: dt.datetime | None = None
) -> int:
    """On a journal storage, fail the RUNNING trials started more than `grace_s` ago; return how many."""
    if not isinstance(study._storage, optuna.storages.JournalStorage):  # Study has no public storage accessor
        return 0
    now = now or dt.datetime.now()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.datetime_start and (now - trial.datetime_start).total_seconds() > grace_s:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                failed += 1
    return failed
