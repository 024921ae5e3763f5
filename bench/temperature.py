"""Per-member temperatures before blending (issue 19 item 5): does putting members on a common footing help?

Teammates' maps are calibrated differently: one member sharp, another soft. A blend of probabilities then
listens more to the sharp one wherever they disagree. The usual fix is a temperature per member, fitted on
the fitting folds: p -> sigmoid(logit(p) / T_m), with T_m minimising member m's pixel log-loss there (a grid of
41 values from 0.2 to 5, every pixel of the fitting images, exactly from the level histograms). This bench fits
the temperatures inside the same car-grouped cross-fit as every entry (the temperatures of fold k's maps never
saw fold k), remaps each member's uint8 levels through its temperature, and scores the `weighted_mean` and
`selected` blends with and without, on finished runs of `bench.robust` (demo-size CPU members) and of
`bench.regime` (members at Carvana's accuracy, 1918x1280).

Usage: python -m bench.temperature [--robust DIR] [--regime DIR] [--sets NAME ...]
A run that is missing is skipped. Writes its section into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.common import machine_description, markdown_table, publish
from bench.robust import DATASETS
from bench.robust import WORK_DIR as ROBUST_DIR

TITLE = "Per-member temperatures before blending (bench.temperature)"
REGIME_DIR = Path("bench/_scratch/regime/cars6-2")
REGIME_SETS = ("comparable", "one-dominant", "failed-fold", "correlated-pair", "some-angles")
BLENDS = ("weighted_mean", "selected")
TEMPERATURES = np.exp(np.linspace(np.log(0.2), np.log(5.0), 41))
_P = np.clip(np.arange(256) / 255, 0.5 / 255, 1 - 0.5 / 255)  # half a level from 0 and 1
LOGIT = np.log(_P / (1 - _P))


def tempered_levels(temperature: float) -> np.ndarray:
    """(256,) uint8: the level of sigmoid(logit(level / 255) / temperature)."""
    return np.rint(255 / (1 + np.exp(-LOGIT / temperature))).astype(np.uint8)


def fit_temperature(levels: np.ndarray, truth: np.ndarray) -> float:
    """The grid temperature with the least pixel log-loss of `levels` (any shape, uint8) against `truth` (0/1)."""
    car = truth.reshape(-1) > 0
    flat = levels.reshape(-1)
    on, off = np.bincount(flat[car], minlength=256), np.bincount(flat[~car], minlength=256)
    losses = []
    for t in TEMPERATURES:
        q = np.clip(1 / (1 + np.exp(-LOGIT / t)), 1e-7, 1 - 1e-7)
        losses.append(-(on * np.log(q)).sum() - (off * np.log1p(-q)).sum())
    return float(TEMPERATURES[int(np.argmin(losses))])


def score_run(run_dir: Path, config: Path, data: Path | None) -> dict[str, tuple[float, float, list[list[float]]]]:
    """{blend: (honest OOF without, with temperatures, [temperatures per outer fold])} for one finished run."""
    from stacking.blenders import make_blender
    from stacking.maps import TrainMaps
    from stacking.robust import entry_per_image
    from workbench.config import load_config
    from workbench.run import Run
    from workbench.stack import finished_members

    run = Run.open(load_config(config, data=data, run_dir=run_dir))
    source = run.train_maps(finished_members(run))
    ids = source.ids
    maps = np.concatenate([b.maps for b in source.batches(with_truth=False)])
    truth = np.stack([run.truth(img) for img in ids])
    fold = np.array([source.fold_of[img] for img in ids])
    folds = sorted(set(fold.tolist()))
    out = {}
    for name in BLENDS:
        scores: dict[bool, list[np.ndarray]] = {False: [], True: []}
        temperatures = []
        for k in folds:
            fitting = fold != k
            found = [fit_temperature(maps[fitting, m], truth[fitting]) for m in range(maps.shape[1])]
            temperatures.append(found)
            tempered = np.stack([tempered_levels(t)[maps[:, m]] for m, t in enumerate(found)], axis=1)
            for use, x in ((False, maps), (True, tempered)):
                train = TrainMaps.from_arrays(x, truth, ids=ids, fold=fold)
                model = make_blender(name).fit(train.folds([f for f in folds if f != k]))
                scores[use].append(entry_per_image(model, train.folds([k])))
        out[name] = (float(np.concatenate(scores[False]).mean()), float(np.concatenate(scores[True]).mean()),
                     temperatures)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robust", type=Path, default=ROBUST_DIR, help="bench.robust's work folder")
    parser.add_argument("--regime", type=Path, default=REGIME_DIR, help="bench.regime's work folder (one size)")
    parser.add_argument("--sets", nargs="+", help="only these datasets / member sets")
    args = parser.parse_args(argv)
    demo = Path("configs/demo.yaml")
    runs = [(d.name, args.robust / d.name / "run", demo, args.robust / d.name / "data") for d in DATASETS]
    runs += [(s, args.regime / s / "run", args.regime / s / "config.yaml", None) for s in REGIME_SETS]
    rows: list[list[object]] = []
    deltas: dict[str, list[float]] = {name: [] for name in BLENDS}
    for name, run_dir, config, data in runs:
        if (args.sets and name not in args.sets) or not (run_dir / "leaderboard.csv").exists():
            continue
        found = score_run(run_dir, config, data)
        for blend, (plain, tempered, temperatures) in found.items():
            deltas[blend].append(tempered - plain)
            spread = np.array(temperatures)
            rows.append([name, blend, f"{plain:.5f}", f"{tempered:.5f}", f"{tempered - plain:+.5f}",
                         ", ".join(f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(spread.min(0), spread.max(0)))])
        print(f"{name}: done", flush=True)
    summary = "; ".join(
        f"{blend}: temperatures help on {sum(d > 0 for d in values)} of {len(values)}, mean {np.mean(values):+.5f}, "
        f"min {min(values):+.5f}, max {max(values):+.5f}" for blend, values in deltas.items() if values)
    text = "\n\n".join([
        f"`python -m bench.temperature` on {machine_description()}: honest car-grouped OOF mean Dice of each blend "
        "without and with per-member temperatures fitted on the fitting folds (finished runs of `bench.robust`, "
        "demo-size CPU members, and `bench.regime`, members at 0.996 and 1918x1280).",
        markdown_table(["dataset / member set", "blend", "OOF", "OOF with temperatures", "change",
                        "temperature range per member over the outer folds"], rows),
        f"- {summary}.",
    ])
    publish(TITLE, text, whole=not args.sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
