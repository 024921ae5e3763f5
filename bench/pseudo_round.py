"""The pseudo-label bench (`make bench-pseudo`): does a second round trained on unscored test photos help,
and does its honest OOF score still tell the truth?

On each of several differently generated studio datasets with a test split three times the train split
(24 train and 72 test cars; the competition's is 19.7 times), round one trains a U-Net; `workbench
pseudo-label` labels the test photos twice, the honest way (fold k's set by fold k's model only) and the
leaky way (every fold's set by the fold-averaged test maps); round two trains the same U-Net once on
each set. Per dataset and member: honest OOF and test-truth mean Dice, the OOF-minus-test gap (a
recipe whose OOF score flatters it shows a larger gap than round one), and the seconds each step took.
Everything runs through the CLI, as a user would; nothing is tuned on the test truth.

Usage: python -m bench.pseudo_round [--work DIR] [--quick]
A dataset whose runs finished is reused (delete its folder under --work to redo it).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine_description, markdown_table, replace_results_section

TITLE = "Pseudo-labels: a fold-honest second round against round one and the leaky recipe"
WORK_DIR = Path("bench/_scratch/pseudo")
DATASETS = [("default-s1", "default", 1), ("small-cars-s2", "small-cars", 2), ("pale-fleet-s3", "pale-fleet", 3)]
BASE, HONEST, LEAKY = "unet_resnet18_64", "unet_resnet18_64_pseudo", "unet_resnet18_64_leaky"
CONFIG = """# written by bench/pseudo_round.py
data: {data}
run_dir: {run}
seed: 0
folds: {{n_folds: 3, stratify: area, seed: 0}}
zoo:
  train: {{epochs: {epochs}, batch_size: 8, early_stop_patience: 4, plateau_patience: 2}}
  members:
    - {base}
    - {{name: {honest}, arch: unet, encoder: resnet18, decoder_channels: [64, 32, 16, 8], height: 64, width: 96,
       train: {{pseudo: honest, pseudo_share: 0.25}}}}
    - {{name: {leaky}, arch: unet, encoder: resnet18, decoder_channels: [64, 32, 16, 8], height: 64, width: 96,
       train: {{pseudo: leaky, pseudo_share: 0.25}}}}
pseudo:  # the same number of photos in both sets, so that only the labels' source differs
  honest: {{source: [{base}], n_photos: {n_photos}, max_uncertain_share: 1.0}}
  leaky: {{source: [{base}], n_photos: {n_photos}, max_uncertain_share: 1.0, leaky: true}}
"""


def workbench(args: list[str], log: Path) -> float:
    """Run `workbench ARGS` (output to `log`); its seconds; SystemExit naming the log when it fails."""
    start = time.time()
    with open(log, "a") as out:
        done = subprocess.run([sys.executable, "-m", "workbench.cli", *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"workbench {' '.join(args)} failed; see {log}")
    return time.time() - start


def run_dataset(name: str, variant: str, seed: int, work: Path, cars: tuple[int, int], size: str,
                epochs: int) -> dict:
    """Both rounds on one dataset; {member: (oof, test)} plus the seconds of each step."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    data, log = folder / "data", folder / "log.txt"
    if not data.exists():
        workbench(["synth", "--out", str(data), "--cars", str(cars[0]), "--test-cars", str(cars[1]), "--size", size,
                   "--seed", str(seed), "--variant", variant], log)
    config = folder / "pseudo.yaml"
    config.write_text(CONFIG.format(data=data, run=folder / "run", epochs=epochs, base=BASE, honest=HONEST,
                                    leaky=LEAKY, n_photos=cars[1] * 16 // 4))
    seconds = {}
    for step, verb in [("round one", "fold-train"), ("pseudo-label", "pseudo-label"), ("round two", "fold-train")]:
        seconds[step] = workbench([verb, "--config", str(config)], log)
    rows = {r["entry"]: r for r in csv.DictReader(open(folder / "run" / "leaderboard.csv"))}
    scores = {m: (float(rows[m]["oof_mean_dice"]), float(rows[m]["test_mean_dice"])) for m in (BASE, HONEST, LEAKY)}
    records = {s: sorted((folder / "run" / "pseudo" / s).glob("fold*.json")) for s in ("honest", "leaky")}
    kept = {s: [len(json.loads(p.read_text())["ids"]) for p in paths] for s, paths in records.items()}
    return {"scores": scores, "seconds": seconds, "kept": kept}


def section(results: dict[str, dict], cars: tuple[int, int], size: str, epochs: int, command: str) -> str:
    rows, gaps = [], {m: [] for m in (BASE, HONEST, LEAKY)}
    gains = {m: [] for m in (HONEST, LEAKY)}
    for name, result in results.items():
        scores = result["scores"]
        base_oof, base_test = scores[BASE]
        for member in (BASE, HONEST, LEAKY):
            oof, test = scores[member]
            gaps[member].append(oof - test)
            if member != BASE:
                gains[member].append((oof - base_oof, test - base_test))
            rows.append([name, member, f"{oof:.4f}", f"{test:.4f}", f"{oof - test:+.4f}",
                         "" if member == BASE else f"{oof - base_oof:+.4f}",
                         "" if member == BASE else f"{test - base_test:+.4f}"])
    table = markdown_table(["dataset", "member", "honest OOF", "test truth", "OOF - test", "OOF gain vs round one",
                            "test gain vs round one"], rows)
    time_rows = [[name, *(f"{r['seconds'][s]:.0f}" for s in ("round one", "pseudo-label", "round two")),
                  ", ".join(map(str, r["kept"]["honest"])), ", ".join(map(str, r["kept"]["leaky"]))]
                 for name, r in results.items()]
    times = markdown_table(["dataset", "round one (s)", "pseudo-label (s)", "round two, 2 members (s)",
                            "honest photos kept per fold", "leaky photos kept per fold"], time_rows)
    summary = []
    for member in (HONEST, LEAKY):
        oof_gain = [g[0] for g in gains[member]]
        test_gain = [g[1] for g in gains[member]]
        summary.append([member, f"{statistics.mean(oof_gain):+.4f} ({min(oof_gain):+.4f}..{max(oof_gain):+.4f})",
                        f"{statistics.mean(test_gain):+.4f} ({min(test_gain):+.4f}..{max(test_gain):+.4f})",
                        f"{statistics.mean(gaps[member]):+.4f}", f"{statistics.mean(gaps[BASE]):+.4f}"])
    overview = markdown_table(["member", "OOF gain, mean (min..max)", "test gain, mean (min..max)",
                               "mean OOF - test", "round one's mean OOF - test"], summary)
    return (
        f"`{command}`: {len(results)} studio datasets, {cars[0]} train and {cars[1]} test cars at {size}, 3 "
        f"car-grouped folds, members at 64x96 for up to {epochs} epochs (CPU). Round one: `{BASE}`. "
        f"`{HONEST}`: the same network, fold k also trained on fold k's honest set (the quarter of the test photos "
        f"with the fewest uncertain pixels, labelled by round one's fold-k model; hard labels, uncertain pixels out "
        f"of the loss, at most a quarter of each batch). `{LEAKY}`: the same with labels from round one's "
        f"fold-averaged test maps (models that trained on every fold), the same number of photos. "
        f"Machine: {machine_description()}; load average "
        f"{os.getloadavg()[0]:.1f} at the end.\n\n{overview}\n\n{table}\n\n"
        f"Seconds per step, and the test photos each set kept (of {cars[1] * 16}):\n\n{times}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=WORK_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny datasets and 1 epoch: checks the bench only")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every member (default 4: ~20 min here)")
    args = parser.parse_args(argv)
    cars, size, epochs = ((6, 18), "96x64", 1) if args.quick else ((24, 72), "288x192", args.epochs)
    command = "python -m bench.pseudo_round" + (" --quick" if args.quick else f" --epochs {epochs}")
    results = {}
    for name, variant, seed in DATASETS:
        print(f"== {name}", flush=True)
        results[name] = run_dataset(name, variant, seed, args.work, cars, size, epochs)
        print(results[name], flush=True)
    text = section(results, cars, size, epochs, command)
    print(text)
    if not args.quick:
        print(f"wrote {replace_results_section(TITLE, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
