"""`RUN/report/`: what a competitor looks at to decide the next step.

- `report.md`: the leaderboard, each entry's gain over the best member (95% car-bootstrap interval,
  per-fold gains), Dice by angle and by fold for the top entries;
- `dice_by_entry.png`, `gain_by_entry.png`, `dice_by_angle.png`, `dice_by_fold.png`: the same as charts;
- `worst.png`: the best entry's worst OOF images, photo with its errors overlaid
  (red: predicted car that is background, blue: missed car);
- `test_overlays.png`: a few test photos with the best entry's predicted mask;
- `members.md`: per-fold member Dice with collapsed folds flagged, pairwise error correlation of the
  members' OOF maps, the selection weights and each member's leave-one-out effect on the selected blend.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from carvana.atomic import write_text_atomic
from carvana.dataset import CarvanaData
from carvana.rle import rle_decode
from oof import Store
from oof.format import CAR_LEVEL
from stacking.leaderboard import upsampled_dice
from stacking.maps import TrainMaps
from stacking.member_report import COLLAPSE_RATIO, collapsed_folds, error_correlation, leave_one_out
from workbench.runfolder import RunPaths

N_TOP = 6  # entries shown in the by-angle and by-fold views
N_WORST = 6


def write_report(run_dir: Path, data: CarvanaData, rows: list[dict], entry_store: Store, member_store: Store) -> Path:
    """Write the report for leaderboard `rows` (best first); return its folder."""
    import matplotlib

    matplotlib.use("Agg")
    folder = RunPaths(run_dir).report
    folder.mkdir(parents=True, exist_ok=True)
    top = rows[:N_TOP]
    angles = [f"angle{a:02d}" for a in range(1, 17)]
    fold_columns = [c for c in rows[0] if c.startswith("fold")]
    _bar_chart(folder / "dice_by_entry.png", rows)
    gained = [r for r in rows if r.get("gain_over")]  # none when the run has no member
    if gained:
        _gain_chart(folder / "gain_by_entry.png", gained)
    _line_chart(folder / "dice_by_angle.png", top, angles, "angle", [a[-2:] for a in angles])
    _line_chart(folder / "dice_by_fold.png", top, fold_columns, "fold", [c[4:] for c in fold_columns])
    best = rows[0]
    store = member_store if best["kind"] == "member" else entry_store
    worst = _worst_images(store, best["entry"], data)
    worst_grid = _overlay_grid(data, store, best["entry"], worst)
    cv2.imwrite(str(folder / "worst.png"), cv2.cvtColor(worst_grid, cv2.COLOR_RGB2BGR))
    # Four cars (as far as the test set has them) at four different angles.
    test_ids = [data.test_ids[(16 * i + a) % len(data.test_ids)] for i, a in enumerate((2, 4, 10, 13))]
    cv2.imwrite(
        str(folder / "test_overlays.png"),
        cv2.cvtColor(_test_grid(data, store, best["entry"], test_ids), cv2.COLOR_RGB2BGR),
    )
    text = _markdown(rows, top, angles, fold_columns, best["entry"], worst, _gain_section(gained))
    write_text_atomic(folder / "report.md", text)
    return folder


def _worst_images(store: Store, entry: str, data: CarvanaData) -> list[tuple[str, float]]:
    """The entry's N_WORST train images by OOF Dice at the photos' size: [(img, dice)], worst first."""
    height, width = data.load_mask(data.train_ids[0]).shape
    scores = [
        (img, upsampled_dice(store.read(entry, "train", img), rle_decode(rle, (height, width))))
        for img, rle in data.train_rles.items()
    ]
    return sorted(scores, key=lambda s: s[1])[:N_WORST]


def _overlay_grid(data: CarvanaData, store: Store, entry: str, worst: list[tuple[str, float]]) -> np.ndarray:
    """(rows x 3 tiles) RGB: photos with false positives red and false negatives blue, Dice written on."""
    tiles = []
    for img, score in worst:
        photo = data.load_image(img)
        truth = data.load_mask(img).astype(bool)
        proba = cv2.resize(store.read(entry, "train", img), truth.shape[::-1], interpolation=cv2.INTER_LINEAR)
        pred = proba >= CAR_LEVEL
        tile = photo.copy()
        tile[pred & ~truth] = (0.4 * tile[pred & ~truth] + 0.6 * np.array([255, 0, 0])).astype(np.uint8)
        tile[truth & ~pred] = (0.4 * tile[truth & ~pred] + 0.6 * np.array([0, 80, 255])).astype(np.uint8)
        cv2.putText(tile, f"{img}  Dice {score:.4f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2)
        tiles.append(tile)
    while len(tiles) % 3:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.concatenate(tiles[i : i + 3], axis=1) for i in range(0, len(tiles), 3)]
    return np.concatenate(rows, axis=0)


def _test_grid(data: CarvanaData, store: Store, entry: str, ids: list[str]) -> np.ndarray:
    """(2 x 2 tiles) RGB: test photos with the entry's predicted car tinted green and outlined."""
    tiles = []
    for img in ids:
        photo = data.load_image(img, "test")
        proba = cv2.resize(store.read(entry, "test", img), photo.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        car = (proba >= CAR_LEVEL).astype(np.uint8)
        tile = photo.copy()
        tile[car > 0] = (0.6 * tile[car > 0] + 0.4 * np.array([0, 200, 0])).astype(np.uint8)
        contours, _ = cv2.findContours(car, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, (0, 120, 0), 1)
        cv2.putText(tile, img, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2)
        tiles.append(tile)
    while len(tiles) < 4:
        tiles.append(np.full_like(tiles[0], 255))
    return np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:4], axis=1)], axis=0)


def _bar_chart(path: Path, rows: list[dict]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    names = [f"{r['entry']} ({r['kind']})" for r in rows][::-1]
    ax.barh(names, [float(r["oof_mean_dice"]) for r in rows][::-1], color="tab:blue", label="honest OOF")
    tests = [float(r["test_mean_dice"]) if r.get("test_mean_dice") else np.nan for r in rows][::-1]
    ax.plot(tests, names, "o", color="tab:orange", label="test (synthetic truth)")
    low = min(float(r["oof_mean_dice"]) for r in rows)
    ax.set_xlim(max(0.0, low - 0.02), 1.0)
    ax.set_xlabel("mean per-image Dice")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _gain_chart(path: Path, rows: list[dict]) -> None:
    """Each entry's gain over the best member with its 95% car-bootstrap interval, and its per-fold gains."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.4))
    names = [f"{r['entry']} ({r['kind']})" for r in rows][::-1]
    gain, lo, hi = (np.array([float(r[c]) for r in rows][::-1]) for c in ("gain", "gain_lo", "gain_hi"))
    # A percentile interval need not contain the full-sample gain; the bar then ends at the point.
    errors = np.maximum(0.0, [gain - lo, hi - gain])
    ax.errorbar(gain, names, xerr=errors, fmt="o", color="tab:blue", capsize=3, label="gain, 95% car bootstrap")
    for y, row in enumerate(rows[::-1]):
        folds = [float(g) for g in row["gain_by_fold"].split("/")]
        ax.plot(folds, [y] * len(folds), "x", color="tab:gray", label="per fold" if y == 0 else None)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"OOF mean Dice minus {rows[0]['gain_over']}'s (the best member)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _line_chart(path: Path, rows: list[dict], columns: list[str], xlabel: str, ticks: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for row in rows:
        ax.plot(ticks, [float(row[c]) if row.get(c) else np.nan for c in columns], marker="o", label=row["entry"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("OOF mean Dice")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _gain_section(rows: list[dict]) -> str:
    """The markdown of each entry's gain over the best member (empty without gains)."""
    if not rows:
        return ""
    body = [
        [
            r["entry"],
            r["kind"],
            f"{float(r['gain']):+.6f}",
            f"{float(r['gain_lo']):+.6f} to {float(r['gain_hi']):+.6f}",
            f"{float(r['gain_positive_share']):.1%}",
            " / ".join(r["gain_by_fold"].split("/")),
        ]
        for r in rows
    ]
    header = ["entry", "kind", "gain", "95% car bootstrap", "resamples above 0", "per-fold gains"]
    return (
        f"## Gain over the best member, {rows[0]['gain_over']}\n\nHonest OOF mean Dice minus the best member's. "
        "The interval resamples the cars (all their photos together) with replacement, the same resamples for "
        "every entry; the per-fold gains show whether one fold carries it.\n\n"
        f"{_table(header, body)}\n\n![](gain_by_entry.png)\n\n"
    )


def _markdown(rows, top, angles, fold_columns, best: str, worst: list[tuple[str, float]], gains: str) -> str:
    def table(header: list[str], body: list[list[object]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in body])

    board = table(
        ["entry", "kind", "honest OOF mean Dice", "test mean Dice"],
        [[r["entry"], r["kind"], r["oof_mean_dice"], r.get("test_mean_dice", "")] for r in rows],
    )
    by_angle = table(["angle"] + [r["entry"] for r in top], [[a[-2:]] + [r.get(a, "") for r in top] for a in angles])
    by_fold = table(["fold"] + [r["entry"] for r in top], [[c[4:]] + [r[c] for r in top] for c in fold_columns])
    worst_text = "\n".join(f"- {img}: {score:.4f}" for img, score in worst)
    return (
        f"# Run report\n\nBest entry by honest OOF mean Dice: **{best}**.\n\n## Leaderboard\n\n{board}\n\n"
        f"![](dice_by_entry.png)\n\n{gains}## Dice by angle\n\n{by_angle}\n\n![](dice_by_angle.png)\n\n"
        f"## Dice by fold\n\n{by_fold}\n\n![](dice_by_fold.png)\n\n"
        f"## Worst OOF images of {best}\n\nRed: predicted car on background; blue: missed car.\n\n"
        f"{worst_text}\n\n![](worst.png)\n"
    )


def report_members(run_dir: Path, rows: list[dict], train: TrainMaps) -> Path:
    """The member report of leaderboard `rows` for the members of `train`; prints a warning per collapsed fold."""
    from stacking.blenders import SelectedBlend

    members = list(train.members)
    by_entry = {r["entry"]: r for r in rows}
    fold_columns = [c for c in rows[0] if c.startswith("fold")]
    collapsed = collapsed_folds({m: [float(by_entry[m][c]) for c in fold_columns] for m in members})
    for member, k in collapsed:
        others = ", ".join(by_entry[member][c] for c in fold_columns if c != f"fold{k}")
        print(
            f"WARNING: member {member} collapsed in fold {k}: OOF mean Dice {by_entry[member][f'fold{k}']} "
            f"there vs {others} in the other folds (its fold-{k} model failed; see report/members.md)"
        )
    weights = SelectedBlend().fit(train).weights_
    return write_member_report(
        run_dir, rows, members, error_correlation(train), weights, leave_one_out(train.evaluator(), weights), collapsed
    )


def write_member_report(
    run_dir: Path,
    rows: list[dict],
    members: list[str],
    correlation: np.ndarray,
    weights: np.ndarray,
    loo: np.ndarray,
    collapsed: list[tuple[str, int]],
) -> Path:
    """`RUN/report/members.md`: per-fold member Dice (collapsed folds in bold), pairwise error correlation of
    the OOF maps, the selection weights and each member's leave-one-out effect on the selected blend."""
    by_entry = {r["entry"]: r for r in rows}
    fold_columns = [c for c in rows[0] if c.startswith("fold")]
    bad = set(collapsed)

    def fold_cell(member: str, k: int) -> str:
        value = by_entry[member][fold_columns[k]]
        return f"**{value}** (collapsed)" if (member, k) in bad else str(value)

    def member_cell(member: str) -> str:
        return f"{member} (imported)" if by_entry[member].get("source") == "imported" else member

    per_fold = _table(
        ["member", *fold_columns, "OOF"],
        [
            [member_cell(m), *(fold_cell(m, k) for k in range(len(fold_columns))), by_entry[m]["oof_mean_dice"]]
            for m in members
        ],
    )
    errors = _table(
        ["", *members], [[a, *(f"{correlation[i, j]:.3f}" for j in range(len(members)))] for i, a in enumerate(members)]
    )
    selection = _table(
        ["member", "selection weight", "leave-one-out effect on the selected blend"],
        [[m, f"{w:.3f}", f"{e:+.6f}"] for m, w, e in zip(members, weights, loo)],
    )
    warnings = "".join(f"- WARNING: {m} collapsed in fold {k}\n" for m, k in collapsed) or "- no collapsed fold\n"
    text = (
        f"# Members\n\n## Dice by fold\n\nA fold whose errors (1 - Dice) are more than {COLLAPSE_RATIO:g} times "
        f"those of the member's worst other fold is flagged as collapsed.\n\n{warnings}\n{per_fold}\n\n"
        f"## Pairwise error correlation of the OOF maps\n\n"
        f"Pearson correlation of the members' per-pixel errors (map >= 0.5 vs truth): low values are what "
        f"blending can use.\n\n{errors}\n\n## Ensemble selection on all folds\n\nWeights of `selected` "
        f"fitted on every fold; the leave-one-out effect is its mean Dice on those same images minus the "
        f"Dice without the member (in-sample, for orientation only).\n\n{selection}\n"
    )
    folder = RunPaths(run_dir).report
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "members.md", text)
    return folder / "members.md"


def _table(header: list[str], body: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in body])
