"""The Carvana Image Masking Challenge's definitions: data layout, RLE, the metric, synthetic data."""
from carvana.errors import WorkbenchError
from carvana.metric import dice, mean_dice
from carvana.rle import rle_decode, rle_encode

__all__ = ["WorkbenchError", "dice", "mean_dice", "rle_decode", "rle_encode"]
