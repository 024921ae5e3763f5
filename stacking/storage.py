"""Optuna storage, in one module: SQLite URLs built from a path and read back, opening any storage (SQLite made
fast and safe to create from many processes, journals, server databases with heartbeats), storage that fits
the run (SQLite only on a local disk with the local engine), and dead journal workers' trials failed
whatever host they ran on. Optuna and SQLAlchemy are imported by the functions that need them, so building a
URL costs nothing.

A run folder may be named anything: unescaped, `?` would start URL options (the database landing outside
the run), `#` a fragment, and `%20` would read as a space. SQLAlchemy's URL escapes and unescapes them.

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
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carvana.atomic import file_lock
from carvana.errors import WorkbenchError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "NETWORK_FS_TYPES",
    "SILENT_TRIAL_GRACE_S",
    "check_storage",
    "fail_silent_trials",
    "on_network_fs",
    "open_storage",
    "sqlite_path",
    "sqlite_url",
]

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
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 30  # server databases: a dead worker's trial fails after 30 s


def sqlite_url(path: Path) -> str:
    """`sqlite:///<absolute path>`, escaped, for Optuna's RDB storage."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(Path(path).resolve())).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL (unescaped), None for in-memory SQLite or another kind of URL."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: `journal:PATH` (a journal file, safe on NFS) or an RDB URL (sqlite, postgresql).

    Server databases get heartbeats, so a trial whose worker died on any host is failed after GRACE_SECONDS.
    SQLite gets none (the heartbeat thread's writes contend for the file lock: +130 ms a trial); there,
    as for journals, a RUNNING trial whose worker process on this host has died is failed instead.
    """
    import optuna
    import sqlalchemy

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("sqlite:"):
        with _sqlite_lock(url):  # workers starting at once would race to create the tables
            storage = optuna.storages.RDBStorage(url)
            _fast_sqlite(storage.engine)
        return storage
    for attempt in range(3):  # the same race on a server database: the loser finds the tables made
        try:
            with quiet_experimental():
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
        except sqlalchemy.exc.DBAPIError:
            if attempt == 2:
                raise
            time.sleep(1 + random.random())
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextlib.contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive flock on `<database>.lock` (nothing for an in-memory database)."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    with file_lock(Path(f"{path}.lock")):
        yield


def _fast_sqlite(engine: Any) -> None:
    """WAL journal, fsync only at checkpoints: Optuna commits once per parameter, and a synced commit
    (~10 ms on a plain disk) made a 20-parameter trial cost ~0.5 s. A crash can lose the last trials,
    never corrupt the file. WAL needs a local disk; over NFS use `journal:PATH`."""
    from sqlalchemy import event

    def set_pragmas(connection: Any, _record: object) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", set_pragmas)
    engine.dispose()  # connections opened while creating the tables lack the pragmas
    with engine.connect():  # switch to WAL now, under the caller's lock (it needs the file to itself)
        pass


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning for heartbeats (experimental in name since Optuna 2.9)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


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
    import optuna

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
