"""Ctrl-C as a terminal sends it (SIGINT to the whole process group) at several moments of a run: each time
one `interrupted` line, exit 130, no traceback from Optuna or a worker process; the same command run again
finishes the run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, read_csv

RUN = """\
zoo:
  train: {epochs: 1, batch_size: 8}
  members:
    - avg_mask_128
    - {name: simple_cnn_64, arch: simple_cnn, height: 64, width: 96}
stack:
  blends: [mean, weighted_mean]
  stackers: [logistic]
  postprocess: []
  max_pixels: 5000
tune:
  n_trials: 30
"""


def _terminal_sigint() -> None:
    """In the child before exec: SIGINT as a terminal's foreground job has it. A process started with SIGINT
    ignored (pytest-xdist's workers ignore it; so does `cmd &` in a script) passes that on, and Python then
    keeps ignoring it: the command would rightly never see a Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ctrl_c(config: Path, verb: str, marker: str, after: float = 0.0, *extra: str) -> str:
    """`workbench VERB --config CONFIG` in a session of its own, sent SIGINT as a group `after` seconds after
    `marker` shows on its stderr; returns the stderr, having checked what a Ctrl-C must print."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", verb, "--config", str(config), *extra],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_terminal_sigint,
    )
    assert proc.stderr is not None
    seen = b""
    while marker.encode() not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"{verb} ended before {marker!r}: {seen.decode()[-2000:]}"
        seen += chunk
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)
    seen += proc.stderr.read()
    assert proc.wait(timeout=120) == 130, seen.decode()[-3000:]
    text = seen.decode()
    for noise in ("Traceback", "KeyboardInterrupt", "failed with"):
        assert noise not in text, f"{verb}, {after} s after {marker!r}:\n{text[-3000:]}"
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1] == "interrupted" and lines.count("interrupted") == 1, text[-2000:]
    return text


def run_cli(config: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *args, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_ctrl_c_at_several_moments_prints_one_line_and_the_run_goes_on(tiny_data_master, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data_master, data)
    config = tmp_path / "tiny.yaml"
    config.write_text(f"data: {data}\nrun_dir: {tmp_path / 'run'}\nfolds: {{n_folds: 3}}\n" + RUN)

    ctrl_c(config, "fold-train", "epoch 1/1")  # a PyTorch member training
    run_cli(config, "fold-train")
    ctrl_c(config, "tune", "-outer0: ", 0.5)  # inside an Optuna trial
    ctrl_c(config, "stack", "logistic: fits", 0.2)  # the stacker's fits (worker processes importing)
    ctrl_c(config, "stack", "tuned: fits", 0.5)  # inside a study of the tuned blend
    ctrl_c(config, "stack", "entries: test maps")  # every entry's test maps, in the one pass's workers
    run_cli(config, "stack")
    for after in (0.0, 0.05, 0.1):  # the submission's encoding workers starting
        ctrl_c(config, "submit", "writing submission", after)
    run_cli(config, "submit")
    rows = read_csv(tmp_path / "run" / "submission.csv.gz")
    assert len(rows) == len(list((data / "test").iterdir()))


def test_an_error_raised_while_a_ctrl_c_unwinds_is_the_ctrl_c():
    """As when Optuna's bookkeeping fails in a `finally` under a Ctrl-C: the CLI reports the interrupt."""
    from carvana.interrupts import during_interrupt

    def cleanup_fails_under_interrupt() -> None:
        try:
            raise KeyboardInterrupt
        finally:
            raise UnboundLocalError("updated_state")

    try:
        cleanup_fails_under_interrupt()
    except UnboundLocalError as error:
        assert during_interrupt(error)
    assert not during_interrupt(ValueError("a bug"))


def test_a_ctrl_c_raised_inside_a_finaliser_is_not_lost():
    """SIGINT's KeyboardInterrupt can land while a finaliser runs, where Python only prints "Exception ignored"
    (seen in CI: the command then finished with exit 0); it is raised again in the main thread's next line."""
    code = (
        "import time\n"
        "from carvana.interrupts import relay_interrupts\n"
        "relay_interrupts()\n"
        "class Finalised:\n"
        "    def __del__(self):\n"
        "        raise KeyboardInterrupt\n"
        "Finalised()\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        time.sleep(0.01)\n"
        "    print('lost')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, preexec_fn=_terminal_sigint
    )
    assert done.stdout.strip() == "interrupted" and "Exception ignored" not in done.stderr, done.stderr
