"""Stacking: every entry an estimator over streamed member maps (`MapBatch`, `TrainMaps`), one cross-fit
loop, the exact Dice evaluator, nested Optuna tuning, the stack store and the leaderboard. Never imports
torch or tensorflow.

Names are imported from their modules on first use, so `import stacking.leaderboard` loads no Optuna.
The registries (`stacking.blenders.BLENDERS`, `stacking.pixel_stacker.STACKERS`) and the tuning
helpers live in their modules.
"""

from carvana.lazy import lazy_getattr, public_names

_EXPORTS = {
    "stacking.maps": ["MapBatch", "TrainMaps", "TestMaps"],
    "stacking.crossfit": ["cross_fit", "fit_predict"],
    "stacking.blenders": ["make_blender"],
    "stacking.pixel_stacker": ["PixelStacker", "make_stacker"],
    "stacking.tuned": ["TunedBlend", "nested_tune"],
    "stacking.evaluate": ["DiceEvaluator"],
    "stacking.tune": ["TunedParams"],
    "stacking.leaderboard": ["EntryScore", "read_leaderboard", "write_leaderboard"],
    "stacking.choice": ["Choice", "choose"],
}
__all__ = public_names(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
