"""`workbench dashboard` serves optuna-dashboard on the run's storage, and refuses a storage not made yet."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from carvana.errors import WorkbenchError
from workbench.runfolder import open_run_dir

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"data: {tmp_path / 'data'}\nrun_dir: {tmp_path / 'run'}\n{extra}")
    return path


def get_studies(port: int, deadline: float) -> list[str]:
    """Study names from the dashboard's JSON API, polling until it answers or `deadline` passes."""
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                return [s["study_name"] for s in json.load(response)["study_summaries"]]
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_dashboard_lists_the_runs_studies(tmp_path):
    config = write_config(tmp_path)
    open_run_dir(tmp_path / "run", claim=True)  # a run folder, as the workbench makes one
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'run' / 'optuna.db'}", study_name="blend-outer0",
                                direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("threshold", 0.2, 0.8), n_trials=2)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "workbench.cli", "dashboard", "--config", str(config),
                               "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        assert get_studies(port, time.time() + 90) == ["blend-outer0"]
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0]
    assert f"http://127.0.0.1:{port}/" in output


@pytest.mark.parametrize("storage", [None, "journal:{tmp}/tune.log"])
def test_dashboard_before_tuning_is_a_clear_error(tmp_path, storage):
    from workbench.config import load_config
    from workbench.dashboard import serve_dashboard

    extra = f"tune:\n  storage: {storage.format(tmp=tmp_path)}\n" if storage else ""
    with pytest.raises(WorkbenchError, match="run `workbench tune"):
        serve_dashboard(load_config(write_config(tmp_path, extra)))
    assert not (tmp_path / "run" / "optuna.db").exists()  # no empty database left behind


def get_json(port: int, path: str, deadline: float) -> dict:
    """A JSON answer of the dashboard's API, polling until it answers or `deadline` passes."""
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_dashboard_shows_the_metric_name_and_readable_labels(tmp_path):
    """A tuning study names its metric and carries run / entry / outer fold labels, read back over HTTP."""
    from stacking.maps import TrainMaps
    from stacking.tune import TuneSpace
    from stacking.tuned import TunedBlend
    from tests.conftest import TUNE_MEMBERS as MEMBERS
    from tests.conftest import make_evaluator

    config = write_config(tmp_path)
    open_run_dir(tmp_path / "run", claim=True)  # a run folder, as the workbench makes one
    url = f"sqlite:///{tmp_path / 'run' / 'optuna.db'}"
    train = TrainMaps.from_evaluator(make_evaluator(), MEMBERS).folds([0, 2])  # leaves fold 1 out
    TunedBlend(storage=url, study="blend", n_trials=2, space=TuneSpace(per_angle=False),
               user_attrs={"run": "runs/demo", "entry": "tuned"}).fit(train)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "workbench.cli", "dashboard", "--config", str(config),
                               "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        summaries = get_json(port, "/api/studies", time.time() + 90)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["blend-outer1"]
        labels = {a["key"]: a["value"] for a in summaries[0]["user_attrs"]}
        assert (labels["run"], labels["entry"], labels["outer_fold"]) == ("runs/demo", "tuned", "1")
        detail = get_json(port, f"/api/studies/{summaries[0]['study_id']}", time.time() + 10)
        assert detail["objective_names"] == ["mean Dice"]
    finally:
        server.terminate()
        server.communicate(timeout=10)
