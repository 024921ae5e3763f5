"""A yes/no stack option on the robustness bench's runs (issue 19 item 5): `workbench stack` with the option off
and on, on two copies of each finished run, and what it did to every learned entry and to the entry the stack
chose, on honest OOF and on the held-out synthetic test truth. The options measured (`OPTIONS`):
- `guard` (`stacking.robust.Guarded`): a learned entry is kept only where inner car-grouped folds show it beats
  the selected blend clear of the car-bootstrap noise. How much it limits the learned entries' losses to the
  best member, and what it costs the submission.
- `monotone` (`stacking.pixel_stacker`): LightGBM's answer may only rise with each member's own probability and
  logit.

Usage: python -m bench.stack_option --option guard|monotone [--work bench/_scratch/robust]
       [--config configs/demo.yaml] [--only NAME ...]
Needs `python -m bench.robust --work DIR` finished first: its trained members are reused, nothing is retrained.
A variant whose stack finished is reused (delete WORK/NAME/<option>-off or <option>-on to redo it).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bench.common import chosen_entry, machine_description, markdown_table, publish
from bench.robust import DATASETS, WORK_DIR, learned

OPTIONS = {  # stack option -> the title of its RESULTS.md section
    "guard": "Guarded entries on the robustness datasets (bench.stack_option --option guard)",
    "monotone": "Monotone LightGBM on the robustness datasets (bench.stack_option --option monotone)",
}
LEARNED = ("lightgbm", "logistic", "tuned")
SHARED = ("members", "oof", "cache")  # read-only for `stack`: hard-linked into the copies, not copied


def copy_run(run: Path, out: Path) -> None:
    """A copy of `run` that `workbench stack` may rewrite without touching the original."""
    out.mkdir(parents=True)
    for item in run.iterdir():
        if item.name in SHARED:
            shutil.copytree(item, out / item.name, copy_function=os.link)
        elif item.is_dir():
            shutil.copytree(item, out / item.name)
        else:
            shutil.copy2(item, out / item.name)


def stack_variant(work: Path, name: str, config: Path, option: str, on: bool) -> Path:
    """`workbench stack` with `stack.<option>: <on>` on a copy of WORK/NAME/run; returns the copy's folder."""
    out = work / name / f"{option}-{'on' if on else 'off'}"
    if (out / "stack.log").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    copy_run(work / name / "run", out / "run")
    settings = yaml.safe_load(config.read_text())
    settings["stack"] = {**(settings.get("stack") or {}), option: on}
    (out / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    command = [sys.executable, "-m", "workbench.cli", "stack", "--config", str(out / "config.yaml"),
               "--data", str(work / name / "data"), "--run-dir", str(out / "run")]
    with open(out / "stack.log.partial", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    (out / "stack.log.partial").rename(out / "stack.log")
    return out


def board(out: Path) -> dict:
    rows = {r["entry"]: r for r in csv.DictReader(open(out / "run" / "leaderboard.csv"))}
    best = max((e for e, r in rows.items() if r["kind"] == "member"), key=lambda e: float(rows[e]["oof_mean_dice"]))
    return {"rows": rows, "best": best, "chosen": chosen_entry(out / "stack.log")}


def gain(b: dict, entry: str, column: str = "oof_mean_dice") -> float:
    return float(b["rows"][entry][column]) - float(b["rows"][b["best"]][column])


def section(results: dict[str, tuple[dict, dict]], config: Path, option: str) -> str:
    table, worst = [], {"off": [], "on": []}
    for name, (off, on) in results.items():
        row = [name, off["best"]]
        row += [f"{gain(off, e):+.4f} → {gain(on, e):+.4f}" for e in LEARNED]
        row += [f"{b['chosen']} {gain(b, b['chosen']):+.4f} / {gain(b, b['chosen'], 'test_mean_dice'):+.4f}"
                for b in (off, on)]
        row.append(", ".join(f"{e} {gain(off, e, 'test_mean_dice'):+.4f} → {gain(on, e, 'test_mean_dice'):+.4f}"
                             for e in LEARNED))
        table.append(row)
        for key, b in (("off", off), ("on", on)):
            worst[key].append(min(gain(b, e) for e, r in b["rows"].items() if learned(r)))
    n = len(results)

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):+.4f}"

    def chosen(i: int, column: str) -> str:
        return mean([gain(r[i], r[i]["chosen"], column) for r in results.values()])

    return "\n\n".join([
        f"`python -m bench.stack_option --option {option}` on {machine_description()}: `workbench stack --config "
        f"{config}` with `stack.{option}` off and on, on copies of the finished runs of `python -m bench.robust` "
        f"({n} datasets, the same members). "
        "Gains are over the best member, honest OOF unless marked test (the held-out synthetic truth, never used to "
        "choose).",
        markdown_table(["dataset", "best member", *(f"{e} OOF gain, off → on" for e in LEARNED),
                        f"chosen, {option} off: gain OOF / test", f"chosen, {option} on: gain OOF / test",
                        "test gains, off → on"], table),
        f"- Worst learned entry against the best member, honest OOF: {option} off {min(worst['off']):+.4f} "
        f"(per dataset {', '.join(f'{w:+.4f}' for w in worst['off'])}); {option} on {min(worst['on']):+.4f} "
        f"(per dataset {', '.join(f'{w:+.4f}' for w in worst['on'])}).",
        f"- The chosen entry's mean gain: {option} off {chosen(0, 'oof_mean_dice')} OOF, "
        f"{chosen(0, 'test_mean_dice')} test; {option} on {chosen(1, 'oof_mean_dice')} OOF, "
        f"{chosen(1, 'test_mean_dice')} test.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--option", choices=list(OPTIONS), required=True, help="the stack option turned off and on")
    parser.add_argument("--work", type=Path, default=WORK_DIR, help="bench.robust's work folder")
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="the config bench.robust ran")
    parser.add_argument("--only", nargs="+", choices=[d.name for d in DATASETS])
    args = parser.parse_args(argv)
    names = args.only or [d.name for d in DATASETS]
    missing = [n for n in names if not (args.work / n / "run" / "leaderboard.csv").exists()]
    if missing:
        raise SystemExit(f"{args.work}: no finished bench.robust run for {missing}; run `python -m bench.robust` first")
    results = {}
    for name in names:
        off, on = (board(stack_variant(args.work, name, args.config, args.option, on)) for on in (False, True))
        results[name] = (off, on)
        print(f"{name}: done", flush=True)
    text = section(results, args.config, args.option)
    publish(OPTIONS[args.option], text, whole=not args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
