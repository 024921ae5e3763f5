"""Shared helpers for the benchmarks: timing by median of repeats, and a description of the machine."""
from __future__ import annotations

import csv
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from carvana.atomic import write_text_atomic

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_description() -> str:
    """One line naming the CPU, core count, Python and OS of the machine measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {system}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def split_sections(text: str) -> tuple[str, dict[str, str]]:
    """A RESULTS.md text -> (the text before the first `## ` heading, {section title: section body})."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return parts[0], {title.strip(): body.strip("\n") for title, body in zip(parts[1::2], parts[2::2])}


def join_sections(header: str, sections: dict[str, str]) -> str:
    return header.rstrip("\n") + "\n\n" + "".join(f"## {title}\n\n{body}\n\n" for title, body in sections.items())


def replace_results_section(title: str, body: str, path: Path = RESULTS_PATH) -> Path:
    """Write one benchmark's section into RESULTS.md (replacing its previous version), atomically.

    Benchmarks too long for `make bench` (the robustness bench, the Kaggle-size rehearsal) keep their
    sections this way; `make bench` rewrites its own sections and keeps these.
    """
    header, sections = split_sections(path.read_text() if path.exists() else "# Benchmark results\n")
    sections[title] = f"{body.strip()}\n\n(Run separately; section written on {time.strftime('%Y-%m-%d')}.)"
    write_text_atomic(path, join_sections(header, sections))
    return path


def publish(title: str, text: str, whole: bool) -> None:
    """Print a bench's section; write it into RESULTS.md when the bench ran whole (not on a subset)."""
    print(text)
    if whole:
        replace_results_section(title, text)


def chosen_entry(log: Path) -> str:
    """The entry `workbench stack` chose (its `chosen: <entry>` line)."""
    found = re.search(r"^chosen: ([^\s,]+)", log.read_text(), re.MULTILINE)
    if not found:
        raise SystemExit(f"{log}: no `chosen:` line")
    return found[1]


def read_set(out: Path) -> dict:
    rows = list(csv.DictReader(open(out / "run" / "leaderboard.csv")))
    oof = {r["entry"]: float(r["oof_mean_dice"]) for r in rows}
    test = {r["entry"]: float(r["test_mean_dice"]) for r in rows}
    members = [r["entry"] for r in rows if r["kind"] == "member"]
    best = max(members, key=oof.__getitem__)
    chosen = chosen_entry(out / "stack.log")
    top = max(oof, key=oof.__getitem__)
    return {"rows": rows, "oof": oof, "test": test, "best": best, "chosen": chosen, "top": top,
            "test_best": max(test, key=test.__getitem__)}


def board_table(rows: list[dict]) -> str:
    """A run's leaderboard rows (`read_set`'s "rows") as a markdown table: OOF, test, gain and its interval."""
    table = [[row["entry"], row["kind"], row["oof_mean_dice"], row["test_mean_dice"],
              row.get("gain", ""), f"{row.get('gain_lo', '')} to {row.get('gain_hi', '')}"] for row in rows]
    return markdown_table(["entry", "kind", "OOF", "test", "gain over best member", "95% car bootstrap"], table)
