"""Run every benchmark (`bench/bench_*.py`) and rewrite `bench/RESULTS.md`.

Each benchmark module defines `TITLE` and `run(quick: bool) -> str`, returning a markdown section
that states what it measured and the reference it was compared against in the same run.
Usage: python -m bench.run [--quick] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import sys
from pathlib import Path

from bench.common import RESULTS_PATH, join_sections, machine_description, split_sections
from carvana.atomic import write_text_atomic

BENCH_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", help="benchmark names (e.g. rle) to run")
    args = parser.parse_args(argv)
    names = sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only]
    sections = {}
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"== {module.TITLE}", flush=True)
        section = module.run(quick=args.quick)
        print(section, flush=True)
        sections[module.TITLE] = section.strip("\n")
    if args.quick or args.only:
        print("(not writing bench/RESULTS.md: only full runs of every benchmark do)")
        return 0
    header = (
        "# Benchmark results\n\n"
        f"Written by `make bench` (`python -m bench.run`) on {dt.date.today().isoformat()}.\n"
        f"Machine: {machine_description()}.\n"
        "Times are medians of several runs; every ratio is against a reference measured in the same run.\n"
    )
    # Sections of the benchmarks run separately (bench.robust, bench.scale) are kept as they were.
    _, previous = split_sections(RESULTS_PATH.read_text() if RESULTS_PATH.exists() else "")
    sections.update({title: body for title, body in previous.items() if title not in sections and
                     "(Run separately;" in body})
    write_text_atomic(RESULTS_PATH, join_sections(header, sections))
    print(f"wrote {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
