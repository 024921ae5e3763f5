"""Kaggle submission files (`img,rle_mask`, plain or gzipped): read, validate, write, score and blend.

Every function streams row by row, in run form where it can (`carvana.rle.parse_runs`), so a real
submission (100,064 rows of 1918x1280 masks) never sits in memory.
"""

from carvana.submission.blend import blend_submissions, vote_runs
from carvana.submission.files import HEADER, iter_rows, open_text, read_sample_ids, validate_submission
from carvana.submission.score import ScoreResult, runs_dice, score_submission
from carvana.submission.write import threshold_level, write_submission

__all__ = [
    "HEADER",
    "ScoreResult",
    "blend_submissions",
    "iter_rows",
    "open_text",
    "read_sample_ids",
    "runs_dice",
    "score_submission",
    "threshold_level",
    "validate_submission",
    "vote_runs",
    "write_submission",
]
