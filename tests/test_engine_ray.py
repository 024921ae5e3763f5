"""`fold-train --engine ray` on a real local Ray cluster: 2 CPUs and 2 fake GPUs (Ray pins a GPU per job
by CUDA_VISIBLE_DEVICES; torch finds no CUDA behind it, so the maths runs on the CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from carvana.dataset import CarvanaData
from folds import read_folds
from oof import Store
from workbench.config import load_config
from workbench.fold_train import fold_train

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

MEMBER = "simple_cnn_64"
YAML = """
folds: {n_folds: 2, stratify: area, seed: 0}
zoo:
  train: {epochs: EPOCHS, batch_size: 8}
  members:
    - avg_mask_128
    - {name: simple_cnn_64, arch: simple_cnn, height: 64, width: 96}
compute: {cpus_per_job: 1, test_shards: 1}
"""


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _config_file(tmp_path: Path, data: Path, epochs: int, name: str = "run") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"data: {data}\nrun_dir: {tmp_path / name}\n" + YAML.replace("EPOCHS", str(epochs)))
    return path


def _attempts(run_dir: Path, fold: int) -> list[dict]:
    path = run_dir / "members" / MEMBER / f"fold{fold}" / "claim.json.attempts"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check_store(run_dir: Path, data_dir: Path) -> None:
    store, data = Store(run_dir / "oof"), CarvanaData(data_dir)
    folds = read_folds(run_dir / "folds.csv")
    for member in store.members():
        store.check_coverage(member, folds.fold_of, folds.hash)
        store.check_test(member, data.test_ids)


def test_ray_jobs_get_their_own_gpu_and_process_and_match_the_local_engine(cluster, tiny_data, tmp_path, capsys):
    import torch

    path = _config_file(tmp_path, tiny_data, epochs=1, name="ray")
    config = load_config(path, compute={"engine": "ray", "gpus_per_job": 1, "test_shards": 2})
    fold_train(config, member=MEMBER, progress=False)
    out = capsys.readouterr().out
    assert "simple_cnn_64/fold0: trained" in out and "simple_cnn_64: test maps complete" in out
    done = [json.loads((config.run_dir / "members" / MEMBER / f"fold{k}" / "done.json").read_text()) for k in (0, 1)]
    assert {d["engine"] for d in done} == {"ray"} and all(d["task_id"] and d["attempt"] == 1 for d in done)
    # The two fold jobs ran at the same time, each in its own process on its own (fake) GPU.
    assert max(d["started"] for d in done) < min(d["finished"] for d in done)
    assert len({d["pid"] for d in done}) == 2 and {d["cuda_visible_devices"] for d in done} == {"0", "1"}
    assert json.loads((config.run_dir / "oof" / MEMBER / "member.json").read_text())["sessions"].keys() >= {
        "test/shard0-of-2", "test/shard1-of-2"}
    _check_store(config.run_dir, tiny_data)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray job (cpus_per_job: 1)
    try:
        local = load_config(_config_file(tmp_path, tiny_data, epochs=1, name="local"))
        fold_train(local, member=MEMBER, progress=False)
    finally:
        torch.set_num_threads(threads)
    ray_store, local_store = Store(config.run_dir / "oof"), Store(local.run_dir / "oof")
    for split in ("train", "test"):
        ids = local_store.ids(MEMBER, split)
        assert ray_store.ids(MEMBER, split) == ids
        ray_maps, local_maps = ray_store.read_many(MEMBER, split, ids), local_store.read_many(MEMBER, split, ids)
        np.testing.assert_array_equal(ray_maps, local_maps)


def test_a_killed_worker_is_retried_and_resumes_from_its_last_epoch(cluster, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_TEST_DIE_AFTER_EPOCH", "1")  # every fold job dies once, after epoch 1
    config = load_config(_config_file(tmp_path, tiny_data, epochs=2), compute={"engine": "ray", "gpus_per_job": 0})
    fold_train(config, member=MEMBER, progress=False)
    for k in (0, 1):
        log = (config.run_dir / "members" / MEMBER / f"fold{k}" / "log.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in log[1:]] == ["1", "2"]  # each epoch once: resumed, not restarted
        attempts = _attempts(config.run_dir, k)
        assert [a["attempt"] for a in attempts] == [1, 2] and attempts[0]["task_id"] == attempts[1]["task_id"]
        assert json.loads((config.run_dir / "members" / MEMBER / f"fold{k}" / "done.json").read_text())["attempt"] == 2
    _check_store(config.run_dir, tiny_data)


def test_a_python_error_is_reported_not_retried(cluster, tiny_data, tmp_path, capsys):
    from workbench.steps import make_folds

    config = load_config(_config_file(tmp_path, tiny_data, epochs=1), compute={"engine": "ray", "gpus_per_job": 0})
    make_folds(config)  # a run folder first: the damage goes into a run
    bad = config.run_dir / "members" / MEMBER / "fold1" / "last.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")  # fold 1's resume fails with a Python exception
    from carvana.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match=r"1 job\(s\) failed \(simple_cnn_64/fold1\)"):
        fold_train(config, member=MEMBER, progress=False)
    out = capsys.readouterr().out
    assert "simple_cnn_64/fold1: FAILED (" in out and "simple_cnn_64/fold0: trained" in out  # the other job finished
    assert len(_attempts(config.run_dir, 1)) == 1  # not retried


def test_a_killed_test_shard_leaves_the_member_unfinished_until_a_rerun(cluster, tiny_data, tmp_path, monkeypatch,
                                                                        capsys):
    from carvana.errors import WorkbenchError
    from zoo.runner import member_finished

    monkeypatch.setenv("WORKBENCH_TEST_DIE_IN_TEST_SHARD", "1")  # shard 2 of 3 dies after writing maps
    config = load_config(_config_file(tmp_path, tiny_data, epochs=1),
                         compute={"engine": "ray", "gpus_per_job": 0, "test_shards": 3, "max_retries": 0})
    spec = config.member("avg_mask_128")
    with pytest.raises(WorkbenchError, match=r"avg_mask_128/test2of3"):
        fold_train(config, member="avg_mask_128", progress=False)
    assert "avg_mask_128/test2of3: FAILED (" in capsys.readouterr().out
    assert not member_finished(config.run_dir, spec, 2)
    markers = sorted(p.name for p in (config.run_dir / "members" / "avg_mask_128" / "test_shards").glob("*.json"))
    assert markers == ["0-of-3.json", "2-of-3.json"]
    monkeypatch.delenv("WORKBENCH_TEST_DIE_IN_TEST_SHARD")
    fold_train(config, member="avg_mask_128", progress=False)
    out = capsys.readouterr().out
    assert "avg_mask_128/test2of3: test maps written" in out  # only the killed shard is predicted again
    assert "test1of3: done, skipped" in out and "test3of3: done, skipped" in out
    assert "avg_mask_128 fold 0: done, skipped" in out and member_finished(config.run_dir, spec, 2)
    Store(config.run_dir / "oof").check_test("avg_mask_128", CarvanaData(tiny_data).test_ids)


def test_more_gpus_per_job_than_the_cluster_has_is_refused(cluster, tiny_data, tmp_path):
    from carvana.errors import WorkbenchError

    config = load_config(_config_file(tmp_path, tiny_data, epochs=1), compute={"engine": "ray", "gpus_per_job": 3})
    with pytest.raises(WorkbenchError, match=r"gpus_per_job is 3 but the Ray cluster has 2 GPU\(s\)"):
        fold_train(config, progress=False)


def test_driver_killed_then_rerun_trains_no_fold_twice(cluster, tiny_data, tmp_path):
    path = _config_file(tmp_path, tiny_data, epochs=2)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "workbench.cli", "fold-train", "--config", str(path), "--engine", "ray",
               "--address", cluster, "--gpus-per-job", "0", "--member", MEMBER]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = run_dir / "members" / MEMBER / "fold0" / "done.json"
    deadline = time.time() + 300  # generous: a loaded box (or a parallel test beside it) starts Ray slowly
    while not first.exists() and time.time() < deadline and driver.poll() is None:
        time.sleep(0.1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert first.exists(), "no fold finished before the kill"
    finished = {k: (run_dir / "members" / MEMBER / f"fold{k}" / "done.json").read_text() for k in (0, 1)
                if (run_dir / "members" / MEMBER / f"fold{k}" / "done.json").exists()}
    _wait_for_claim_owners_to_exit(run_dir)
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    for k, text in finished.items():
        assert f"{MEMBER} fold {k}: done, skipped" in result.stdout
        assert (run_dir / "members" / MEMBER / f"fold{k}" / "done.json").read_text() == text
        assert len(_attempts(run_dir, k)) == 1  # trained once, by the killed driver's job
    _check_store(run_dir, tiny_data)


def _wait_for_claim_owners_to_exit(run_dir: Path) -> None:
    """Ray ends the killed driver's tasks shortly after; until then their claims are (rightly) live."""
    from workbench.claims import read_claim

    deadline = time.time() + 120
    for claim in run_dir.glob("members/*/fold*/claim.json"):
        owner = read_claim(claim) or {}
        while owner.get("pid") and time.time() < deadline:
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)


def _square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_parallel_backend_runs_joblib_shards_as_ray_tasks(cluster):
    import joblib

    from workbench.compute import parallel_backend
    from workbench.config import ComputeConfig

    with parallel_backend(ComputeConfig(engine="ray")) as n_jobs:
        assert n_jobs == 2  # the cluster's CPUs
        results = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(_square)(x) for x in range(4))
    assert [r[0] for r in results] == [0, 1, 4, 9] and os.getpid() not in {r[1] for r in results}


# A local Ray started by the workbench (no --address) listens on the loopback interface only (issue 23).
HOLD_LOCAL_RAY = """
import sys
from workbench.compute import RayEngine
from workbench.config import ComputeConfig

engine = RayEngine(ComputeConfig(engine="ray"), dict)
engine.submit((), cpus=1)  # a worker process too
assert engine.wait().error is None
print("up", flush=True)
sys.stdin.read()
engine.close()
"""


def _process_tree(root: int) -> set[int]:
    """`root` and every process below it, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def _listening_addresses(pids: set[int]) -> list[tuple[str, str]]:
    """(process name, local address) of every listening TCP socket the processes hold, from /proc/net/tcp{,6}."""
    import ipaddress

    owner = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = Path(f"/proc/{pid}/comm").read_text().strip()
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owner:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(local.split(":")[0])
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word little-endian
            found.append((owner[inode], ipaddress.ip_address(words)))
    return found


def _is_loopback(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def test_a_local_ray_started_by_the_workbench_listens_on_loopback_only():
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCAL_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "up"
        sockets = _listening_addresses(_process_tree(holder.pid))
    finally:
        holder.communicate("", timeout=120)
    names = {name for name, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and len(sockets) >= 4, sockets  # services, driver and worker
    assert all(_is_loopback(address) for _, address in sockets), sockets
