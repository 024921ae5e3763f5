"""Tuning storage checks: SQLite refused on a network file system or with a non-local engine; journal
trials whose worker went silent are failed, whatever host ran them."""
from __future__ import annotations

import datetime as dt

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from carvana.errors import WorkbenchError
from stacking.storage import check_storage, fail_silent_trials, filesystem_type

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
fileserver:/export/runs /mnt/runs nfs4 rw,vers=4.2 0 0
/dev/sdb1 /mnt/runs/local ext4 rw 0 0
"""


def test_mount_table_finds_the_file_system_of_a_path():
    assert filesystem_type("/mnt/runs/demo", MOUNTS) == "nfs4"
    assert filesystem_type("/mnt/runs/local/demo", MOUNTS) == "ext4"  # the longest mount point wins
    assert filesystem_type("/mnt/runsx", MOUNTS) == "ext4"


def test_sqlite_is_refused_on_nfs_and_with_the_ray_engine():
    with pytest.raises(WorkbenchError, match=r"network file system \(nfs4\).*journal:/mnt/runs/demo/optuna.journal"):
        check_storage("sqlite:////mnt/runs/demo/optuna.db", "local", MOUNTS)
    assert check_storage("sqlite:////mnt/runs/local/optuna.db", "local", MOUNTS).endswith("optuna.db")
    with pytest.raises(WorkbenchError, match="compute.engine is ray.*PostgreSQL"):
        check_storage("sqlite:////mnt/runs/local/optuna.db", "ray", MOUNTS)
    assert check_storage("journal:/mnt/runs/demo/optuna.journal", "ray", MOUNTS).startswith("journal:")


def test_journal_trial_of_a_silent_worker_is_failed(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.create_study(storage=storage, study_name="s")
    orphan = study.ask()  # as if its worker died on another host: RUNNING forever
    orphan.set_user_attr("worker", "otherhost:123")
    study.tell(study.ask(), 0.5)
    assert fail_silent_trials(study) == 0  # just started: its worker may still be computing
    later = dt.datetime.now() + dt.timedelta(seconds=301)
    assert fail_silent_trials(study, now=later) == 1
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    rdb = optuna.create_study(storage="sqlite:///" + str(tmp_path / "x.db"))
    rdb.ask()
    assert fail_silent_trials(rdb, now=later) == 0  # server databases have heartbeats of their own
