"""The steps of a run, each a plain function of the config: data, folds (and later zoo, stack)."""

from __future__ import annotations

from pathlib import Path

from carvana.atomic import refuse_overwrite
from carvana.dataset import CarvanaData, car_of
from carvana.errors import WorkbenchError
from carvana.validate import DataSummary, check_data
from folds import Folds, assign_folds, car_strata, read_folds, write_folds
from folds.exchange import read_car_folds, write_car_folds
from workbench.config import ExperimentConfig, save_resolved
from workbench.fingerprint import check_fingerprint
from workbench.runfolder import FOLDS_CSV, open_run_dir, output_role


def ensure_data(config: ExperimentConfig) -> DataSummary:
    """Generate the synthetic studio when the config asks for it and the folder is missing; check it."""
    if not config.data.exists() and config.synth is not None:
        from carvana.synth import generate

        synth = config.synth
        print(
            f"generating the synthetic studio in {config.data} ({synth.cars} + {synth.test_cars} cars, "
            f"{synth.size[0]}x{synth.size[1]})"
        )
        generate(config.data, synth.cars, synth.test_cars, size=synth.size, seed=synth.seed, variant=synth.variant)
    return check_data(config.data)


def make_folds(config: ExperimentConfig, from_file: Path | None = None, summary: DataSummary | None = None) -> Folds:
    """Write RUN/folds.csv: car-grouped, stratified, seeded, or (`from_file`) a teammate's `id,fold` or
    `img,fold` file, checked car by car. Refuses to replace a different one, and a run folder that is no run
    (a folder of someone else's: workbench.runfolder). `summary`: the caller's data check (else it runs here)."""
    open_run_dir(config.run_dir)
    summary = summary or check_data(config.data)
    data = CarvanaData(config.data)
    check_fingerprint(config.run_dir, data, summary, record=(config.run_dir / FOLDS_CSV).exists())
    if from_file is not None:
        fold_of_car = read_car_folds(from_file, data.train_ids)
    else:
        cars = sorted({car_of(img) for img in data.train_ids})
        strata = car_strata(data, cars, config.folds.stratify)
        fold_of_car = assign_folds(cars, strata, n_folds=config.folds.n_folds, seed=config.folds.seed)
    path = config.run_dir / FOLDS_CSV
    if path.exists():
        existing = read_folds(path, data.train_ids)
        wanted = {img: fold_of_car[car_of(img)] for img in data.train_ids}
        if existing.fold_of != wanted:
            raise WorkbenchError(
                f"{path}: exists with a different assignment; every result in {config.run_dir} is built on it. "
                "Use another --run-dir, or delete the run folder to start over"
            )
        return existing
    open_run_dir(config.run_dir, claim=True)
    save_resolved(config)
    folds = write_folds(path, fold_of_car, data.train_ids)
    check_fingerprint(config.run_dir, data, summary, record=True)
    return folds


def export_folds(config: ExperimentConfig, path: Path) -> Path:
    """Write the run's folds (made first if the run has none) as `id,fold`, one row per car, for teammates;
    never onto one of the run's own files (carvana.atomic.refuse_overwrite)."""
    refuse_overwrite("--export", path, None, lambda p: output_role(p, config.run_dir), "team_folds.csv")
    open_run_dir(config.run_dir)
    folds = load_folds(config) if (config.run_dir / FOLDS_CSV).exists() else make_folds(config)
    return write_car_folds(path, folds)


def load_folds(config: ExperimentConfig) -> Folds:
    """RUN/folds.csv, checked against the data; a clear error when `workbench folds` has not run."""
    path = config.run_dir / FOLDS_CSV
    if not path.exists():
        raise WorkbenchError(f"{path}: not found; run `workbench folds --config ...` first")
    return read_folds(path, CarvanaData(config.data).train_ids)


def describe_folds(folds: Folds) -> str:
    lines = []
    for k in range(folds.n_folds):
        lines.append(f"  fold {k}: {len(folds.cars(k))} cars, {len(folds.ids(k))} images")
    return "\n".join(lines)
