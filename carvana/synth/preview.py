"""A contact sheet of a dataset's train photos: one row per car, one column per angle."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from carvana.atomic import atomic_path
from carvana.dataset import N_ANGLES
from carvana.errors import WorkbenchError

THUMB_WIDTH = 240  # px per column (smaller images are kept at their own size)
GAP = 2  # px of white between thumbnails


def save_preview(data_dir: Path, out_png: Path, *, n_cars: int = 3) -> Path:
    """Write a PNG grid of the first `n_cars` train cars (by id) x their 16 angles; return its path."""
    data_dir, out_png = Path(data_dir), Path(out_png)
    photos = sorted((data_dir / "train").glob("*_[0-9][0-9].jpg"))
    if not photos:
        raise WorkbenchError(
            f"{data_dir / 'train'}: no train photos (<car>_<NN>.jpg) to preview; "
            "pass the folder `workbench synth` wrote"
        )
    cars = sorted({p.name.rsplit("_", 1)[0] for p in photos})[: max(1, n_cars)]
    with Image.open(photos[0]) as first:
        width, height = first.size
    thumb_w = min(width, THUMB_WIDTH)
    thumb_h = max(1, round(height * thumb_w / width))
    sheet = Image.new("RGB", (N_ANGLES * (thumb_w + GAP) - GAP, len(cars) * (thumb_h + GAP) - GAP), "white")
    for row, car in enumerate(cars):
        for col in range(N_ANGLES):
            path = data_dir / "train" / f"{car}_{col + 1:02d}.jpg"
            if not path.exists():
                continue  # a missing angle stays white, which is itself worth seeing
            with Image.open(path) as photo:
                thumb = photo.convert("RGB").resize((thumb_w, thumb_h), Image.Resampling.LANCZOS)
            sheet.paste(thumb, (col * (thumb_w + GAP), row * (thumb_h + GAP)))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="PNG")
    return out_png
