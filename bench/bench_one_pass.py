"""The stack's test side in one pass against the plain mean blend, per test photo at 1918x1280 (issue 21 item 4).

    python -m bench.bench_one_pass [--train-cars 5] [--test-cars 1] [--repeats 5] [--n-trials 20] [--out DIR]

A Kaggle-shaped run as `bench.scale` builds it (photos, 5 car-grouped folds, 7 members at Carvana's accuracy by
`bench.calibrated`, `configs/kaggle.yaml`'s stack section). Every estimator entry the config plans (4 blends, the
2 pixel stackers, the tuned blend) is fitted once on the train photos (not timed: only the test side is), then,
in rounds, each over every test photo and writing into a fresh store:

- the plain mean: read the 7 members' maps, average, write one map;
- the one pass (`stacking.crossfit.predict_test_all`): read the 7 members' maps once, every entry predicts its
  map, each written to its entry's store, as `workbench stack` now does;
- the one pass as it was before the entries answered levels: each entry's float map of every pixel, rounded;
- the per-entry path: each entry reads the members' maps again and writes its maps;
- the entries' mean (`workbench stack`'s `entries_mean`, made from the stored maps of the learned entries).

The figures are per test photo, one process; the ratio to the plain mean is the median of the rounds' ratios
(rounds interleave the variants, so a busy box slows them alike). Writes its section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine_description, markdown_table, replace_results_section
from bench.scale import MEMBERS, prepare_data, write_config
from oof import Store

TITLE = "Stacking in one pass: every entry's test maps against the plain mean (bench.bench_one_pass)"
FOLDS_HASH = "0" * 64


def fit_entries(config_path: Path) -> tuple[list, list, object]:
    """(planned entries, each fitted once on every train photo, the Run) of the config's stack."""
    from stacking.ensemble import is_learned
    from workbench.config import load_config
    from workbench.entries import EntryContext, planned_entries
    from workbench.run import Run

    run = Run.open(load_config(config_path))
    members = [m.name for m in MEMBERS]
    planned = planned_entries(EntryContext.of(run, members, False))
    models = []
    for entry in planned:
        start = time.perf_counter()
        models.append(entry.make().fit(run.train_maps(entry.members)))
        print(f"fitted {entry.name} ({'learned' if is_learned(entry.name, entry.kind) else 'fixed'}) "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
    return planned, models, run


def open_writers(folder: Path, names: list[str], shape: tuple[int, int]) -> tuple[Store, list]:
    shutil.rmtree(folder, ignore_errors=True)
    store = Store(folder)
    return store, [store.open_member(name, {"name": name}, FOLDS_HASH, shape) for name in names]


def plain_mean(run, members: tuple[str, ...], folder: Path) -> float:
    """Seconds to read the members' maps of every test photo, average them and write one map each."""
    from stacking.maps import StoreReader

    read = StoreReader(run.members_store, members, "test")
    _, (writer,) = open_writers(folder, ["plain_mean"], run.resolution)
    start = time.perf_counter()
    for img in run.data.test_ids:
        writer.write("test", img, read((img,))[0].mean(axis=0, dtype=np.float32) / 255)
    return time.perf_counter() - start


def one_pass(run, planned, models, members: tuple[str, ...], folder: Path) -> tuple[float, np.ndarray]:
    """Seconds of `workbench stack`'s test pass (one read of each photo's maps for every entry, each map written),
    and where they went: (entries + 2,) seconds of each entry's prediction and rounding, the reads, the writes."""
    from stacking.crossfit import member_columns, predict_test_all

    _, writers = open_writers(folder, [e.name for e in planned], run.resolution)
    columns = [member_columns(e.members, members) for e in planned]
    spent = np.zeros(len(planned) + 2)
    start = time.perf_counter()
    for ids, levels, seconds in predict_test_all(models, columns, run.test_maps(members)):
        written = time.perf_counter()
        for writer, entry_levels in zip(writers, levels):
            for img, level in zip(ids, entry_levels):
                writer.write("test", img, level)
        spent[:-1] += seconds
        spent[-1] += time.perf_counter() - written
    return time.perf_counter() - start, spent


def one_pass_float(run, planned, models, members: tuple[str, ...], folder: Path) -> float:
    """Seconds of the one pass as it was before the entries answered levels (d1a11a7): each entry's float map of
    every pixel, rounded to levels (`oof.format.to_uint8`), then written."""
    from oof.format import to_uint8
    from stacking.crossfit import member_columns, select_members
    from stacking.maps import read_batch

    _, writers = open_writers(folder, [e.name for e in planned], run.resolution)
    columns = [member_columns(e.members, members) for e in planned]
    test = run.test_maps(members)
    start = time.perf_counter()
    for img in test.ids:
        batch = read_batch(test.read, (img,), test.photo)
        for model, cols, writer in zip(models, columns, writers):
            writer.write("test", img, to_uint8(model.predict_proba(select_members(batch, cols))[0], img))
    return time.perf_counter() - start


def per_entry(run, planned, models, folder: Path) -> float:
    """Seconds of the per-entry path: each entry reads the members' maps of every photo itself."""
    from stacking.crossfit import predict_test

    _, writers = open_writers(folder, [e.name for e in planned], run.resolution)
    start = time.perf_counter()
    for entry, model, writer in zip(planned, models, writers):
        for ids, levels in predict_test(model, run.test_maps(entry.members)):
            for img, level in zip(ids, levels):
                writer.write("test", img, level)
    return time.perf_counter() - start


def entries_mean(run, learned: list[str], source: Path, folder: Path) -> float:
    """Seconds of `entries_mean`'s test maps: the mean of the learned entries' stored maps, written."""
    from stacking.ensemble import mean_map

    store, (writer,) = Store(source), open_writers(folder, ["entries_mean"], run.resolution)[1]
    start = time.perf_counter()
    for img in run.data.test_ids:
        writer.write("test", img, mean_map(store, learned, "test", img))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-cars", type=int, default=5, help="train cars (16 photos each) the entries fit on")
    parser.add_argument("--test-cars", type=int, default=1, help="test cars (16 photos each) timed")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every variant")
    parser.add_argument("--n-trials", type=int, default=20, help="trials of the tuned blend's study")
    parser.add_argument("--out", type=Path, default=None, help="folder for data, run and stores (default: a temp)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_one_pass_"))
    out.mkdir(parents=True, exist_ok=True)
    from bench.calibrated import write_members
    from stacking.ensemble import is_learned
    from workbench.config import load_config
    from workbench.steps import make_folds

    data = prepare_data(out, args.train_cars, args.test_cars)
    config_path = write_config(out, data, args.n_trials)
    start = time.perf_counter()
    make_folds(load_config(config_path))
    write_members(out / "run", data, MEMBERS, tag="one_pass")  # the OOF maps follow the folds
    planned, models, run = fit_entries(config_path)
    print(f"members' maps and fits in {time.perf_counter() - start:.0f} s", flush=True)
    members = tuple(m.name for m in MEMBERS)
    learned = [e.name for e in planned if is_learned(e.name, e.kind)]
    n_photos, rounds, breakdown = len(run.data.test_ids), [], []
    for r in range(args.repeats):
        one, parts = one_pass(run, planned, models, members, out / "one_pass")
        breakdown.append(parts / n_photos)
        seconds = {
            "plain mean": plain_mean(run, members, out / "plain"),
            "one pass": one,
            "one pass, float maps": one_pass_float(run, planned, models, members, out / "one_pass_float"),
            "per entry": per_entry(run, planned, models, out / "per_entry"),
            "entries_mean": entries_mean(run, learned, out / "one_pass", out / "entries_mean"),
        }
        rounds.append({k: v / n_photos for k, v in seconds.items()})
        print(f"round {r + 1}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in rounds[-1].items()), flush=True)
    section = report(args, planned, rounds, np.median(breakdown, axis=0), n_photos)
    print(section)
    replace_results_section(TITLE, section)
    print("wrote its section of bench/RESULTS.md")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, planned, rounds: list[dict], parts: np.ndarray, n_photos: int) -> str:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def ratio(key: str, over: str = "plain mean") -> float:
        return statistics.median(r[key] / r[over] for r in rounds)

    def whole(r: dict) -> float:
        return r["one pass"] + r["entries_mean"]

    whole_ratio = statistics.median(whole(r) / r["plain mean"] for r in rounds)
    names = ", ".join(e.name for e in planned)
    rows = [
        ["plain mean (read 7 members, average, write 1 map)", f"{median('plain mean') * 1000:.0f}", "1.00"],
        [f"one pass: all {len(planned)} entries ({names})", f"{median('one pass') * 1000:.0f}",
         f"{ratio('one pass'):.2f}"],
        ["the one pass as before d1a11a7: every entry's float map of every pixel, rounded to levels",
         f"{median('one pass, float maps') * 1000:.0f}", f"{ratio('one pass, float maps'):.2f}"],
        ["per-entry path: the same entries, each reading the maps", f"{median('per entry') * 1000:.0f}",
         f"{ratio('per entry'):.2f}"],
        ["entries_mean (the learned entries' stored maps, averaged)", f"{median('entries_mean') * 1000:.0f}",
         f"{ratio('entries_mean'):.2f}"],
        ["one pass + entries_mean", f"{statistics.median(whole(r) for r in rounds) * 1000:.0f}", f"{whole_ratio:.2f}"],
    ]
    where = [[f"{e.name}: its levels (`stacking.levels.predict_levels`)", f"{t * 1000:.0f}"]
             for e, t in zip(planned, parts)]
    slowest = int(np.argmax(parts[:-2]))
    rest = (parts.sum() - parts[slowest]) / statistics.median(r["plain mean"] for r in rounds)
    per_photo = statistics.median(whole(r) for r in rounds)
    where += [["the reads (7 members' maps, once)", f"{parts[-2] * 1000:.0f}"],
              [f"the writes ({len(planned)} maps: encode, atomic write)", f"{parts[-1] * 1000:.0f}"]]
    load = os.getloadavg()
    return "\n\n".join([
        f"`python -m bench.bench_one_pass --train-cars {args.train_cars} --test-cars {args.test_cars} --repeats "
        f"{args.repeats} --n-trials {args.n_trials}` on {machine_description()} (load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}: the box was shared, the rounds interleave the variants so "
        f"the ratios are fairer than the milliseconds): {n_photos} test photos at 1918x1280, 7 members at Carvana's "
        f"accuracy (`bench.calibrated`), configs/kaggle.yaml's stack entries fitted once on {args.train_cars * 16} "
        "train photos (not timed). One process; each figure is the median over the rounds, per test photo, "
        "every map written to a store.",
        markdown_table(["test side, per photo", "ms", "x the plain mean (median of rounds)"], rows),
        "Where the one pass's time goes, per photo (median of rounds):",
        markdown_table(["part of the one pass", "ms"], where),
        f"Goal (issue 21): all of configs/kaggle.yaml's entries together within 3x the plain mean's time per photo: "
        f"{ratio('one pass'):.2f}x for the entries of the one pass ({whole_ratio:.2f}x with entries_mean); the "
        f"per-entry path took {ratio('per entry', 'one pass'):.2f}x the one pass, the float maps of before "
        f"{ratio('one pass, float maps', 'one pass'):.2f}x. Without its slowest entry ({planned[slowest].name}, "
        f"{parts[slowest] * 1000:.0f} ms) the pass is {rest:.2f}x the plain mean. Post-processing (on the best "
        "entry's stored maps, after the pass) is not included.",
        f"At Kaggle's size (100,064 test photos), {per_photo * 1000:.0f} ms per photo (one pass + entries_mean) is "
        f"{per_photo * 100_064 / 3600:.1f} core-hours: {per_photo * 100_064 / 16 / 60:.0f} min on 16 cores, the "
        "photos split over the engine's workers (linear, as the pass is per photo).",
    ])


if __name__ == "__main__":
    sys.exit(main())
