"""The data a run was built on, as a fingerprint kept in `RUN/data.json`: image ids, image size, a hash
of the masks (train_masks.csv) and a hash of a sample of photos.

Every result in a run folder (folds, members' maps, entries, the submission) belongs to its data: the
same ids re-rendered at another size, or re-annotated, must not be scored with the old maps. The first
verb to make folds records the fingerprint; every later verb compares it and refuses other data in one
line naming what differs. A moved copy of the same data is the same data (the path is not compared).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from carvana.atomic import write_json_atomic
from carvana.dataset import TRAIN_MASKS_CSV, CarvanaData, format_size
from carvana.errors import WorkbenchError
from carvana.validate import DataSummary

__all__ = ["DATA_JSON", "check_fingerprint", "data_fingerprint"]

DATA_JSON = "data.json"
N_SAMPLE = {"train": 16, "test": 8}  # photos hashed per split, evenly spaced over the sorted ids
COMPARED = ("train_ids", "test_ids", "size", "masks_sha256", "photos_sha256")


def _sha256(parts: list[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def _sample(ids: list[str], n: int) -> list[str]:
    if len(ids) <= n:
        return ids
    return [ids[round(i * (len(ids) - 1) / (n - 1))] for i in range(n)]


def data_fingerprint(data: CarvanaData, summary: DataSummary) -> dict:
    """{train_ids, test_ids: {n, sha256}, size: WxH, masks_sha256, photos_sha256, data: path (not compared)}."""
    ids = {split: data.ids(split) for split in ("train", "test")}
    photos = [
        data.image_path(img, split).read_bytes() for split, n in N_SAMPLE.items() for img in _sample(ids[split], n)
    ]
    return {
        **{f"{split}_ids": {"n": len(v), "sha256": _sha256([i.encode() for i in v])} for split, v in ids.items()},
        "size": format_size(summary.size),
        "masks_sha256": hashlib.sha256((data.root / TRAIN_MASKS_CSV).read_bytes()).hexdigest(),
        "photos_sha256": _sha256(photos),
        "data": str(data.root),
    }


def _differences(recorded: dict, found: dict) -> list[str]:
    what = []
    for key in COMPARED:
        old, new = recorded.get(key), found[key]
        if old == new:
            continue
        if key == "size":
            what.append(f"image size {old} -> {new}")
        elif key.endswith("_ids"):
            n_old = old.get("n", "?") if isinstance(old, dict) else "?"
            names = ", other names" if n_old == new["n"] else ""
            what.append(f"{key.replace('_', ' ')} ({n_old} -> {new['n']}{names})")
        else:
            what.append({"masks_sha256": "masks (train_masks.csv)", "photos_sha256": "photos"}[key])
    return what


def check_fingerprint(run_dir: Path, data: CarvanaData, summary: DataSummary, *, record: bool) -> dict:
    """Compare the data with the run's `data.json`: WorkbenchError naming what differs and the fix. With no
    record yet, write one when `record` (a run whose folds are made from this data) and return the print."""
    path = Path(run_dir) / DATA_JSON
    found = data_fingerprint(data, summary)
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError):
        recorded = None  # a damaged record: written again below (the folds check still guards the ids)
    if isinstance(recorded, dict):
        differs = _differences(recorded, found)
        if differs:
            raise WorkbenchError(
                f"{path}: this run was built on other data than {data.root} ({'; '.join(differs)}); its folds, "
                f"maps and scores belong to that data: use another --run-dir for this data, or pass "
                f"--data {recorded.get('data', 'DIR')} (the data it was built on)"
            )
        return recorded
    if record:
        write_json_atomic(path, found)
    return found
