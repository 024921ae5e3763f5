"""The robustness bench (`make bench-robust`): the whole demo pipeline on differently generated datasets.

A stacking default that wins on one synthetic dataset can lose on the next; this bench is how the
workbench is judged instead. Each dataset is the studio at another seed and another variant
(`carvana.synth.variants`: car size in the frame, paint mix, annotation habits) or photo size; on
each, `workbench demo` runs unchanged (folds, fold-train, stack, submission, local score) as a
subprocess, and its leaderboard is read back. The section written to `bench/RESULTS.md` gives, per
dataset, the best member, the entry the workbench chose (best honest OOF), both on honest OOF and
on the held-out synthetic test truth, the chosen entry's gain, and every entry's score; then the
spread of the gain over the datasets. Nothing here picks or tunes anything.

Usage: python -m bench.robust [--config configs/demo.yaml] [--only NAME ...] [--work DIR] [--quick]
  --quick: the seconds-scale smoke config on tiny datasets (checks the bench itself, not the stack).
A dataset whose run finished is reused (delete its folder under --work to redo it).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import markdown_table, replace_results_section

TITLE = "Robustness: the demo pipeline on differently generated datasets"
WORK_DIR = Path("bench/_scratch/robust")


@dataclass(frozen=True)
class Dataset:
    name: str
    variant: str
    seed: int
    size: tuple[int, int]  # (W, H)


DATASETS = [
    Dataset("default-s1", "default", 1, (480, 320)),
    Dataset("small-cars-s2", "small-cars", 2, (480, 320)),
    Dataset("pale-fleet-s3", "pale-fleet", 3, (576, 384)),
    Dataset("sloppy-annotators-s4", "sloppy-annotators", 4, (480, 320)),
    Dataset("close-up-s5", "close-up", 5, (384, 256)),
]
FULL_CARS, QUICK_CARS = (24, 8), (6, 2)
QUICK_SIZE = (96, 64)


def run_dataset(ds: Dataset, *, config: Path, work: Path, cars: tuple[int, int], size: tuple[int, int]) -> Path:
    """Generate `ds` (if missing) and run `workbench demo` on it (if not finished); return its run folder."""
    data, run = work / ds.name / "data", work / ds.name / "run"
    if not data.exists():
        _workbench(["synth", "--out", str(data), "--cars", str(cars[0]), "--test-cars", str(cars[1]),
                    "--size", f"{size[0]}x{size[1]}", "--seed", str(ds.seed), "--variant", ds.variant],
                   log=work / ds.name / "synth.log")
    if not (run / "leaderboard.csv").exists() or not (run / "submission.csv.gz").exists():
        start = time.time()
        _workbench(["demo", "--config", str(config), "--data", str(data), "--run-dir", str(run)],
                   log=work / ds.name / "demo.log")
        (work / ds.name / "seconds.txt").write_text(f"{time.time() - start:.0f}\n")
    return run


def _workbench(args: list[str], *, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "workbench.cli", *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"workbench {args[0]} failed (exit {done.returncode}); see {log}:\n" + "\n".join(tail))


def read_leaderboard(run: Path) -> list[dict[str, str]]:
    """The run's leaderboard rows, best honest OOF first (the order `workbench stack` writes)."""
    with open(run / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def summarise(name: str, rows: list[dict[str, str]]) -> dict[str, object]:
    """Best member, chosen entry (the one `workbench stack` chose and submitted, `stacking.choice`) and the
    chosen entry's gains, for one dataset."""
    from stacking.choice import chosen_row

    members = [r for r in rows if r["kind"] == "member"]
    best = max(members, key=lambda r: float(r["oof_mean_dice"]))
    chosen = chosen_row(rows)

    def test(row: dict[str, str]) -> float | None:
        return float(row["test_mean_dice"]) if row.get("test_mean_dice") else None

    gain_test = None if test(chosen) is None or test(best) is None else test(chosen) - test(best)
    top = max(rows, key=lambda r: float(r["oof_mean_dice"]))  # what choosing the maximum would have submitted
    scored = [r for r in rows if test(r) is not None]
    test_best = max((test(r) for r in scored), default=None)
    return {"max": top["entry"], "max_test": test(top), "test_best": test_best,
            "dataset": name, "best_member": best["entry"], "best_oof": float(best["oof_mean_dice"]),
            "best_test": test(best), "chosen": chosen["entry"], "chosen_oof": float(chosen["oof_mean_dice"]),
            "chosen_test": test(chosen), "gain_oof": float(chosen["oof_mean_dice"]) - float(best["oof_mean_dice"]),
            "gain_test": gain_test,
            "worst_learned_gap": min((float(r["oof_mean_dice"]) - float(best["oof_mean_dice"])
                                      for r in rows if learned(r)), default=None)}


def rule_against_max(summaries: list[dict[str, object]]) -> str:
    """The choice rule scored on the test truth against choosing the maximum honest OOF (issue 19)."""

    def count(key: str, against: str) -> int:
        return sum(s[key] is not None and s[against] is not None and s[key] >= s[against] for s in summaries)

    n = len(summaries)
    differs = [f"{s['dataset']}: rule {s['chosen']} {_f(s['chosen_test'])}, max {s['max']} {_f(s['max_test'])}"
               for s in summaries if s["chosen"] != s["max"]]
    at_or_above = count("chosen_test", "best_test")
    return (f"The rule's choice is at or above the best member on the test truth in {at_or_above} "
            f"of {n} datasets, the maximum honest OOF in {count('max_test', 'best_test')}; the rule's choice is the "
            f"best entry on the test truth in {count('chosen_test', 'test_best')} of {n}, the maximum in "
            f"{count('max_test', 'test_best')}. "
            + (f"Where they differ: {'; '.join(differs)}." if differs else "They chose the same entry everywhere."))


def learned(row: dict[str, str]) -> bool:
    """Entries fitted on the truth (`stacking.ensemble.is_learned`), or made from them (the mean of entries)."""
    from stacking.ensemble import is_learned

    return is_learned(row["entry"], row["kind"]) or row["kind"] == "ensemble"


def _f(value: object, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def render(datasets: list[Dataset], runs: dict[str, Path], *, config: Path, cars: tuple[int, int],
           quick: bool) -> str:
    """The markdown section: a summary row per dataset, every entry's scores, and the spread of the gain."""
    boards = {ds.name: read_leaderboard(runs[ds.name]) for ds in datasets}
    summaries = [summarise(ds.name, boards[ds.name]) for ds in datasets]
    size = {ds.name: QUICK_SIZE if quick else ds.size for ds in datasets}
    seconds = {ds.name: (runs[ds.name].parent / "seconds.txt") for ds in datasets}
    head = ["dataset", "variant, seed, size", "best member", "OOF", "test", "chosen entry", "OOF", "test",
            "gain OOF", "gain test", "worst learned entry vs best member (OOF)", "demo s"]
    table = [[s["dataset"], f"{ds.variant}, {ds.seed}, {size[ds.name][0]}x{size[ds.name][1]}", s["best_member"],
              _f(s["best_oof"]), _f(s["best_test"]), s["chosen"], _f(s["chosen_oof"]), _f(s["chosen_test"]),
              _f(s["gain_oof"], signed=True), _f(s["gain_test"], signed=True),
              _f(s["worst_learned_gap"], signed=True),
              seconds[ds.name].read_text().strip() if seconds[ds.name].exists() else "-"]
             for s, ds in zip(summaries, datasets)]
    entries = sorted({r["entry"] for rows in boards.values() for r in rows})
    by_entry = [[e] + [_cell(boards[ds.name], e) for ds in datasets] for e in entries]
    gains = [float(s["gain_oof"]) for s in summaries]
    test_gains = [float(s["gain_test"]) for s in summaries if s["gain_test"] is not None]
    spread = (f"Chosen entry's gain over the best member, honest OOF: mean {statistics.mean(gains):+.4f}, "
              f"min {min(gains):+.4f}, max {max(gains):+.4f}")
    if test_gains:
        spread += (f"; on the test truth: mean {statistics.mean(test_gains):+.4f}, min {min(test_gains):+.4f}, "
                   f"max {max(test_gains):+.4f}")
        spread += "\n- " + rule_against_max(summaries)
    return "\n".join([
        f"`python -m bench.robust{' --quick' if quick else ''}`: `workbench demo --config {config}` unchanged on "
        f"{len(datasets)} studio datasets ({cars[0]} train / {cars[1]} test cars each; variants in "
        "`carvana/synth/variants.py`). The chosen entry is the one `workbench stack` submits (`stacking.choice`: "
        "the best honest, car-grouped OOF mean Dice when its gain over the best member and the plain mean is clear "
        "of the car-bootstrap noise, else the simplest of those); test is the held-out synthetic truth, never "
        "used to choose.",
        "", markdown_table(head, table), "", f"- {spread}.",
        "", "Every entry, honest OOF mean Dice (test mean Dice):", "",
        markdown_table(["entry"] + [ds.name for ds in datasets], by_entry)])


def _cell(rows: list[dict[str, str]], entry: str) -> str:
    for row in rows:
        if row["entry"] == entry:
            test = row.get("test_mean_dice")
            return f"{float(row['oof_mean_dice']):.4f}" + (f" ({float(test):.4f})" if test else "")
    return "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="experiment config (default: demo, or smoke with --quick)")
    parser.add_argument("--only", nargs="*", help="dataset names to run")
    parser.add_argument("--work", type=Path, help=f"where datasets and runs go (default {WORK_DIR})")
    parser.add_argument("--quick", action="store_true", help="smoke config on tiny datasets (checks the bench)")
    args = parser.parse_args(argv)
    config = args.config or Path("configs/smoke.yaml" if args.quick else "configs/demo.yaml")
    work = args.work or WORK_DIR / ("quick" if args.quick else "full")
    cars = QUICK_CARS if args.quick else FULL_CARS
    datasets = [ds for ds in DATASETS if not args.only or ds.name in args.only]
    if not datasets:
        parser.error(f"--only matches no dataset; names: {', '.join(ds.name for ds in DATASETS)}")
    runs = {}
    for ds in datasets:
        print(f"== {ds.name}", flush=True)
        runs[ds.name] = run_dataset(ds, config=config, work=work, cars=cars, size=QUICK_SIZE if args.quick else ds.size)
    section = render(datasets, runs, config=config, cars=cars, quick=args.quick)
    print(section)
    if args.quick or args.only:
        print("(not writing bench/RESULTS.md: only a full run over every dataset does)")
    else:
        print(f"wrote {replace_results_section(TITLE, section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
