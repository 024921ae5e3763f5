"""The Optuna-tuned blend as a leaderboard entry: per-angle thresholds and member weights, tuned
nested over the folds (`workbench tune`), turned into stored maps like every other entry's.

Fold k's OOF maps use the params of the study that never saw fold k (the honest score); the test
maps use the full study's params. A map is stored so that thresholding it at 0.5 gives exactly the
tuned decision: the blend is remapped piecewise-linearly so that its angle's threshold lands on 0.5.
"""
from __future__ import annotations

import numpy as np

from carvana.dataset import angle_of
from folds import Folds
from oof import Store
from stacking.oof_table import OofTable, test_maps
from stacking.tune import TunedParams, blend_mask, blend_proba
from workbench.config import ExperimentConfig

ENTRY = "tuned"
TEST_CHUNK = 32


def tuned_map(maps: np.ndarray, angle: int, params: TunedParams) -> np.ndarray:
    """(H, W) float32 in [0, 1] whose >= 0.5 pixels are exactly the tuned blend's car pixels.

    maps: (M, H, W) uint8 in `params.members` order; angle: 1..16.
    """
    proba = blend_proba(maps, params)
    t = float(params.threshold[angle - 1])
    remapped = np.where(proba < t, 0.5 * proba / t, 0.5 + 0.5 * (proba - t) / (1 - t))
    car = blend_mask(maps, angle, params)
    # Pin the decision against float and uint8 rounding: car >= 128/255, background <= 127/255.
    return np.where(car, np.maximum(remapped, 128 / 255), np.minimum(remapped, 127 / 255)).astype(np.float32)


def run_tuned_entry(config: ExperimentConfig, table: OofTable, folds: Folds, entry_store: Store,
                    member_store: Store, test_ids: list[str], progress: bool) -> float:
    """Tune (or continue the studies), write the tuned entry's maps; return the tuned-on mean Dice."""
    from workbench.tune import tune_run

    members = list(config.tune.members or table.members)
    result = tune_run(config, progress=progress, members=members)
    columns = [table.members.index(m) for m in members]
    spec = {"entry": ENTRY, "members": members, "full": result.params.to_dict(),
            "outer": {str(k): p.to_dict() for k, p in result.outer.items()}}
    reset = entry_store.path.is_dir() and ENTRY in entry_store.members()
    with entry_store.open_member(ENTRY, spec, folds.hash, table.truth.shape[1:], reset=reset) as writer:
        for i, img in enumerate(table.ids):
            k = int(table.fold[i])
            writer.write("train", img, tuned_map(table.maps[i, columns], int(table.angle[i]), result.outer[k]), fold=k)
        for start in range(0, len(test_ids), TEST_CHUNK):
            chunk = test_ids[start:start + TEST_CHUNK]
            for img, maps in zip(chunk, test_maps(member_store, members, chunk)):
                writer.write("test", img, tuned_map(maps, angle_of(img), result.params))
    return result.tuned_on
