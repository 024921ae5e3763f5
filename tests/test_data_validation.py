"""check-data accepts the synthetic studio and names the file for every kind of bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carvana import rle_decode, rle_encode
from carvana.dataset import CarvanaData, load_mask
from carvana.errors import WorkbenchError
from carvana.validate import check_data
from tests.conftest import assert_user_error, run_cli


def test_synthetic_data_passes_deep_check(tiny_data_master):
    summary = check_data(tiny_data_master, deep=True)
    assert (summary.n_train_cars, summary.n_test_cars) == (6, 2)
    assert (summary.n_train_images, summary.n_test_images) == (96, 32)
    assert summary.size == (96, 64)
    assert sum(summary.makes.values()) == 8
    assert summary.has_test_truth


def test_check_data_cli_prints_summary(tiny_data_master):
    result = run_cli("check-data", str(tiny_data_master))
    assert result.returncode == 0, result.stderr
    assert "6 cars, 96 images" in result.stdout and "96x64" in result.stdout


def first_train(root: Path) -> str:
    return CarvanaData(root).train_ids[0]


def remove_mask(root: Path) -> str:
    img = first_train(root)
    (root / "train_masks" / f"{img}_mask.gif").unlink()
    return f"{img}.jpg"



def extra_mask(root: Path) -> str:
    img = first_train(root)
    shutil.copy(root / "train_masks" / f"{img}_mask.gif", root / "train_masks" / "aaaaaaaaaaaa_03_mask.gif")
    return "aaaaaaaaaaaa_03_mask.gif"


def wrong_size(root: Path) -> str:
    img = first_train(root)
    path = root / "train" / f"{img}.jpg"
    Image.open(path).resize((90, 64)).save(path, quality=90)
    return f"{img}.jpg"


def non_binary_mask(root: Path) -> str:
    img = first_train(root)
    path = root / "train_masks" / f"{img}_mask.gif"
    values = np.array(Image.open(path))
    values[0, :5] = 7
    gif = Image.fromarray(values.astype(np.uint8), mode="P")
    gif.putpalette([0, 0, 0, 255, 255, 255] + [128, 128, 128] * 254)
    gif.save(path)
    return f"{img}_mask.gif"


def corrupt_jpeg(root: Path) -> str:
    img = first_train(root)
    path = root / "train" / f"{img}.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"{img}.jpg"


def malformed_name(root: Path) -> str:
    img = first_train(root)
    (root / "train" / f"{img}.jpg").rename(root / "train" / "car7_front.jpg")
    return "car7_front.jpg"


def csv_disagrees(root: Path) -> str:
    path = root / "train_masks.csv"
    lines = path.read_text().splitlines()
    img, rle = lines[1].split(",")
    mask = rle_decode(rle, (64, 96))
    mask[0, 0] ^= 1  # a well-formed RLE of a different mask
    lines[1] = f"{img},{rle_encode(mask)}"
    path.write_text("\n".join(lines) + "\n")
    return "train_masks.csv"


def sample_missing_test(root: Path) -> str:
    path = root / "sample_submission.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    return "sample_submission.csv"


@pytest.mark.parametrize("damage, fix_hint", [
    (remove_mask, "no mask"), (extra_mask, "no image"), (wrong_size, "size"), (non_binary_mask, "not binary"),
    (corrupt_jpeg, "corrupt or truncated"), (malformed_name, "malformed name"), (csv_disagrees, "disagrees"),
    (sample_missing_test, "no row for"),
])
def test_bad_input_is_named_and_nothing_written(tiny_data, damage, fix_hint):
    culprit = damage(tiny_data)
    before = {p: p.stat().st_mtime_ns for p in tiny_data.rglob("*")}
    assert_user_error(run_cli("check-data", str(tiny_data)), culprit, fix_hint)
    assert {p: p.stat().st_mtime_ns for p in tiny_data.rglob("*")} == before


def test_missing_folder_is_a_clear_error(tmp_path):
    assert_user_error(run_cli("check-data", str(tmp_path / "nowhere")), "nowhere", "not found")


def test_load_mask_gives_0_1(tiny_data_master):
    data = CarvanaData(tiny_data_master)
    mask = load_mask(data.mask_path(data.train_ids[0]))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and mask.any()
    image = data.load_image(data.train_ids[0])
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8


def test_quick_check_skips_decoding(tiny_data):
    corrupt_jpeg(tiny_data)
    check_data(tiny_data, deep=False)  # headers are intact; only the deep check decodes
    with pytest.raises(WorkbenchError, match="truncated"):
        check_data(tiny_data, deep=True)
