"""Fold models on a common footing (issue 19 item 5): a label-free temperature per member and fold model.

A member's OOF maps come from K fold models, and one of them can end much softer than the others (on the
robustness bench's default-s1, `keras_unet_64`'s fold-0 model put 80% of its pixels between 0.1 and 0.9; its
other two folds 3%). A pixel stacker fitted on the sharp folds then misreads the soft one, and its honest OOF
falls on that fold. The footing puts every fold model of a member on the sharpness of the member's median fold
model, without labels: for member m and fold k, the share s_mk of fold k's OOF pixels with probability in
(1 - P_REF, P_REF); target s_m = the median over k; temperature T_mk = (the s_m-quantile of |logit| in fold k) /
logit(P_REF), so that sigmoid(logit / T_mk) has share s_m there; the 0.5 threshold is kept. The test maps (fold
averages) get one temperature per member matched to the same target ("footed test"), or none ("raw test").

This bench cross-fits each pixel stacker of `configs/demo.yaml` on the robustness bench's finished runs with the
raw and the footed maps and scores honest OOF per fold and the held-out synthetic test truth (never used to
choose). Nothing is built into the stack unless this shows a gain on OOF and on the test truth.

Usage: python -m bench.footing [--work /tmp/rc12] [--config configs/demo.yaml] [--only NAME ...]
A dataset whose run is missing is skipped. Writes its section into bench/RESULTS.md when run on every dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import machine_description, markdown_table, publish
from bench.robust import DATASETS, WORK_DIR
from bench.temperature import LOGIT, tempered_levels
from carvana.atomic import write_text_atomic

TITLE = "Fold models on a common footing: a label-free temperature per member and fold (bench.footing)"
P_REF = 0.9
STACKERS = ("lightgbm", "logistic")


def band_share(histogram: np.ndarray, limit: float) -> float:
    """Share of the pixels counted in a (256,) level histogram whose |logit| is below `limit`."""
    return float(histogram[np.abs(LOGIT) < limit].sum() / max(histogram.sum(), 1))


def footing_temperature(histogram: np.ndarray, share: float, limit: float) -> float:
    """The temperature that gives the pixels of `histogram` `share` below |logit| `limit`."""
    magnitude = np.abs(LOGIT)
    order = np.argsort(magnitude, kind="stable")
    cumulative = np.cumsum(histogram[order]) / max(histogram.sum(), 1)
    return float(magnitude[order][min(int(np.searchsorted(cumulative, share)), 255)] / limit)


def footing(maps: np.ndarray, fold: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shares (K, M), temperatures (K, M) of the OOF fold models, temperatures (M,) of the test maps)."""
    limit = float(np.log(P_REF / (1 - P_REF)))
    folds = sorted(set(fold.tolist()))
    shares, found, found_test = np.zeros((len(folds), maps.shape[1])), np.ones((len(folds), maps.shape[1])), []
    for m in range(maps.shape[1]):
        histograms = [np.bincount(maps[fold == k, m].ravel(), minlength=256) for k in folds]
        shares[:, m] = [band_share(h, limit) for h in histograms]
        target = float(np.median(shares[:, m]))
        found[:, m] = [footing_temperature(h, target, limit) for h in histograms]
        found_test.append(footing_temperature(np.bincount(test[:, m].ravel(), minlength=256), target, limit))
    return shares, found, np.array(found_test)


def footed(maps: np.ndarray, groups: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """maps (N, M, H, W) uint8 with member m of the images of group g remapped through temperatures[g, m]."""
    out = maps.copy()
    for g in range(temperatures.shape[0]):
        for m in range(maps.shape[1]):
            out[groups == g, m] = tempered_levels(temperatures[g, m])[maps[groups == g, m]]
    return out


def predict(model, levels: np.ndarray, batches: list) -> np.ndarray:
    """The model's probabilities of every test image, `levels` (N, M, H, W) in the order of `batches`."""
    from stacking.maps import MapBatch

    out, start = [], 0
    for batch in batches:
        out.append(model.predict_proba(MapBatch(levels[start : start + len(batch)], batch.ids, batch.angles)))
        start += len(batch)
    return np.concatenate(out)


def score_dataset(work: Path, config_path: Path) -> dict:
    """Every stacker's honest OOF (per fold) and test Dice with raw and footed maps, and the footing found."""
    from carvana.rle import rle_decode
    from oof.format import to_uint8
    from stacking.leaderboard import test_truth, upsampled_dice
    from stacking.maps import TrainMaps
    from stacking.robust import entry_per_image
    from workbench.config import load_config
    from workbench.entries import ENTRY_TYPES, EntryContext
    from workbench.run import Run
    from workbench.stack import finished_members

    run = Run.open(load_config(config_path, data=work / "data", run_dir=work / "run"))
    members = finished_members(run)
    source, tests = run.train_maps(members), run.test_maps(members)
    maps = np.concatenate([b.maps for b in source.batches(with_truth=False)])
    truth = np.stack([run.truth(img) for img in source.ids])
    fold = np.array([source.fold_of[img] for img in source.ids])
    test_batches = list(tests.batches())
    rles = test_truth(run.data)
    test_truths = [rle_decode(rles[img], run.native_hw) for batch in test_batches for img in batch.ids]
    test = np.concatenate([b.maps for b in test_batches])
    shares, temperatures, test_temperatures = footing(maps, fold, test)
    variants = {"raw": maps, "footed": footed(maps, fold, temperatures)}
    test_variants = {"raw": test, "footed": footed(test, np.zeros(len(test), int), test_temperatures[None])}
    context = EntryContext(run.config, tuple(members), tuple(members), {})
    folds = sorted(set(fold.tolist()))
    scores: dict = {}
    for name in STACKERS:
        for variant, x in variants.items():
            train = TrainMaps.from_arrays(x, truth, ids=source.ids, fold=fold)
            per_fold = [entry_per_image(ENTRY_TYPES[name].make(context).fit(train.folds([j for j in folds if j != k])),
                                        train.folds([k])) for k in folds]
            model = ENTRY_TYPES[name].make(context).fit(train)
            test_scores = {}
            for test_variant, levels in test_variants.items():
                if variant == "raw" and test_variant == "footed":
                    continue
                proba = predict(model, levels, test_batches)
                dices = [upsampled_dice(to_uint8(p, "a test map"), t) for p, t in zip(proba, test_truths)]
                test_scores[test_variant] = float(np.mean(dices))
            scores[name, variant] = (float(np.concatenate(per_fold).mean()), [float(s.mean()) for s in per_fold],
                                     test_scores)
            print(f"{work.name} {name} {variant}: {scores[name, variant]}", flush=True)
    return {"members": members, "shares": shares, "temperatures": temperatures,
            "test_temperatures": test_temperatures, "scores": scores}


def scored(work: Path, config: Path) -> dict:
    """`score_dataset`, kept in WORK/NAME/footing.json and read back from there when present."""
    path = work / "footing.json"
    if path.exists():
        found = json.loads(path.read_text())
        found["scores"] = {tuple(key.split(" ")): value for key, value in found["scores"].items()}
        return {key: np.array(value) if key.endswith(("shares", "temperatures")) else value
                for key, value in found.items()}
    found = score_dataset(work, config)
    kept = {key: value.tolist() if isinstance(value, np.ndarray) else value for key, value in found.items()}
    kept["scores"] = {" ".join(key): value for key, value in found["scores"].items()}
    write_text_atomic(path, json.dumps(kept))
    return found


def section(results: dict[str, dict], config: Path) -> str:
    rows, changes = [], {name: ([], [], []) for name in STACKERS}
    for dataset, found in results.items():
        for name in STACKERS:
            raw, raw_folds, raw_test = found["scores"][name, "raw"]
            foot, foot_folds, foot_test = found["scores"][name, "footed"]
            base = raw_test["raw"]
            changes[name][0].append(foot - raw)
            changes[name][1].append(foot_test["footed"] - base)
            changes[name][2].append(foot_test["raw"] - base)
            rows.append([dataset, name, f"{raw:.5f} → {foot:.5f} ({foot - raw:+.5f})",
                         " / ".join(f"{a:.4f} → {b:.4f}" for a, b in zip(raw_folds, foot_folds)),
                         f"{base:.5f} → {foot_test['footed']:.5f} ({foot_test['footed'] - base:+.5f})",
                         f"{foot_test['raw']:.5f} ({foot_test['raw'] - base:+.5f})"])
    spread = []
    for dataset, found in results.items():
        softest = np.unravel_index(np.argmax(found["shares"] - np.median(found["shares"], 0)), found["shares"].shape)
        k, m = int(softest[0]), int(softest[1])
        spread.append([dataset, found["members"][m], k, " / ".join(f"{s:.3f}" for s in found["shares"][:, m]),
                       " / ".join(f"{t:.2f}" for t in found["temperatures"][:, m]),
                       f"{found['test_temperatures'][m]:.2f}"])

    def summary(values: list[float]) -> str:
        return (f"mean {np.mean(values):+.5f}, min {min(values):+.5f}, max {max(values):+.5f}, "
                f"better on {sum(v > 0 for v in values)} of {len(values)}")

    lines = [f"- {name}: OOF {summary(c[0])}; test (footed test maps) {summary(c[1])}; test (raw test maps) "
             f"{summary(c[2])}" for name, c in changes.items()]
    return "\n\n".join([
        f"`python -m bench.footing --config {config}` on {machine_description()}: each pixel stacker cross-fitted "
        "on the robustness bench's finished runs with the members' OOF maps as they are (raw) and with every fold "
        f"model put on its member's median-fold sharpness (footed; P_REF {P_REF}); honest car-grouped OOF mean Dice "
        "overall and per fold, and the held-out synthetic test truth (the fit on every fold, on footed or raw test "
        "maps).",
        markdown_table(["dataset", "stacker", "OOF raw → footed", "per fold", "test raw → footed",
                        "test, footed fit on raw test maps"], rows),
        "\n".join(lines),
        "The fold model furthest from its member's median sharpness, per dataset (share of pixels in (0.1, 0.9) per "
        "fold, the footing temperatures, the test maps' temperature):",
        markdown_table(["dataset", "member", "fold", "shares", "temperatures", "test temperature"], spread),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=WORK_DIR, help="bench.robust's work folder")
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--only", nargs="+", help="only these datasets")
    args = parser.parse_args(argv)
    results = {}
    for dataset in DATASETS:
        work = args.work / dataset.name
        if (args.only and dataset.name not in args.only) or not (work / "run" / "leaderboard.csv").exists():
            continue
        results[dataset.name] = scored(work, args.config)
    publish(TITLE, section(results, args.config), whole=not args.only and len(results) == len(DATASETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
