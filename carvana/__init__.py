"""The Carvana Image Masking Challenge's definitions: data layout, RLE, the metric, synthetic data.

The Kaggle submission files live in `carvana.submission`, atomic writes and locks in `carvana.atomic`.
"""

from carvana.dataset import KAGGLE_SIZE, N_ANGLES, CarvanaData, format_size, parse_size
from carvana.errors import WorkbenchError
from carvana.metric import dice, mean_dice
from carvana.rle import parse_runs, rle_decode, rle_encode, runs_to_rle

__all__ = [
    "KAGGLE_SIZE",
    "N_ANGLES",
    "CarvanaData",
    "WorkbenchError",
    "dice",
    "format_size",
    "mean_dice",
    "parse_runs",
    "parse_size",
    "rle_decode",
    "rle_encode",
    "runs_to_rle",
]
