"""What a run folder is, and which paths in it belong to the workbench.

A folder becomes a run only when the workbench makes it one: it is new or empty when a verb first writes
into it, and from then on it holds the marker `workbench-run.json`. Run folders made before the marker
existed are recognised by their `folds.csv` and data fingerprint (`data.json`) and get the marker when
first opened. Any other folder (a user's own work, a data folder, a home folder) is refused by every verb
before anything in it is read, written or cleaned: `open_run_dir` is called by `Run.open`, `make_folds`
and the run lock.

Output paths a user names (`submit --out`, `folds --export`, `blend --out`, `synth --out`) may lie in a run
folder, but never on its own files: `output_role` says what a path is to the run, for
`carvana.atomic.refuse_overwrite`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from carvana.atomic import TEMP_MARK, write_json_atomic
from carvana.errors import WorkbenchError
from oof.format import BOARDS_DIR, CACHE_DIR, ENTRIES_STORE, MEMBERS_STORE, TRAINED_DIR
from workbench.fingerprint import COMPARED, DATA_JSON

__all__ = [
    "FOLDS_CSV",
    "LOCK_NAME",
    "MARKER",
    "RUN_FILES",
    "RunPaths",
    "is_run_folder",
    "open_run_dir",
    "output_role",
]

MARKER = "workbench-run.json"
FOLDS_CSV, LEADERBOARD_CSV, CONFIG_YAML = "folds.csv", "leaderboard.csv", "config.yaml"
TUNE_JSON, OPTUNA_DB = "tune.json", "optuna.db"
LOCK_NAME = ".run.lock"
# The run's top-level files that verbs read back (SQLite's journals start with optuna.db too).
RUN_FILES = (MARKER, FOLDS_CSV, DATA_JSON, CONFIG_YAML, LEADERBOARD_CSV, TUNE_JSON, OPTUNA_DB, LOCK_NAME)
SUBMISSIONS_DIR = "submissions"
OUTPUT_DIRS = (SUBMISSIONS_DIR,)  # the only subfolder outputs may go to (`stack` writes one file per entry there)
MEMBERS_DIR, ENTRIES_DIR, REPORT_DIR = MEMBERS_STORE, ENTRIES_STORE, "report"


@dataclass(frozen=True)
class RunPaths:
    """Every path of a run folder the verbs read or write, named in one place (`Run.paths`, or
    `RunPaths(config.run_dir)` where no Run is open)."""

    root: Path

    @property
    def folds_csv(self) -> Path:
        return self.root / FOLDS_CSV

    @property
    def config_yaml(self) -> Path:
        return self.root / CONFIG_YAML

    @property
    def leaderboard(self) -> Path:
        return self.root / LEADERBOARD_CSV

    @property
    def tune_json(self) -> Path:
        return self.root / TUNE_JSON

    @property
    def optuna_db(self) -> Path:
        return self.root / OPTUNA_DB

    @property
    def submission(self) -> Path:
        """The chosen entry's submission, the one to upload."""
        return self.root / "submission.csv.gz"

    @property
    def submissions(self) -> Path:
        """One submission per top, chosen and second entry (for `workbench blend` and Kaggle's two picks)."""
        return self.root / SUBMISSIONS_DIR

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def members(self) -> Path:
        """The members' OOF and test maps (`oof.Store`)."""
        return self.root / MEMBERS_DIR

    @property
    def entries(self) -> Path:
        """The stacking entries' maps (`oof.Store`)."""
        return self.root / ENTRIES_DIR

    @property
    def trained(self) -> Path:
        """The members' checkpoints, logs, claims and markers (`zoo.runner.member_dir`)."""
        return self.root / TRAINED_DIR

    @property
    def cache(self) -> Path:
        return self.root / CACHE_DIR

    @property
    def boards(self) -> Path:
        """TensorBoard's event files, a folder per member x fold (`make tensorboard`)."""
        return self.root / BOARDS_DIR

    @property
    def blend(self) -> Path:
        """`make blend`'s output: the vote of the submissions in `submissions/`."""
        return self.root / "blend.csv.gz"

    def store(self, kind: str) -> Path:
        """The store holding a leaderboard entry of `kind`: members' maps for members, else the entries'."""
        return self.members if kind == "member" else self.entries


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds the marker, or is a run made before the marker (folds.csv and data.json)."""
    folder = Path(folder)
    return (folder / MARKER).is_file() or _is_earlier_run(folder)


def _is_earlier_run(folder: Path) -> bool:
    try:
        header = (folder / FOLDS_CSV).open().readline().strip()
        fingerprint = json.loads((folder / DATA_JSON).read_text())
    except (OSError, ValueError):
        return False
    return header.startswith("img,car,fold") and isinstance(fingerprint, dict) and set(COMPARED) <= set(fingerprint)


def open_run_dir(run_dir: Path, *, claim: bool = False) -> None:
    """Refuse a run folder that is not one (a file, or a folder holding anything but a run) in one line
    naming it and the fix; record the marker in a run made before it. With `claim` (the verb is about to
    write), a new or empty folder becomes a run: it is made and the marker written."""
    run_dir = Path(run_dir)
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                inside = "" if folder == run_dir else f", so {run_dir} cannot be a run folder"
                raise WorkbenchError(
                    f"{folder}: is a file, not a folder{inside}; pass a new or empty folder as --run-dir"
                )
            break
    if (run_dir / MARKER).is_file():
        return
    if _is_earlier_run(run_dir):
        try:
            _write_marker(run_dir, "recorded in a run made before the marker")
        except OSError:  # a read-only copy of an earlier run is still that run
            pass
        return
    others = _other_entries(run_dir)
    if others:
        shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
        raise WorkbenchError(
            f"{run_dir}: is not a workbench run folder (it holds {shown}) and nothing in it is changed; "
            "pass a new or empty folder as --run-dir (or set `run_dir:` in the config): the workbench makes it "
            f"a run (it then holds {MARKER})"
        )
    if claim:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_marker(run_dir, "made by the workbench")


def _other_entries(run_dir: Path) -> list[str]:
    """The entries of `run_dir` (none when it is missing), except the run lock and a marker being written
    by a parallel process (a fan-out starting on a new folder)."""
    if not run_dir.is_dir():
        return []
    marker_temp = f".{MARKER}."
    return [
        p.name
        for p in run_dir.iterdir()
        if p.name != LOCK_NAME and not (p.name.startswith(marker_temp) and TEMP_MARK in p.name)
    ]


def _write_marker(run_dir: Path, note: str) -> None:
    write_json_atomic(
        run_dir / MARKER, {"workbench": "run folder", "note": note, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    )


def output_role(path: Path, run_dir: Path | None = None) -> str | None:
    """What `path` (absolute, resolved) is to the run folder it lies in (`run_dir`, or a folder above it
    that is a run): the run folder itself, one of its own files or a file in its stores; None when an
    output may go there (a new top-level name, `submissions/`) or the path is in no run folder."""
    root = Path(run_dir).resolve() if run_dir is not None else None
    for folder in (path, *path.parents):
        if folder == root or is_run_folder(folder):
            return _role_in(path, folder)
    return None


def _role_in(path: Path, root: Path) -> str | None:
    parts = path.relative_to(root).parts
    if not parts:
        return f"the run folder {root} itself"
    name = parts[0]
    if len(parts) == 1 and not (root / name).is_dir():
        if name in RUN_FILES or name.startswith((OPTUNA_DB, ".")):
            return f"the run's own {name}, inside the run folder {root}, which the workbench reads back"
        return None
    if name in OUTPUT_DIRS and len(parts) == 2 and not parts[1].startswith("."):
        return None
    return f"inside {root / name}, a folder of the run that the workbench owns"
