"""The regime bench (`make bench-regime`): `workbench stack` at Carvana's real accuracy (Dice ~0.997), on
several generated member sets.

Every stacking figure of the demo comes from CPU members at 0.93-0.98, where any learned entry gains; the
competition was decided at 0.997, where places are 0.0001 apart and a blend of seven members gained 0.0002.
Here each member set (`SETS`) is written with `bench.calibrated` at 1918x1280 onto one Kaggle-shaped dataset
(`bench.scale.prepare_data`: studio cars, 5 car-grouped folds), `workbench stack` runs with
`configs/kaggle.yaml`'s stack section, and the section written to `bench/RESULTS.md` gives, per set, every
entry's honest OOF and test-truth mean Dice, the entry `stack` chose, the best member, and the chosen entry's
gain over it on both; then, over the sets, how often the chosen entry is also the best on the test truth,
against choosing the maximum honest OOF. Nothing here picks or tunes a default.

Usage: python -m bench.regime [--cars 6] [--test-cars 2] [--n-trials 20] [--only SET ...] [--work DIR] [--quick]
A set whose stack finished is reused (delete its folder under --work to redo it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.calibrated import Style, write_members
from bench.common import board_table, machine_description, markdown_table, read_set, replace_results_section
from bench.scale import REPO, prepare_data, write_config

TITLE = "Regime: stacking at Carvana's accuracy (bench.regime)"
WORK_DIR = REPO / "bench" / "_scratch" / "regime"

COMPARABLE = [
    Style("m_a"),
    Style("m_b", bias=0.2, offset=1.6),
    Style("m_c", softness=1.2, offset=1.4),
    Style("m_d", thin=9),
]
SETS: dict[str, list[Style]] = {
    "comparable": [*COMPARABLE, Style("m_e", offset=1.55, fold_noise=0.9)],
    "one-dominant": [Style("top", offset=1.15, fold_noise=0.6, thin=5, roof=2.5), *COMPARABLE[1:]],
    "failed-fold": [*COMPARABLE, Style("m_f", weak_fold=2)],
    "correlated-pair": [*COMPARABLE, Style("m_a2", softness=1.0, twin="m_a")],
    "some-angles": [*COMPARABLE, Style("m_g", offset=1.05, weak_angles=(1, 2, 3, 14, 15, 16))],
}


def run_set(name: str, styles: list[Style], data: Path, work: Path, n_trials: int) -> Path:
    """Folds, the set's member maps and `workbench stack` in WORK/NAME (each step skipped when done)."""
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    config = write_config(out, data, n_trials)
    run = out / "run"
    if (run / "leaderboard.csv").exists() and (out / "stack.log").exists():
        return out
    cli = [sys.executable, "-m", "workbench.cli"]
    if not (run / "folds.csv").exists():
        subprocess.run([*cli, "folds", "--config", str(config)], check=True, cwd=REPO, capture_output=True)
    start = time.perf_counter()
    write_members(run, data, styles, tag=f"regime/{name}")
    print(f"{name}: member maps {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    with open(out / "stack.log.partial", "w") as log:
        subprocess.run([*cli, "stack", "--config", str(config)], check=True, cwd=REPO, stdout=log,
                       stderr=subprocess.STDOUT)
    (out / "stack.log.partial").rename(out / "stack.log")
    print(f"{name}: stack {time.perf_counter() - start:.0f} s", flush=True)
    return out


def section(results: dict[str, dict], args: argparse.Namespace) -> str:
    summary = []
    for name, r in results.items():
        oof, test, best, chosen = r["oof"], r["test"], r["best"], r["chosen"]
        summary.append([
            name, f"{best} {oof[best]:.5f} / {test[best]:.5f}", chosen,
            f"{oof[chosen] - oof[best]:+.5f}", f"{test[chosen] - test[best]:+.5f}",
            f"{r['top']} ({test[r['top']] - test[best]:+.5f})",
            f"{min(oof[e] - oof[best] for e in oof if e not in r['members']):+.5f}" if len(oof) > len(r["members"])
            else "",
        ])
    rule_hits = sum(r["test"][r["chosen"]] >= r["test"][r["best"]] for r in results.values())
    max_hits = sum(r["test"][r["top"]] >= r["test"][r["best"]] for r in results.values())
    parts = [
        f"`python -m bench.regime --cars {args.cars} --test-cars {args.test_cars} --n-trials {args.n_trials}` on "
        f"{machine_description()}: {args.cars * 16} train and {args.test_cars * 16} test photos at 1918x1280, "
        "5 car-grouped folds, members from `bench.calibrated`, configs/kaggle.yaml's stack section.",
        markdown_table(["set", "best member (OOF / test)", "chosen", "gain OOF", "gain test",
                        "max honest OOF (its test gain)", "worst non-member entry vs best member (OOF)"], summary),
        f"The chosen entry is at or above the best member on the test truth in {rule_hits} of {len(results)} sets; "
        f"choosing the maximum honest OOF would be in {max_hits} of {len(results)}.",
    ]
    for name, r in results.items():
        parts += [f"**{name}** ({', '.join(s.name for s in SETS[name])}):", board_table(r["rows"])]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cars", type=int, default=6, help="train cars (x 16 photos)")
    parser.add_argument("--test-cars", type=int, default=2, help="test cars (x 16 photos)")
    parser.add_argument("--n-trials", type=int, default=20, help="trials per tuning study")
    parser.add_argument("--only", nargs="+", choices=list(SETS), help="these member sets only")
    parser.add_argument("--work", type=Path, default=WORK_DIR)
    parser.add_argument("--quick", action="store_true", help="5 train cars, 1 test car, 3 trials; no RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.cars, args.test_cars, args.n_trials = 5, 1, 3
    work = args.work / f"cars{args.cars}-{args.test_cars}"
    data = prepare_data(work, args.cars, args.test_cars)
    results = {}
    for name in args.only or SETS:
        out = run_set(name, SETS[name], data, work, args.n_trials)
        results[name] = {**read_set(out), "members": [s.name for s in SETS[name]]}
    text = section(results, args)
    print(text)
    if not args.quick and not args.only:
        replace_results_section(TITLE, text)
        print("wrote its section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
