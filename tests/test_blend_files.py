"""Blending submission files: the run-boundary vote against a per-pixel vote, and the refusals."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from carvana import WorkbenchError, rle_decode, rle_encode
from carvana.rle import parse_runs
from carvana.submission import blend_submissions, vote_runs
from tests.conftest import random_mask, read_csv, write_csv

SIZE = (30, 20)  # (W, H)
SHAPE = SIZE[::-1]
IDS = [f"{car:012x}_{angle:02d}.jpg" for car in (0x123, 0x456) for angle in range(1, 16, 2)]


def slow_vote(masks: list[np.ndarray], weights: list[float], min_votes: float | None) -> np.ndarray:
    """The obvious per-pixel weighted vote."""
    votes = np.zeros(SHAPE)
    for mask, weight in zip(masks, weights):
        votes += weight * mask
    if min_votes is None:
        return votes > sum(weights) / 2
    return votes >= min_votes


RULES = [
    ([1.0, 1.0], None),  # 2 equal votes: ties are not car
    ([1.0, 1.0, 1.0], None),
    ([1.0, 1.0, 1.0, 1.0], None),  # 2 of 4 is a tie
    ([1.0, 2.0, 0.5, 0.5], None),  # 2.0 alone is a tie with the rest
    ([0.1, 0.2, 0.3], None),  # 0.1 + 0.2 vs 0.3: float rounding must match the per-pixel sum
    ([0.1, 0.2, 0.3], 0.3),
    ([1.0, 1.0, 1.0, 1.0], 1.0),  # union
    ([1.0, 1.0, 1.0], 3.0),  # intersection
    ([2.0, 1.0, 1.0], 2.0),
    ([1.0, 0.0, 1.0], None),  # a zero weight
    ([1.0] * 17 + [0.5], None),  # more files than TABLE_FILES: votes of the codes that occur
    ([0.3] * 18, 2.1),
]


@pytest.mark.parametrize("weights, min_votes", RULES)
def test_vote_runs_equals_per_pixel_vote(weights, min_votes):
    rng = np.random.default_rng(len(weights) * 100 + int(10 * (min_votes or 0)))
    total = 0.0
    for w in weights:
        total += w
    needed = np.nextafter(total / 2, np.inf) if min_votes is None else min_votes
    for _ in range(60 if len(weights) < 10 else 10):
        masks = [random_mask(rng, SHAPE) for _ in weights]
        runs = [parse_runs(rle_encode(m), SIZE[0] * SIZE[1]) for m in masks]
        starts, ends = vote_runs(runs, weights, needed)
        flat = np.zeros(SIZE[0] * SIZE[1], dtype=bool)
        for s, e in zip(starts, ends):
            flat[s:e] = True
        np.testing.assert_array_equal(flat.reshape(SHAPE), slow_vote(masks, weights, min_votes))
        assert (starts[1:] > ends[:-1]).all()  # merged: no touching runs in the output


@pytest.mark.parametrize("weights, min_votes", RULES[:3] + RULES[4:7])
def test_blend_files_equals_per_pixel_vote(tmp_path, weights, min_votes):
    rng = np.random.default_rng(7)
    masks = {img: [random_mask(rng, SHAPE) for _ in weights] for img in IDS}
    paths = [write_csv(tmp_path / f"in{i}.csv.gz", [(img, rle_encode(masks[img][i])) for img in IDS])
             for i in range(len(weights))]
    out = blend_submissions(paths, tmp_path / "blend.csv.gz", weights=weights, min_votes=min_votes, image_size=SIZE)
    rows = read_csv(out)
    assert [img for img, _ in rows] == IDS
    for img, rle in rows:
        assert rle == rle_encode(slow_vote(masks[img], weights, min_votes))


def test_blend_accepts_touching_runs_and_plain_csv(tmp_path):
    a = write_csv(tmp_path / "a.csv", [(IDS[0], "1 3 4 3 10 1")])  # pixels 1-6 as two touching runs
    b = write_csv(tmp_path / "b.csv.gz", [(IDS[0], "2 5")])
    out = blend_submissions([a, b], tmp_path / "out.csv.gz", min_votes=2.0, image_size=SIZE)
    assert read_csv(out) == [(IDS[0], "2 5")]


def test_blend_records_inputs_weights_and_rule(tmp_path):
    paths = [write_csv(tmp_path / f"in{i}.csv.gz", [(img, "1 5") for img in IDS]) for i in range(3)]
    out = blend_submissions(paths, tmp_path / "out.csv.gz", weights=[1, 2, 3], image_size=SIZE)
    record = json.loads((tmp_path / "out.csv.gz.json").read_text())
    assert [i["sha256"] for i in record["inputs"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert record["weights"] == [1.0, 2.0, 3.0] and record["image_size"] == "30x20" and record["n_rows"] == len(IDS)
    assert "majority" in record["rule"] and record["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def good_rows() -> list[tuple[str, str]]:
    return [(img, "3 4 40 2") for img in IDS]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda rows: rows[:4] + [("ffffffffffff_01.jpg", "1 1")] + rows[5:], "row 5 has id ffffffffffff_01.jpg"),
        (lambda rows: rows[:4] + [rows[5], rows[4]] + rows[6:], f"row 5 has id {IDS[5]}"),
        (lambda rows: rows[:-1], f"ends before row {len(IDS)}"),
        (lambda rows: rows[:2] + [(IDS[2], "40 2 3 4")] + rows[3:], "row 3 .*not ascending"),
        (lambda rows: rows[:2] + [(IDS[2], "600 2")] + rows[3:], "row 3 .*last pixel"),
        (lambda rows: rows[:2] + [(IDS[2], "3 x")] + rows[3:], "row 3 .*not an integer"),
    ],
)
def test_blend_refuses_naming_file_and_row_and_overwrites_nothing(tmp_path, edit, match):
    good = write_csv(tmp_path / "good.csv.gz", good_rows())
    copy = write_csv(tmp_path / "copy.csv.gz", good_rows())
    bad = write_csv(tmp_path / "bad.csv.gz", edit(good_rows()))
    out = tmp_path / "out.csv.gz"
    out.write_bytes(b"old blend")
    (tmp_path / "out.csv.gz.json").write_text("old record")
    with pytest.raises(WorkbenchError, match=match) as error:
        blend_submissions([good, copy, bad], out, image_size=SIZE)
    assert str(bad) in str(error.value)
    assert out.read_bytes() == b"old blend" and (tmp_path / "out.csv.gz.json").read_text() == "old record"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv.gz", "copy.csv.gz", "good.csv.gz", "out.csv.gz",
                                                          "out.csv.gz.json"]


def test_blend_refuses_bad_settings(tmp_path):
    a = write_csv(tmp_path / "a.csv.gz", good_rows())
    b = write_csv(tmp_path / "b.csv.gz", good_rows())
    for kwargs, match in [
        (dict(paths=[a]), "at least 2"),
        (dict(paths=[a, b], weights=[1.0]), "one --weights value per file"),
        (dict(paths=[a, b], weights=[1.0, -1.0]), ">= 0"),
        (dict(paths=[a, b], min_votes=2.5), "outside"),
        (dict(paths=[a, b], min_votes=0), "outside"),
        (dict(paths=[a, tmp_path / "." / "a.csv.gz"]), "listed twice"),
        (dict(paths=[a, b], out_path=a), "is one of the inputs"),
        (dict(paths=[a, b], out_path=tmp_path), "is a folder"),
    ]:
        with pytest.raises(WorkbenchError, match=match):
            blend_submissions(**{"out_path": tmp_path / "out.csv.gz", "image_size": SIZE, **kwargs})
    assert not (tmp_path / "out.csv.gz").exists() and a.read_bytes() == b.read_bytes()


def test_blend_of_decoded_masks_round_trips(tmp_path):
    """A blend of three identical files is the file itself, re-encoded canonically."""
    rng = np.random.default_rng(3)
    rows = [(img, rle_encode(random_mask(rng, SHAPE))) for img in IDS]
    paths = [write_csv(tmp_path / f"in{i}.csv.gz", rows) for i in range(3)]
    out = blend_submissions(paths, tmp_path / "out.csv.gz", image_size=SIZE)
    for (_, rle), (_, original) in zip(read_csv(out), rows):
        np.testing.assert_array_equal(rle_decode(rle, SHAPE), rle_decode(original, SHAPE))


def test_blend_names_the_file_that_ends_early_even_when_it_is_the_first(tmp_path):
    short = write_csv(tmp_path / "short.csv.gz", good_rows()[:-2])
    good = write_csv(tmp_path / "good.csv.gz", good_rows())
    with pytest.raises(WorkbenchError, match=f"^{short}: ends before row {len(IDS) - 1}, where {good} goes on"):
        blend_submissions([short, good], tmp_path / "out.csv.gz", image_size=SIZE)
