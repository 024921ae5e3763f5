"""The Kaggle-size rehearsal of the stacking side: `workbench stack` and `workbench submit` on a
Kaggle-shaped run at 1918x1280, without training.

    python -m bench.scale [--fraction F] [--test-fraction T] --out DIR [--prepare-only]   (make bench-scale)

Builds in DIR: `data/` in the Kaggle layout with round(318 F) train cars and round(6,254 T) test cars
x 16 angles at 1918x1280 (a few studio cars are rendered and their photos and masks reused as hard
links; every car has its own id, its row in the CSVs and its files), `config.yaml` (5 car-grouped
folds, no zoo, `configs/kaggle.yaml`'s stack section), `run/folds.csv`, and a store of 7 members' OOF
and test maps at 1918x1280 at Carvana's accuracy (`bench.calibrated`: members 0.994-0.996 on its template
cars, errors partly shared, test maps as fold means; one member fails in one fold). Unless `--prepare-only`,
runs `workbench stack` and `workbench submit` as subprocesses, recording seconds, peak RSS of the process tree
and bytes on disk, extrapolates linearly to the full competition, and writes the section to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from bench.calibrated import Style, write_members
from bench.common import board_table, machine_description, markdown_table, read_set, replace_results_section
from carvana.dataset import KAGGLE_SIZE, N_ANGLES, read_rle_csv

REPO = Path(__file__).resolve().parent.parent
TITLE = "Kaggle-size rehearsal (bench.scale)"
KAGGLE_TRAIN_CARS, KAGGLE_TEST_CARS = 318, 6254
SIZE = KAGGLE_SIZE  # W x H
TEMPLATE_CARS = (4, 2)  # rendered train and test studio cars whose photos and masks are reused
# Members at Carvana's accuracy (bench.calibrated), named after configs/kaggle.yaml's zoo: the low-resolution
# ones softer and with wider missed thin parts, the Keras one biased out, one failing in a fold.
MEMBERS = [
    Style("unet_resnet34_512", softness=1.4, offset=1.7, thin=11),
    Style("unet_resnet34_1024", offset=1.55),
    Style("fpn_efficientnet-b0_1024", offset=1.6, bias=-0.2),
    Style("unet_efficientnet-b0_1024", offset=1.5, thin=9),
    Style("keras_unet_1024", offset=1.6, bias=0.3, weak_fold=3),
    Style("unet_resnet34_1280", offset=1.4),
    Style("linknet_resnet34_1280", offset=1.45, softness=1.0),
]


def car_ids(prefix: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{prefix}{i}".encode()).hexdigest()[:12] for i in range(n)]


def prepare_data(out: Path, n_train: int, n_test: int) -> Path:
    """DIR/data in the Kaggle layout; photos and masks are hard links to a few rendered cars."""
    from carvana.synth import generate

    data, templates = out / "data", out / "templates"
    if (data / "sample_submission.csv").exists():
        return data
    if not templates.exists():
        generate(templates, *TEMPLATE_CARS, size=SIZE, seed=0, progress=False)
    shutil.rmtree(data, ignore_errors=True)
    for sub in ("train", "train_masks", "test"):
        (data / sub).mkdir(parents=True)
    rles, test_rles = read_rle_csv(templates / "train_masks.csv"), read_rle_csv(templates / "test_masks.csv")
    meta = (templates / "metadata.csv").read_text().splitlines()
    train_tpl = sorted({i[:12] for i in rles})
    test_tpl = sorted({i[:12] for i in test_rles})
    meta_of = {line.split(",")[0]: line.split(",", 1)[1] for line in meta[1:]}
    rows = {"train_masks.csv": ["img,rle_mask"], "test_masks.csv": ["img,rle_mask"],
            "sample_submission.csv": ["img,rle_mask"], "metadata.csv": [meta[0]]}
    splits = (("train", car_ids("train", n_train), train_tpl), ("test", car_ids("test", n_test), test_tpl))
    for split, cars, tpl in splits:
        for c, car in enumerate(cars):
            source = tpl[c % len(tpl)]
            rows["metadata.csv"].append(f"{car},{meta_of[source]}")
            for a in range(1, N_ANGLES + 1):
                img, src = f"{car}_{a:02d}", f"{source}_{a:02d}"
                os.link(templates / split / f"{src}.jpg", data / split / f"{img}.jpg")
                if split == "train":
                    os.link(templates / "train_masks" / f"{src}_mask.gif", data / "train_masks" / f"{img}_mask.gif")
                    rows["train_masks.csv"].append(f"{img}.jpg,{rles[src]}")
                else:
                    rows["test_masks.csv"].append(f"{img}.jpg,{test_rles[src]}")
                    rows["sample_submission.csv"].append(f"{img}.jpg,1 1")
    for name, lines in rows.items():
        (data / name).write_text("\n".join(lines) + "\n")
    return data


def write_config(out: Path, data: Path, n_trials: int) -> Path:
    kaggle = yaml.safe_load((REPO / "configs" / "kaggle.yaml").read_text())
    config = {"data": str(data), "run_dir": str(out / "run"), "seed": 0,
              "folds": {"n_folds": 5, "stratify": "area", "seed": 0},
              "stack": kaggle["stack"], "tune": {**kaggle.get("tune", {}), "n_trials": n_trials}}
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text()).group(1)) * 1024
        except (OSError, AttributeError):
            pass
    return total


def measure(command: list[str], log: Path) -> dict:
    """Run `command`, output to `log`; wall seconds, peak RSS of its process tree (polled every 0.2 s) and the
    machine's mean 1-minute load average meanwhile (other jobs slow the seconds, not the bytes)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start, peak, loads = time.perf_counter(), [0], [os.getloadavg()[0]]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)

        def poll() -> None:
            while process.poll() is None:
                peak[0] = max(peak[0], tree_rss(process.pid))
                loads.append(os.getloadavg()[0])
                time.sleep(0.2)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        process.wait()
        watcher.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}); see {log}")
    return {"seconds": time.perf_counter() - start, "peak_rss": peak[0], "load": sum(loads) / len(loads)}


def disk_bytes(path: Path) -> int:
    """Bytes on disk under `path`, each hard-linked file counted once."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def entry_seconds(log: Path) -> dict[str, tuple[float, float]]:
    """{entry: (train seconds, test seconds)} from `workbench stack`'s cross-fit lines."""
    pattern = re.compile(r"^(\S+): cross-fit ([\d.]+) s on train images, ([\d.]+) s on test maps", re.MULTILINE)
    return {m[1]: (float(m[2]), float(m[3])) for m in pattern.finditer(log.read_text())}


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def report(args: argparse.Namespace, n_train: int, n_test: int, stages: dict, sizes: dict, log: Path) -> str:
    """The RESULTS.md section: measured stages, bytes, and the linear extrapolation to Kaggle's size."""
    entries = entry_seconds(log)
    train_scale, test_scale = KAGGLE_TRAIN_CARS * 16 / n_train, KAGGLE_TEST_CARS * 16 / n_test
    test_part = sum(t for _, t in entries.values())
    stack_train = stages["workbench stack"]["seconds"] - test_part
    full = {"workbench stack": stack_train * train_scale + test_part * test_scale,
            "workbench submit": stages["workbench submit"]["seconds"] * test_scale}
    maps_bytes = n_train * len(MEMBERS) * SIZE[0] * SIZE[1]
    rows = [[name, f"{s['seconds']:.0f}", gb(s["peak_rss"]), f"{full[name] / 3600:.1f} h" if name in full else ""]
            for name, s in stages.items()]
    cores = os.cpu_count() or 1  # the stack's workers use every core (compute.cpu_workers, stack.fit_jobs: -1)
    entry_rows = [[e, f"{a:.0f}", f"{b:.0f}", f"{(a * train_scale + b * test_scale) / 3600:.1f} h",
                   f"{b * test_scale * cores / 16 / 3600:.2f} h"] for e, (a, b) in entries.items()]
    intro = ("(Run separately; `make bench-scale`.) "
             f"`python -m bench.scale --fraction {args.fraction} --test-fraction {args.test_fraction}` on "
             f"{machine_description()} (mean load average {stages['workbench stack']['load']:.1f} during `workbench "
             f"stack`, its own workers included): {n_train} train photos ({n_train // 16} cars) and "
             f"{n_test} test photos at {SIZE[0]}x{SIZE[1]}, {len(MEMBERS)} synthetic members, 5 folds, "
             f"configs/kaggle.yaml's stack section ({args.n_trials} trials per tuning study).")
    peak = stages["workbench stack"]["peak_rss"]
    share = (f"The members' OOF maps stacked: {gb(maps_bytes)} as raw uint8 ({n_train} x {len(MEMBERS)} x "
             f"{SIZE[0]}x{SIZE[1]}); `workbench stack` peaked at {gb(peak)} ({peak / maps_bytes:.0%} of them).")
    disk = [[k, gb(v), gb(v * (train_scale if k == "OOF maps (train)" else test_scale))] for k, v in sizes.items()]
    note = ("The extrapolation is linear in images (train work x 5,088 / n_train, test work x 100,064 / n_test); "
            f"the 16-core column is the {cores} cores' test work split over 16 (the test maps go photo by photo to "
            "the engine's workers).")
    on16 = full["workbench stack"] * cores / 16
    whole = (f"The whole `workbench stack` at Kaggle's size on one 16-core box: the stack used every one of this "
             f"box's {cores} cores (`compute.cpu_workers` for the OOF and test chunks, `stack.fit_jobs: -1` for the "
             f"fits), so its {full['workbench stack'] / 3600:.1f} h here, linear in images, is ~{on16 / 3600:.1f} h "
             f"split over 16 cores (goal: under 1 h). Assumes the work splits evenly: the fits are 7 entries x 6 "
             f"independent tasks and the OOF and test maps go photo by photo; the exact-Dice evaluator's one pass, "
             f"the scoring and the choice run in one process and would not shrink.")
    run = args.out / "run"
    board = read_set(args.out) if (run / "leaderboard.csv").exists() else None
    quality = []
    if board:
        chosen, best = board["chosen"], board["best"]
        oof, test = board["oof"], board["test"]
        gains = f"{oof[chosen] - oof[best]:+.5f} OOF, {test[chosen] - test[best]:+.5f}"
        quality = [
            "The leaderboard (honest OOF from car-grouped cross-fitting; test against the synthetic test truth; the "
            f"gain over the best member by honest OOF, {best}, with its paired car-level bootstrap interval). "
            f"Chosen: {chosen} (gain {gains} test).",
            board_table(board["rows"]),
        ]
    return "\n\n".join([
        intro,
        markdown_table(["stage", "seconds", "peak RSS (process tree)",
                        f"linear to Kaggle (5,088 + 100,064), this box's {cores} cores"], rows),
        share,
        markdown_table(["bytes on disk", "measured", "linear to Kaggle"], disk),
        "Per entry (cross-fit on the train images: 5 fits on 4 folds + 1 on all, OOF maps; then the test maps):",
        markdown_table(["entry", "train s", "test s", f"linear to Kaggle, {cores} cores", "test part on 16 cores"],
                       entry_rows),
        note,
        whole,
        *quality,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.05, help="share of Kaggle's 318 train cars")
    parser.add_argument("--test-fraction", type=float, default=0.002, help="share of Kaggle's 6,254 test cars")
    parser.add_argument("--n-trials", type=int, default=20, help="trials per tuning study")
    parser.add_argument("--out", type=Path, required=True, help="folder for the rehearsal (data, run, logs)")
    parser.add_argument("--prepare-only", action="store_true", help="build data, folds and maps; run nothing")
    parser.add_argument("--jobs", type=int, default=2, help="processes writing member maps")
    args = parser.parse_args(argv)
    n_train = max(5, round(KAGGLE_TRAIN_CARS * args.fraction)) * 16
    n_test = max(1, round(KAGGLE_TEST_CARS * args.test_fraction)) * 16
    args.out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    start = time.perf_counter()
    data = prepare_data(args.out, n_train // 16, n_test // 16)
    config = write_config(args.out, data, args.n_trials)
    cli = [sys.executable, "-m", "workbench.cli"]
    stages["prepare data"] = {"seconds": time.perf_counter() - start, "peak_rss": 0}
    stages["workbench folds"] = measure([*cli, "folds", "--config", str(config)], args.out / "folds.log")
    start = time.perf_counter()
    from joblib import Parallel, delayed

    groups = [MEMBERS[i :: args.jobs] for i in range(args.jobs)]  # each process writes its members' maps
    Parallel(n_jobs=args.jobs)(delayed(write_members)(args.out / "run", data, g, tag="scale") for g in groups)
    stages["write member maps"] = {"seconds": time.perf_counter() - start, "peak_rss": 0}
    print(f"prepared {args.out}: {n_train} train + {n_test} test photos, {len(MEMBERS)} members", flush=True)
    if args.prepare_only:
        return 0
    shutil.rmtree(args.out / "run" / "stack", ignore_errors=True)  # measure a fresh stack, not a resumed one
    for study_file in (args.out / "run").glob("optuna.db*"):  # and fresh tuning studies
        study_file.unlink()
    log = args.out / "stack.log"
    stages["workbench stack"] = measure([*cli, "stack", "--config", str(config)], log)
    stages["workbench submit"] = measure([*cli, "submit", "--config", str(config)], args.out / "submit.log")
    run = args.out / "run"
    sizes = {"OOF maps (train)": sum(disk_bytes(p) for p in (run / "oof").glob("*/train")),
             "test maps (members)": sum(disk_bytes(p) for p in (run / "oof").glob("*/test")),
             "test maps (entries)": sum(disk_bytes(p) for p in (run / "stack").glob("*/test")),
             "submission.csv.gz": disk_bytes(run / "submission.csv.gz") if (run / "submission.csv.gz").exists() else 0}
    section = report(args, n_train, n_test, stages, sizes, log)
    print(section)
    replace_results_section(f"{TITLE}: train fraction {args.fraction}", section)
    print("wrote its section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
