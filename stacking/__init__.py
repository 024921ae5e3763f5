"""Stacking: every entry an estimator over streamed member maps (`MapBatch`, `TrainMaps`), one cross-fit
loop, the exact Dice evaluator, nested Optuna tuning, the stack store and the leaderboard. Never imports
torch or tensorflow.

Names are imported from their modules on first use, so `import stacking.leaderboard` loads no Optuna.
"""
from typing import Any

from carvana.lazy import lazy_attribute

_HOMES = {
    "BLENDERS": "stacking.blenders",
    "make_blender": "stacking.blenders",
    "DiceEvaluator": "stacking.evaluate",
    "STACKERS": "stacking.pixel_stacker",
    "PixelStacker": "stacking.pixel_stacker",
    "make_stacker": "stacking.pixel_stacker",
    "MapBatch": "stacking.maps",
    "TrainMaps": "stacking.maps",
    "TestMaps": "stacking.maps",
    "cross_fit": "stacking.crossfit",
    "fit_predict": "stacking.crossfit",
    "TunedBlend": "stacking.tuned",
    "EntryScore": "stacking.leaderboard",
    "score_entry": "stacking.leaderboard",
    "read_leaderboard": "stacking.leaderboard",
    "write_leaderboard": "stacking.leaderboard",
    "TuneSpace": "stacking.tune",
    "TunedParams": "stacking.tune",
    "nested_tune": "stacking.tune",
    "open_storage": "stacking.tune",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _HOMES, name)
