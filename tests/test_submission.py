"""Submission writer, reader and validator on tiny 30 x 20 (W x H) images."""
from __future__ import annotations

import gzip
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from carvana import WorkbenchError, rle_decode, rle_encode
from carvana.dataset import format_size, parse_size
from carvana.rle import parse_runs, rle_problem
from carvana.submission import read_sample_ids, threshold_level, validate_submission, write_submission
from tests.conftest import read_csv, write_csv

SIZE = (30, 20)  # (W, H)
IDS = [f"{car:012x}_{angle:02d}.jpg" for car in (0xABC, 0xDEF) for angle in range(1, 17)]


class MapReader:
    """A picklable read_map: smooth random uint8 maps, at store size (h, w), one per id."""

    def __init__(self, shape: tuple[int, int], fail_on: str | None = None, dtype=np.uint8) -> None:
        self.shape, self.fail_on, self.dtype = shape, fail_on, dtype

    def __call__(self, img: str) -> np.ndarray:
        if img == self.fail_on:
            raise WorkbenchError(f"cannot read the map of {img}")
        rng = np.random.default_rng(zlib.crc32(img.encode()))
        coarse = rng.integers(0, 256, size=(4, 5)).astype(np.uint8)
        return cv2.resize(coarse, self.shape[::-1], interpolation=cv2.INTER_LINEAR).astype(self.dtype)


def expected_mask(prob: np.ndarray, level: int = 128) -> np.ndarray:
    return cv2.resize(prob, SIZE, interpolation=cv2.INTER_LINEAR) >= level


@pytest.mark.parametrize("store_shape, n_jobs", [((10, 15), 2), ((10, 15), 1), ((20, 30), 1), ((32, 48), 1)])
def test_writer_round_trips_to_thresholded_maps(tmp_path, store_shape, n_jobs):
    reader = MapReader(store_shape)
    out = write_submission(IDS, reader, tmp_path / "sub.csv.gz", image_size=SIZE, n_jobs=n_jobs, progress=False)
    rows = read_csv(out)
    assert [img for img, _ in rows] == IDS
    for img, rle in rows:
        np.testing.assert_array_equal(rle_decode(rle, SIZE[::-1]), expected_mask(reader(img)))


def test_writer_output_is_the_same_bytes_whatever_n_jobs(tmp_path):
    one = write_submission(IDS, MapReader((10, 15)), tmp_path / "one.csv.gz", image_size=SIZE, n_jobs=1, progress=False)
    two = write_submission(IDS, MapReader((10, 15)), tmp_path / "two.csv.gz", image_size=SIZE, n_jobs=2, progress=False)
    assert one.read_bytes() == two.read_bytes()
    plain = write_submission(IDS, MapReader((10, 15)), tmp_path / "plain.csv", image_size=SIZE, n_jobs=2,
                             progress=False)
    assert plain.read_bytes()[:2] != b"\x1f\x8b" and read_csv(plain) == read_csv(one)


def test_threshold_is_probability_at_least_threshold():
    levels = np.arange(256)
    for threshold in [0.0, 0.2, 0.5, 0.5 + 1e-9, 127.5 / 255, 128 / 255, 0.7, 1.0]:
        slow = min((int(v) for v in levels if v / 255 >= threshold), default=256)
        assert threshold_level(threshold) == slow
    assert threshold_level(0.5) == 128 and threshold_level(0.2) == 51
    with pytest.raises(WorkbenchError, match="outside"):
        threshold_level(1.5)


def test_writer_applies_the_threshold(tmp_path):
    reader = MapReader((20, 30))
    out = write_submission(IDS, reader, tmp_path / "s.csv.gz", image_size=SIZE, threshold=0.3, n_jobs=1, progress=False)
    for img, rle in read_csv(out):
        np.testing.assert_array_equal(rle_decode(rle, SIZE[::-1]), reader(img) >= 77)  # 77/255 >= 0.3 > 76/255


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_writer_error_leaves_existing_output_alone(tmp_path, n_jobs):
    out = tmp_path / "sub.csv.gz"
    out.write_bytes(b"previous submission")
    with pytest.raises(WorkbenchError, match=IDS[20]):
        write_submission(IDS, MapReader((10, 15), fail_on=IDS[20]), out, image_size=SIZE, n_jobs=n_jobs, progress=False)
    assert out.read_bytes() == b"previous submission"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv.gz"]


def test_writer_rejects_float_maps_and_duplicate_ids(tmp_path):
    with pytest.raises(WorkbenchError, match="uint8"):
        write_submission(IDS, MapReader((10, 15), dtype=np.float32), tmp_path / "s.csv.gz", image_size=SIZE, n_jobs=1,
                         progress=False)
    with pytest.raises(WorkbenchError, match="twice"):
        write_submission(IDS + IDS[:1], MapReader((10, 15)), tmp_path / "s.csv.gz", image_size=SIZE, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_writer_needs_a_picklable_reader_for_several_processes(tmp_path):
    reader = MapReader((10, 15))
    with pytest.raises(TypeError, match="picklable"):
        write_submission(IDS, lambda img: reader(img), tmp_path / "s.csv.gz", image_size=SIZE, n_jobs=2, progress=False)
    out = write_submission(IDS, lambda img: reader(img), tmp_path / "s.csv.gz", image_size=SIZE, n_jobs=1,
                           progress=False)
    assert len(read_csv(out)) == len(IDS)


def test_read_sample_ids(tmp_path):
    path = write_csv(tmp_path / "sample_submission.csv", [(img, "1 1") for img in IDS])
    assert read_sample_ids(path) == IDS
    bad = {
        "header": ("img,mask\nx.jpg,1 1\n", "header"),
        "no comma": ("img,rle_mask\nx.jpg 1 1\n", "row 1"),
        "three fields": ("img,rle_mask\nx.jpg,1 1\ny.jpg,1 1,3\n", "row 2"),
        "no rows": ("img,rle_mask\n", "no rows"),
        "duplicate": ("img,rle_mask\nx.jpg,1 1\nx.jpg,1 1\n", "twice"),
        "empty file": ("", "header"),
    }
    for name, (text, match) in bad.items():
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(WorkbenchError, match=match) as error:
            read_sample_ids(tmp_path / "bad.csv")
        assert "bad.csv" in str(error.value), name
    with pytest.raises(WorkbenchError, match="cannot read"):
        read_sample_ids(tmp_path / "missing.csv")
    whole = gzip.compress(("img,rle_mask\n" + "x.jpg,1 1\n" * 2000).encode())
    for _, data in [("truncated", whole[: len(whole) // 2]), ("corrupt", whole[:30] + b"\xff" * 40 + whole[70:])]:
        (tmp_path / "bad.csv.gz").write_bytes(data)
        with pytest.raises(WorkbenchError, match="unreadable"):
            read_sample_ids(tmp_path / "bad.csv.gz")


def valid_rows() -> list[tuple[str, str]]:
    return [(img, rle_encode(MapReader((20, 30))(img) >= 128)) for img in IDS]


@pytest.mark.parametrize("name", ["sub.csv", "sub.csv.gz"])
def test_validator_accepts_a_good_file(tmp_path, name):
    validate_submission(write_csv(tmp_path / name, valid_rows()), IDS, image_size=SIZE)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda rows: rows[:5] + rows[6:], f"missing id {IDS[5]} \\(expected at row 6"),
        (lambda rows: rows[:-1], f"missing id {IDS[-1]}: the file ends before row {len(IDS)}"),
        (lambda rows: rows[:3] + [("ffffffffffff_01.jpg", "")] + rows[3:], "extra id ffffffffffff_01.jpg at row 4"),
        (lambda rows: rows + [rows[0]], f"duplicate id {IDS[0]} at row {len(IDS) + 1}"),
        (lambda rows: rows[:7] + [rows[8], rows[7]] + rows[9:], f"row 8 has {IDS[8]} where {IDS[7]} is expected"),
        (lambda rows: rows[:2] + [(IDS[2], "5 3 7 2")] + rows[3:], "row 3 .*overlap"),
        (lambda rows: rows[:2] + [(IDS[2], "5 3 9")] + rows[3:], "row 3 .*odd count"),
        (lambda rows: rows[:2] + [(IDS[2], "599 3")] + rows[3:], "row 3 .*last pixel"),
        (lambda rows: rows[:2] + [(IDS[2], "5 0")] + rows[3:], "row 3 .*length 0"),
        (lambda rows: rows[:2] + [(IDS[2], "5 2.5")] + rows[3:], "row 3 .*not an integer"),
        (lambda rows: rows[:2] + [(IDS[2], "0 2")] + rows[3:], "row 3 .*start below 1"),
    ],
)
def test_validator_names_the_problem_and_row(tmp_path, edit, match):
    path = write_csv(tmp_path / "sub.csv.gz", edit(valid_rows()))
    with pytest.raises(WorkbenchError, match=match) as error:
        validate_submission(path, IDS, image_size=SIZE)
    assert str(path) in str(error.value) and "fix:" in str(error.value)


def test_validator_rejects_a_wrong_header(tmp_path):
    path = write_csv(tmp_path / "sub.csv", valid_rows(), header="id,rle")
    with pytest.raises(WorkbenchError, match="header"):
        validate_submission(path, IDS, image_size=SIZE)


def test_parse_runs_agrees_with_rle_problem():
    n_pixels = 600
    cases = ["", " ", "1 600", "1 3 4 2", "3 2 9 1", "599 2", "600 1", "5 3 7 2", "1 601", "0 1", "1 2 3",
             "2 -1", "1 2x", "+3 2", "9223372036854775807 5", "99999999999999999999 1", "7 1 3 1", "1\t2\n5 1"]
    refused_by_parse_runs_only = {"9223372036854775807 5", "99999999999999999999 1"}  # int64 overflow
    for rle in cases:
        problem = "overflow" if rle in refused_by_parse_runs_only else rle_problem(rle, n_pixels)
        if problem is None:
            starts, ends = parse_runs(rle, n_pixels)
            mask = np.zeros(n_pixels, dtype=np.uint8)
            for s, e in zip(starts, ends):
                mask[s:e] = 1
            np.testing.assert_array_equal(mask, rle_decode(rle, (1, n_pixels))[0])
        else:
            with pytest.raises(ValueError):
                parse_runs(rle, n_pixels)


def test_parse_size():
    assert parse_size("1918x1280") == (1918, 1280) == parse_size(format_size((1918, 1280)))
    for bad in ["1918", "0x5", "axb", "1x2x3", "-3x4"]:
        with pytest.raises(ValueError, match="WxH"):
            parse_size(bad)


def test_submission_modules_never_import_heavy_frameworks():
    code = ("import sys, carvana.submission; "
            "print([m for m in ('torch', 'tensorflow') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
