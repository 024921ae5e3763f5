"""What the README says is reproducible (issue 23): two runs of the smoke config with the same thread count,
on the same machine and library versions, write byte-identical maps, and every fold records what decides
its numbers."""
from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import REPO, run_cli


def map_digests(run):
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run / "oof").rglob("*.npy.zst"))}


@pytest.mark.slow
def test_two_smoke_runs_with_the_same_threads_write_byte_identical_maps(tiny_data, tmp_path):
    runs = [tmp_path / "first", tmp_path / "second"]
    for run in runs:
        result = run_cli("fold-train", "--config", str(REPO / "configs" / "smoke.yaml"), "--data", str(tiny_data),
                         "--run-dir", str(run), "--threads", "1")
        assert result.returncode == 0, result.stderr
    first, second = (map_digests(run) for run in runs)
    assert first and first == second
    done = json.loads((runs[0] / "members" / "unet_test_resnet_64" / "fold0" / "done.json").read_text())
    numbers = done["numbers"]
    assert numbers["threads"] == 1 and numbers["device"] == "cpu" and numbers["deterministic"] is False
    assert {"numpy", "torch", "python"} <= set(numbers["versions"]) and numbers["cpu"]
    assert isinstance(numbers["cpu_flags"], list)
