"""The robustness bench's bookkeeping: which entry it calls chosen and best, and how RESULTS.md keeps its section."""
from __future__ import annotations

import csv
from pathlib import Path

from bench.common import replace_results_section, split_sections
from bench.robust import Dataset, render, rule_against_max, summarise

ROWS = [  # the order `workbench stack` writes: best honest OOF first
    {"entry": "logistic", "kind": "stacker", "oof_mean_dice": "0.9790", "test_mean_dice": "0.9837"},
    {"entry": "keras_unet_64", "kind": "member", "oof_mean_dice": "0.9758", "test_mean_dice": "0.9812"},
    {"entry": "lightgbm", "kind": "stacker", "oof_mean_dice": "0.9740", "test_mean_dice": "0.9841"},
    {"entry": "mean", "kind": "blend", "oof_mean_dice": "0.9700", "test_mean_dice": "0.9718"},  # fixed: not learned
    {"entry": "avg_mask_128", "kind": "member", "oof_mean_dice": "0.8658", "test_mean_dice": "0.8613"},
]


def test_summary_names_best_member_chosen_entry_and_gains() -> None:
    s = summarise("d", ROWS)
    assert s["best_member"] == "keras_unet_64" and s["chosen"] == "logistic"
    assert abs(s["gain_oof"] - 0.0032) < 1e-9 and abs(s["gain_test"] - 0.0025) < 1e-9
    assert abs(s["worst_learned_gap"] - (0.9740 - 0.9758)) < 1e-9  # lightgbm, a learned entry below the member
    assert summarise("d", [r for r in ROWS if r["kind"] in ("member", "blend")])["worst_learned_gap"] is None
    marked = [dict(r, choice="chosen") if r["entry"] == "mean" else r for r in ROWS]  # as `stack` records it
    assert summarise("d", marked)["chosen"] == "mean"  # not the top row: the choice `workbench stack` made
    assert summarise("d", marked)["max"] == "logistic" and summarise("d", marked)["test_best"] == 0.9841
    line = rule_against_max([summarise("d", marked), summarise("e", ROWS)])
    assert "at or above the best member on the test truth in 1 of 2 datasets, the maximum honest OOF in 2" in line
    assert "Where they differ: d: rule mean 0.9718, max logistic 0.9837." in line


def test_render_reads_the_runs_leaderboards(tmp_path: Path) -> None:
    runs = {}
    for name, rows in {"a": ROWS, "b": [ROWS[1], ROWS[0], ROWS[3]]}.items():
        run = tmp_path / name / "run"
        run.mkdir(parents=True)
        with open(run / "leaderboard.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
            writer.writeheader()
            writer.writerows(rows)
        runs[name] = run
    datasets = [Dataset("a", "default", 1, (480, 320)), Dataset("b", "pale-fleet", 2, (576, 384))]
    text = render(datasets, runs, config=Path("configs/demo.yaml"), cars=(24, 8), quick=False)
    assert "| b | pale-fleet, 2, 576x384 | keras_unet_64 | 0.9758 | 0.9812 | keras_unet_64 |" in text
    assert "mean +0.0016, min +0.0000, max +0.0032" in text  # the gain's spread, not the best case
    assert "| lightgbm | 0.9740 (0.9841) | - |" in text


def test_separately_run_sections_are_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\nintro\n\n## A\n\na body\n\n## B\n\nb body\n")
    replace_results_section("A", "new a", path)
    replace_results_section("C", "c body", path)
    header, sections = split_sections(path.read_text())
    assert header.strip() == "# Benchmark results\n\nintro"
    assert list(sections) == ["A", "B", "C"] and sections["B"] == "b body"
    assert sections["A"].startswith("new a\n\n(Run separately;")
