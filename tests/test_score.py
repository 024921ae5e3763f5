"""Scoring a submission file: rows matched by id; equals carvana.mean_dice on the decoded masks, per angle too."""
from __future__ import annotations

import numpy as np
import pytest

from carvana import WorkbenchError, dice, mean_dice, rle_encode
from carvana.rle import parse_runs
from carvana.submission import runs_dice, score_submission
from tests.conftest import random_mask, read_csv, write_csv

SIZE = (30, 20)  # (W, H)
SHAPE = SIZE[::-1]
IDS = [f"{car:012x}_{angle:02d}.jpg" for car in (0xA1, 0xB2, 0xC3) for angle in range(1, 17)]


def test_runs_dice_equals_dice_of_decoded_masks():
    rng = np.random.default_rng(0)
    n_pixels = SIZE[0] * SIZE[1]
    for _ in range(300):
        pred, truth = random_mask(rng, SHAPE), random_mask(rng, SHAPE)
        runs = parse_runs(rle_encode(pred), n_pixels), parse_runs(rle_encode(truth), n_pixels)
        assert runs_dice(*runs) == dice(pred, truth)
    touching = parse_runs("1 3 4 3 20 2", n_pixels)  # same pixels as "1 6 20 2"
    assert runs_dice(touching, parse_runs("1 6 20 2", n_pixels)) == 1.0
    assert runs_dice(parse_runs("2 6 22 1", n_pixels), touching) == 2.0 * 5 / (7 + 8)  # pixels 2-6 in both


@pytest.fixture
def scored_files(tmp_path):
    rng = np.random.default_rng(1)
    truths = [random_mask(rng, SHAPE) for _ in IDS]
    # Predictions near the truth (a few flipped pixels) and some unrelated ones.
    preds = [t ^ (rng.random(SHAPE) < 0.05) if i % 5 else random_mask(rng, SHAPE) for i, t in enumerate(truths)]
    truth_path = write_csv(tmp_path / "test_masks.csv", [(i, rle_encode(m)) for i, m in zip(IDS, truths)])
    sub_path = write_csv(tmp_path / "sub.csv.gz", [(i, rle_encode(m)) for i, m in zip(IDS, preds)])
    return sub_path, truth_path, preds, truths


def test_score_equals_mean_dice(scored_files):
    sub_path, truth_path, preds, truths = scored_files
    result = score_submission(sub_path, truth_path, image_size=SIZE)
    assert result.mean_dice == mean_dice(preds, truths)
    assert result.n_images == len(IDS)
    assert list(result.dice_by_angle) == [f"{a:02d}" for a in range(1, 17)]
    for angle, score in result.dice_by_angle.items():
        chosen = [k for k, img in enumerate(IDS) if img.endswith(f"_{angle}.jpg")]
        assert score == mean_dice([preds[k] for k in chosen], [truths[k] for k in chosen])
        assert result.n_by_angle[angle] == 3
    assert "angle 16 (3)" in result.to_markdown()


def test_perfect_submission_scores_one(scored_files):
    _, truth_path, _, _ = scored_files
    assert score_submission(truth_path, truth_path, image_size=SIZE).mean_dice == 1.0


def test_score_matches_rows_by_id_in_any_order(scored_files, tmp_path):
    sub_path, truth_path, preds, truths = scored_files
    in_order = score_submission(sub_path, truth_path, image_size=SIZE)
    rows = read_csv(truth_path)
    order = np.random.default_rng(2).permutation(len(rows))
    shuffled_truth = write_csv(tmp_path / "shuffled_truth.csv", [rows[k] for k in order])
    assert score_submission(sub_path, shuffled_truth, image_size=SIZE) == in_order
    sub_rows = read_csv(sub_path)
    shuffled_sub = write_csv(tmp_path / "shuffled_sub.csv", [sub_rows[k] for k in order])
    result = score_submission(shuffled_sub, truth_path, image_size=SIZE)
    # the mean runs over the submission's order: equal to mean_dice in that order, bit for bit
    assert result.mean_dice == mean_dice([preds[k] for k in order], [truths[k] for k in order])
    assert result.n_by_angle == in_order.n_by_angle


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda rows: rows[:3] + rows[4:], f"missing 1 id \\({IDS[3]}\\)"),
        (lambda rows: rows[:-7], f"missing 7 ids \\({', '.join(IDS[-7:-2])} and 2 more\\)"),
        (lambda rows: rows + [("0000000000ff_01.jpg", "")], "extra 1 id \\(0000000000ff_01.jpg\\)"),
        (lambda rows: [("0000000000ff_02.jpg", "")] + rows[1:], f"missing 1 id \\({IDS[0]}\\); extra 1 id "
                                                                 "\\(0000000000ff_02.jpg\\)"),
        (lambda rows: rows[:7] + [rows[6]] + rows[7:], f"duplicate id {IDS[6]} at row 8"),
    ],
)
def test_score_refuses_id_mismatch_naming_the_ids(scored_files, tmp_path, edit, match):
    sub_path, truth_path, preds, _ = scored_files
    rows = [(i, rle_encode(m)) for i, m in zip(IDS, preds)]
    bad = write_csv(tmp_path / "bad.csv.gz", edit(rows))
    with pytest.raises(WorkbenchError, match=match) as error:
        score_submission(bad, truth_path, image_size=SIZE)
    assert str(bad) in str(error.value)


def test_score_refuses_a_truth_with_a_duplicate_id(scored_files, tmp_path):
    sub_path, truth_path, _, _ = scored_files
    rows = read_csv(truth_path)
    bad_truth = write_csv(tmp_path / "truth.csv", rows + rows[:1])
    with pytest.raises(WorkbenchError, match=f"truth.csv: duplicate id {IDS[0]} at row {len(IDS) + 1}"):
        score_submission(sub_path, bad_truth, image_size=SIZE)


def test_score_refuses_malformed_rle_naming_file_and_row(scored_files, tmp_path):
    _, truth_path, preds, _ = scored_files
    rows = [(i, rle_encode(m)) for i, m in zip(IDS, preds)]
    rows[9] = (IDS[9], "5 3 6 1")
    bad = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(WorkbenchError, match="row 10 .*overlap") as error:
        score_submission(bad, truth_path, image_size=SIZE)
    assert str(bad) in str(error.value)
    with pytest.raises(WorkbenchError, match="last pixel"):
        score_submission(truth_path, truth_path, image_size=(10, 10))  # the wrong --size
