"""The compute section, job claims, test shards and manual fan-out with the local engine (no Ray)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carvana.dataset import CarvanaData
from carvana.errors import WorkbenchError
from folds import read_folds
from oof import Store
from workbench import claims
from workbench.cli import main
from workbench.config import load_config
from workbench.fold_train import fold_train
from workbench.jobs import TEST_SHARD, Job, run_job
from zoo.runner import finish_member_test, member_finished, shard_ids

YAML = """
folds: {n_folds: 2, stratify: area, seed: 0}
zoo:
  train: {epochs: 1, batch_size: 8}
  members:
    - avg_mask_128
    - {name: simple_cnn_64, arch: simple_cnn, height: 64, width: 96}
"""


@pytest.fixture
def two_fold_config(tiny_data, tmp_path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {tiny_data}\nrun_dir: {tmp_path / 'run'}\n" + YAML)
    return path


def test_compute_section_is_validated_and_flags_override_it(two_fold_config):
    assert load_config(two_fold_config).compute.engine == "local"
    two_fold_config.write_text(two_fold_config.read_text() + "compute: {engine: ray, gpu_per_job: 1}\n")
    with pytest.raises(WorkbenchError, match=r"unknown key `compute.gpu_per_job` \(valid keys: engine, address"):
        load_config(two_fold_config)
    two_fold_config.write_text(two_fold_config.read_text().replace("gpu_per_job: 1", "max_retries: 1"))
    config = load_config(two_fold_config, compute={"gpus_per_job": 0, "address": "auto", "engine": None})
    assert (config.compute.engine, config.compute.max_retries, config.compute.gpus_per_job) == ("ray", 1, 0)
    with pytest.raises(WorkbenchError, match="compute.engine is 'dask'; valid: local, ray"):
        load_config(two_fold_config, compute={"engine": "dask"})
    assert main(["fold-train", "--config", str(two_fold_config), "--engine", "local", "--address", "auto"]) == 2


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    path = tmp_path / "fold0" / "claim.json"
    assert claims.try_claim(path, grace_s=60)
    assert not claims.try_claim(path, grace_s=60)  # this live process holds it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "task_id": None}))
    assert claims.try_claim(path, grace_s=60)  # a dead process on this host: taken over at once
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "task_id": None}))
    assert not claims.try_claim(path, grace_s=60)  # another host, heartbeat fresh
    old = time.time() - 120
    os.utime(path, (old, old))
    assert claims.try_claim(path, grace_s=60)  # another host, silent past the grace period
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "task_id": "t1"}))
    assert claims.try_claim(path, grace_s=60, task_id="t1")  # the engine retrying the same task
    assert json.loads(path.read_text())["pid"] == os.getpid()
    claims.release(path)
    assert not path.exists()


def test_claim_heartbeat_keeps_the_claim_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
    path = tmp_path / "claim.json"
    with claims.claimed(path, grace_s=60):
        old = time.time() - 100
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5
        with pytest.raises(claims.ClaimedElsewhere):
            with claims.claimed(path, grace_s=60, task_id="other"):
                pass
    assert not path.exists()


def test_shards_are_contiguous_and_cover_every_id():
    ids = [f"img{i:03d}" for i in range(10)]
    parts = [shard_ids(ids, s, 3) for s in range(3)]
    assert sum(parts, []) == ids and [len(p) for p in parts] == [3, 3, 4]


def test_member_unfinished_until_every_test_shard_is_done(two_fold_config, capsys):
    config = load_config(two_fold_config, compute={"test_shards": 3})
    fold_train(config, member="avg_mask_128", fold=0, progress=False)  # fold 1 missing: no test shards yet
    assert not (config.run_dir / "members" / "avg_mask_128" / "test_shards").exists()
    fold_train(config, member="avg_mask_128", fold=1, progress=False)
    assert member_finished(config.run_dir, config.member("avg_mask_128"), 2)
    # As if shard 3 of 3 was killed before its marker: its maps half-written, the member not finished.
    folder = config.run_dir / "members" / "avg_mask_128"
    (folder / "test_shards" / "2-of-3.json").unlink()
    (folder / "test.json").unlink()
    killed = shard_ids(sorted(CarvanaData(config.data).test_ids), 2, 3)
    for img in killed[: len(killed) // 2]:
        (config.run_dir / "oof" / "avg_mask_128" / "test" / f"{img}.npy.zst").unlink()
    assert not finish_member_test(config.run_dir, config.member("avg_mask_128"), 2, 3)
    assert not member_finished(config.run_dir, config.member("avg_mask_128"), 2)
    capsys.readouterr()
    fold_train(config, member="avg_mask_128", progress=False)
    out = capsys.readouterr().out
    assert "avg_mask_128/test3of3: test maps written" in out and "avg_mask_128: test maps complete" in out
    assert member_finished(config.run_dir, config.member("avg_mask_128"), 2)
    Store(config.run_dir / "oof").check_test("avg_mask_128", CarvanaData(config.data).test_ids)
    sessions = json.loads((config.run_dir / "oof" / "avg_mask_128" / "member.json").read_text())["sessions"]
    assert {"test/shard0-of-3", "test/shard1-of-3", "test/shard2-of-3"} <= set(sessions)


def test_a_shard_claimed_by_a_live_process_is_left_to_it(two_fold_config):
    config = load_config(two_fold_config, compute={"test_shards": 2})
    fold_train(config, member="avg_mask_128", progress=False)
    folder = config.run_dir / "members" / "avg_mask_128"
    (folder / "test_shards" / "0-of-2.json").unlink()
    job = Job(config, TEST_SHARD, "avg_mask_128", 0, 2, progress=False)
    with claims.claimed(job.claim_path(), grace_s=60, task_id="someone-else"):
        assert run_job(job)["status"] == "claimed"


def test_jobs_lists_every_member_fold_and_job_index_runs_one(two_fold_config, capsys):
    assert main(["jobs", "--config", str(two_fold_config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["index\tmember\tfold\tstate", "0\tavg_mask_128\t0\tpending", "1\tavg_mask_128\t1\tpending",
                     "2\tsimple_cnn_64\t0\tpending", "3\tsimple_cnn_64\t1\tpending"]
    assert main(["fold-train", "--config", str(two_fold_config), "--job-index", "1"]) == 0
    assert main(["jobs", "--config", str(two_fold_config)]) == 0
    assert "1\tavg_mask_128\t1\tdone" in capsys.readouterr().out
    claim = two_fold_config.parent / "run" / "members" / "simple_cnn_64" / "fold0" / "claim.json"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"host": "node7", "pid": 42, "task_id": None}))
    assert main(["jobs", "--config", str(two_fold_config)]) == 0
    assert "2\tsimple_cnn_64\t0\trunning on node7 pid 42\n" in capsys.readouterr().out
    assert main(["fold-train", "--config", str(two_fold_config), "--job-index", "4"]) == 2
    assert "--job-index 4: this run has jobs 0..3" in capsys.readouterr().err


def test_done_json_records_where_the_job_ran(two_fold_config):
    config = load_config(two_fold_config)
    fold_train(config, member="avg_mask_128", fold=0, progress=False)
    done = json.loads((config.run_dir / "members" / "avg_mask_128" / "fold0" / "done.json").read_text())
    assert done["host"] == socket.gethostname() and done["engine"] == "local" and done["attempt"] == 1
    assert {"task_id", "pid", "cuda_visible_devices"} <= set(done)


@pytest.mark.slow
def test_two_fold_train_processes_never_train_one_job_twice(two_fold_config):
    command = [sys.executable, "-m", "workbench.cli", "fold-train", "--config", str(two_fold_config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    run_dir = two_fold_config.parent / "run"
    for member in ("avg_mask_128", "simple_cnn_64"):
        for k in (0, 1):
            attempts = (run_dir / "members" / member / f"fold{k}" / "claim.json.attempts").read_text().splitlines()
            assert len(attempts) == 1, (member, k, outputs)  # trained by exactly one of the two processes
    # The process that ends last sees every member finished (the other's work ended before): both rows land.
    board = (run_dir / "leaderboard.csv").read_text()
    assert "\navg_mask_128,member," in board and "\nsimple_cnn_64,member," in board
    folds, data = read_folds(run_dir / "folds.csv"), CarvanaData(load_config(two_fold_config).data)
    store = Store(run_dir / "oof")
    for member in store.members():
        store.check_coverage(member, folds.fold_of, folds.hash)
        store.check_test(member, data.test_ids)


def _pid(_: int) -> int:
    return os.getpid()


def test_parallel_backend_is_loky_processes_locally():
    import joblib

    from workbench.compute import parallel_backend
    from workbench.config import ComputeConfig

    with parallel_backend(ComputeConfig(cpu_workers=2)) as n_jobs:
        assert n_jobs == 2
        pids = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(_pid)(x) for x in range(4))
    assert os.getpid() not in pids
    for pid in set(pids):  # the workers ended with the block: they hold no memory through the next fit
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_failed_job_is_reported_and_the_others_finish(two_fold_config, capsys):
    config = load_config(two_fold_config)
    assert main(["folds", "--config", str(two_fold_config)]) == 0  # a run folder first: the damage goes into a run
    bad = config.run_dir / "members" / "simple_cnn_64" / "fold1" / "last.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    assert main(["fold-train", "--config", str(two_fold_config)]) == 2
    captured = capsys.readouterr()
    assert "simple_cnn_64/fold1: FAILED (" in captured.out and "Traceback" in captured.err
    assert "1 job(s) failed (simple_cnn_64/fold1)" in captured.err
    assert (config.run_dir / "members" / "simple_cnn_64" / "fold0" / "done.json").exists()
    assert member_finished(config.run_dir, config.member("avg_mask_128"), 2)
    assert "\navg_mask_128,member," in (config.run_dir / "leaderboard.csv").read_text()


def test_fold_train_checks_the_data_once_however_many_jobs(two_fold_config, monkeypatch, tmp_path):
    """The driver checks the data; its jobs (member x fold, test shards) trust that check (`make demo` ran the
    data check 26 times before)."""
    import carvana.validate
    import workbench.run
    import workbench.steps

    calls = []
    real = carvana.validate.check_data

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    for module in (carvana.validate, workbench.run, workbench.steps):
        monkeypatch.setattr(module, "check_data", counting)
    path = tmp_path / "baseline.yaml"
    path.write_text(two_fold_config.read_text().split("  members:")[0] + "  members: [avg_mask_128]\n")
    fold_train(load_config(path), progress=False)
    assert member_finished(load_config(path).run_dir, load_config(path).zoo[0], 2)  # 2 fold jobs, 1 test shard
    assert len(calls) == 1
