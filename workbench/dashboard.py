"""`workbench dashboard`: optuna-dashboard on the run's tuning storage (RUN/optuna.db or `tune.storage`)."""

from __future__ import annotations

from pathlib import Path

from carvana.errors import WorkbenchError
from stacking.storage import sqlite_path
from workbench.config import ExperimentConfig
from workbench.runfolder import open_run_dir
from workbench.tune import storage_url

NOT_YET = "run `workbench tune --config ...` (or `make stack`) first"


def require_storage(url: str) -> None:
    """WorkbenchError when a file storage (sqlite:///PATH, journal:PATH) does not exist yet.

    Opening a missing SQLite file would silently create an empty database; server URLs are not checked.
    """
    path = sqlite_path(url) if url.startswith("sqlite:") else Path(url.removeprefix("journal:"))
    if url.startswith(("sqlite:", "journal:")) and path is not None:
        if not path.is_file():
            raise WorkbenchError(f"{path}: no tuning storage yet (tune.storage is {url}); {NOT_YET}")


def serve_dashboard(config: ExperimentConfig, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard on the run's storage until interrupted (Ctrl-C)."""
    open_run_dir(config.run_dir)  # a folder that is not a run is refused, even when the storage is elsewhere
    url = storage_url(config)
    require_storage(url)
    from optuna_dashboard import run_server

    from stacking.storage import open_storage

    storage = open_storage(url)
    print(f"optuna-dashboard for {url} at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        run_server(storage, host=host, port=port)
    except OSError as error:
        reason = error.strerror or error
        raise WorkbenchError(f"cannot serve on {host}:{port} ({reason}); pass another --port") from None
