"""RLE codec and Dice against slow obvious versions, hand-checked golden strings and the data's own files."""
from __future__ import annotations

import numpy as np
import pytest

from carvana import dice, mean_dice, rle_decode, rle_encode
from carvana.dataset import CarvanaData
from carvana.rle import rle_problem


def slow_rle_encode(mask: np.ndarray) -> str:
    """The obvious loop over pixels, row-major, 1-indexed."""
    runs, start = [], None
    flat = list(np.asarray(mask).reshape(-1) > 0) + [False]
    for index, value in enumerate(flat):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs += [start + 1, index - start]
            start = None
    return " ".join(map(str, runs))


def edge_masks() -> list[np.ndarray]:
    h, w = 7, 11
    masks = [np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8)]
    first, last = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    first[0, 0], last[-1, -1] = 1, 1
    singles = np.zeros((h, w), np.uint8)
    singles.reshape(-1)[::2] = 1  # every run has length one
    row_wrap = np.zeros((h, w), np.uint8)
    row_wrap[2, -3:], row_wrap[3, :4] = 1, 1  # one run across a row end: proves row-major order
    return masks + [first, last, singles, row_wrap]


@pytest.mark.parametrize("mask", edge_masks(), ids=["empty", "full", "first", "last", "singles", "row_wrap"])
def test_round_trip_edge_masks(mask):
    rle = rle_encode(mask)
    assert rle == slow_rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    assert rle_problem(rle, mask.size) is None


def test_edge_encodings_are_the_kaggle_ones():
    empty, full, first, last, _, row_wrap = edge_masks()
    assert rle_encode(empty) == ""
    assert rle_encode(full) == "1 77"
    assert rle_encode(first) == "1 1"
    assert rle_encode(last) == "77 1"
    assert rle_encode(row_wrap) == "31 7"  # row 2 ends at pixel 33: 31, 32, 33 then 34..37


def test_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, size=2)
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        rle = rle_encode(mask)
        assert rle == slow_rle_encode(mask)
        np.testing.assert_array_equal(rle_decode(rle, (h, w)), mask)


def test_encode_accepts_bool_and_0_255():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    assert rle_encode(mask) == rle_encode(mask.astype(np.uint8) * 255) == "8 2 13 2"


def test_train_masks_csv_decodes_to_the_mask_gifs(tiny_data_master):
    """The two truths the synthetic writer stores (GIF masks, RLE CSV) agree through decode and encode."""
    data = CarvanaData(tiny_data_master)
    for img in data.train_ids:
        mask = data.load_mask(img)
        np.testing.assert_array_equal(rle_decode(data.train_rles[img], mask.shape), mask)
        assert rle_encode(mask) == data.train_rles[img]


# Masks drawn by hand (`#` = car) and their RLE worked out by hand: pixels numbered row-major from 1.
GOLDEN = [
    (["......", ".##...", ".###..", "......"], "8 2 14 3"),  # rows 2 and 3 of a 6-wide image
    (["....##", "##...."], "5 4"),  # one run across a row end: pixels 5, 6 then 7, 8
    (["###", "...", "..#"], "1 3 9 1"),  # the first row and the very last pixel
    (["#.", ".#"], "1 1 4 1"),
    (["....", "...."], ""),
]


def mask_from_art(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows], dtype=np.uint8)


def golden_slow_encode(mask: np.ndarray) -> str:
    """A second encoder sharing nothing with the others: visit (y, x) in row-major order and compare
    each pixel with the one before it."""
    height, width = mask.shape
    numbers: list[int] = []
    previous = 0
    for y in range(height):
        for x in range(width):
            value, number = int(mask[y][x] != 0), y * width + x + 1
            if value and not previous:
                numbers += [number, 0]
            if value:
                numbers[-1] += 1
            previous = value
    return " ".join(str(n) for n in numbers)


@pytest.mark.parametrize("art, rle", GOLDEN, ids=[g[1] or "empty" for g in GOLDEN])
def test_golden_masks_encode_to_hand_checked_strings(art, rle):
    mask = mask_from_art(art)
    assert golden_slow_encode(mask) == rle
    assert rle_encode(mask) == rle
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)


@pytest.mark.parametrize("rle, problem", [
    ("1 2 3", "odd count"), ("0 3", "below 1"), ("5 0", "length 0"), ("10 5 12 2", "overlap"),
    ("10 5 3 2", "not ascending"), ("70 20", "past the image"), ("1 x", "not an integer"),
])
def test_rle_problem_names_what_is_wrong(rle, problem):
    assert problem in rle_problem(rle, 77)


def test_dice_definition():
    a = np.array([[1, 1, 0, 0]], np.uint8)
    b = np.array([[0, 1, 1, 0]], np.uint8)
    assert dice(a, b) == pytest.approx(2 * 1 / 4)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # both empty counts as perfect


def test_mean_dice_is_mean_of_per_image_scores_not_pooled():
    big = np.ones((10, 10), np.uint8)
    small_truth = np.zeros((10, 10), np.uint8)
    small_truth[0, 0] = 1
    empty = np.zeros((10, 10), np.uint8)
    preds, truths = [big, empty, empty], [big, small_truth, empty]
    assert mean_dice(preds, truths) == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    with pytest.raises(ValueError):
        mean_dice([big], [big, big])
