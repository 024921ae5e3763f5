"""Decode-and-resize once: every image (and mask) of a split at one resolution, in a .npy file that
every later epoch and member memory-maps (decoding 1918x1280 JPEGs every epoch starves a GPU).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from carvana.atomic import file_lock, temp_path
from carvana.dataset import CarvanaData
from carvana.progress import progress_bar
from carvana.resize import resize_image, resize_mask, resize_proba
from oof.format import fold_dir_name
from zoo.pseudo import PseudoSet


def cached_split(
    data: CarvanaData, split: str, height: int, width: int, cache_dir: Path, with_masks: bool = True
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(ids, images (N, h, w, 3) uint8 memmap, masks (N, h, w) uint8 memmap or None) for a split.

    Built on first use (atomically, in parallel threads) and reused while the image list is the same.
    """
    ids = data.ids(split)
    key = hashlib.sha256(("\n".join(ids) + str(data.root.resolve())).encode()).hexdigest()[:12]
    folder = cache_dir / f"{height}x{width}"
    images_path = folder / f"{split}-{key}-images.npy"
    masks_path = folder / f"{split}-{key}-masks.npy"
    wants_masks = with_masks and split == "train"
    if not images_path.exists() or (wants_masks and not masks_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        # One builder per cache folder (a node-local cache: a local lock); the others wait, then reuse it.
        with file_lock(folder / f".{split}-{key}.lock"):
            if not images_path.exists() or (wants_masks and not masks_path.exists()):

                def load(img: str) -> tuple[np.ndarray, np.ndarray | None]:
                    image = resize_image(data.load_image(img, split), height, width)
                    return image, resize_mask(data.load_mask(img), height, width) if wants_masks else None

                _build(ids, height, width, load, images_path, masks_path if wants_masks else None, split)
    images = np.load(images_path, mmap_mode="r")
    masks = np.load(masks_path, mmap_mode="r") if wants_masks else None
    return ids, images, masks


def cached_pseudo(
    pseudo: PseudoSet, data: CarvanaData, height: int, width: int, cache_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """(images (P, h, w, 3) uint8, label levels (P, h, w) uint8) memmaps of a fold's pseudo-labelled test
    photos at the member's size, cached like `cached_split` under the labels' generation."""
    generation = pseudo.store.metadata(fold_dir_name(pseudo.fold))["generation"]
    key = hashlib.sha256(f"{pseudo.cfg.name}/{pseudo.fold}/{generation}".encode()).hexdigest()[:12]
    folder = cache_dir / f"{height}x{width}"
    images_path, levels_path = folder / f"pseudo-{key}-images.npy", folder / f"pseudo-{key}-levels.npy"
    if not images_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / f".pseudo-{key}.lock"):
            if not images_path.exists():

                def load(img: str) -> tuple[np.ndarray, np.ndarray]:
                    levels = resize_proba(pseudo.levels(img).astype(np.float32) / 255, height, width)
                    image = resize_image(data.load_image(img, "test"), height, width)
                    return image, np.rint(np.clip(levels, 0, 1) * 255).astype(np.uint8)

                _build(
                    pseudo.ids, height, width, load, images_path, levels_path, f"{pseudo.cfg.name} fold {pseudo.fold}"
                )
    return np.load(images_path, mmap_mode="r"), np.load(levels_path, mmap_mode="r")


def _build(
    ids: list[str],
    height: int,
    width: int,
    load_pair: Callable[[str], tuple[np.ndarray, np.ndarray | None]],
    images_path: Path,
    masks_path: Path | None,
    desc: str,
) -> None:
    """Fill the images (and masks) files with `load_pair(img)` of every id, at (height, width), then land them."""
    tmp_images = temp_path(images_path)  # host, pid and uuid: unique even when hosts share the folder
    tmp_masks = temp_path(masks_path) if masks_path else None
    images = open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=(len(ids), height, width, 3))
    masks = open_memmap(tmp_masks, mode="w+", dtype=np.uint8, shape=(len(ids), height, width)) if tmp_masks else None

    def load(index: int) -> None:
        images[index], mask = load_pair(ids[index])
        if masks is not None:
            masks[index] = mask

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(
            progress_bar(
                pool.map(load, range(len(ids))),
                total=len(ids),
                unit="img",
                leave=False,
                desc=f"caching {desc} at {height}x{width}",
            )
        )
    # Masks land first: a cache whose images file exists is complete (cached_split checks both).
    if masks is not None:
        assert tmp_masks is not None and masks_path is not None
        masks.flush()
        os.replace(tmp_masks, masks_path)
    images.flush()
    os.replace(tmp_images, images_path)
