"""Members at Carvana's real accuracy, for the benches: probability maps made from the truth with the errors
real Carvana models make, calibrated to the published spread (single members 0.9960-0.9972 honest OOF mean
Dice at 1918x1280; a plain mean of comparable members +0.0001 to +0.0004 over the best one).

A member's map of a photo is a logistic of the signed distance to the true boundary, `d` (px, + inside),
shifted by the member's errors and softened by its `softness`:

    p = sigmoid((d + bias + offset * field + fold_noise * fold_field) / softness)

- `field` mixes a smooth offset field that every member of the set shares (the photo's hard stretches of
  boundary: a shadow, a reflection; `shared` of its variance) with the member's own smooth field;
- thin parts narrower than `thin` px (antennas, mirror stalks, spokes) are missed: their logit's sign is
  flipped, so the member is as sure they are background as it would have been of them (no tell-tale level);
- where a pale roof meets the white studio wall, up to two soft blobs per photo (their places shared by all
  members, their depth mixed from a shared and an own draw as the field is) move the boundary by pixels;
- each fold model adds its own smooth field (`fold_noise`): an OOF map is one fold model's map, a test map
  the mean of all folds' maps, so test maps are better than OOF maps, as fold averages are;
- `twin` makes two members share their own field too (a correlated pair);
- `weak_fold` makes one fold model fail (a much larger fold field), `weak_angles` makes the member poor on
  those angles (a larger offset there).

Every random draw is seeded by the names involved (photo, member, fold), so a map is the same whichever
process makes it and in whatever order.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from carvana.dataset import angle_of, read_rle_csv
from carvana.rle import rle_decode

FIELD_GRID = (8, 12)  # (rows, cols) of the random grid a smooth field is interpolated from
ROOF_BLOBS = (0, 3)  # blobs per photo: from, to (exclusive)
BAND = 64  # px from the true boundary where members may be unsure (every shift here stays well inside)


@dataclass(frozen=True)
class Style:
    """How one synthetic member errs (lengths in px at 1918x1280). The defaults are the calibrated member,
    read against `bench.calibrate`: on three sets of 6 studio cars (seeds 0, 3, 7),
    `bench.regime`'s five comparable members (this one, a bias of 0.2 px, offsets 7% larger or smaller, a
    softer map, thin parts up to 9 px) score 0.9959-0.9966, 0.9965-0.9971 and 0.9969-0.9973 honest OOF mean
    Dice, their plain mean +0.00025, +0.00024 and +0.00029 over the best one (the published spreads: members
    0.9960-0.9972, a plain mean +0.0001 to +0.0004), their fold-mean test maps +0.0004 to +0.0005 over their
    OOF maps. Cars decide as much as styles do: one member's score moves 0.0008 between the sets."""

    name: str
    softness: float = 0.8  # logistic scale across the boundary
    offset: float = 1.5  # amplitude of the smooth boundary offset field
    shared: float = 0.94  # share of the offset field's variance common to every member of the set
    bias: float = 0.0  # mean boundary offset (+ grows the car)
    thin: int = 7  # thin parts narrower than this are missed (0: none)
    roof: float = 3.0  # depth of the roof blobs' boundary shift
    fold_noise: float = 0.8  # amplitude of each fold model's own field
    weak_fold: int | None = None  # this fold's model fails (fold field x WEAK)
    weak_angles: tuple[int, ...] = ()  # the member is poor on these angles (offset x WEAK)
    twin: str | None = None  # the member whose own field this one shares (the same network trained twice)


WEAK = 6.0


def _rng(*names: object) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256("/".join(map(str, names)).encode()).hexdigest()[:16], 16))


def smooth_field(shape: tuple[int, int], *names: object) -> np.ndarray:
    """(H, W) float32 smooth random field with standard deviation ~1, seeded by `names`."""
    grid = _rng("field", *names).standard_normal(FIELD_GRID).astype(np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def signed_distance(truth: np.ndarray) -> np.ndarray:
    """(H, W) float32 distance to the boundary in px: + inside the car, - outside."""
    inside = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((truth == 0).astype(np.uint8), cv2.DIST_L2, 5)
    return inside - outside


class Photo:
    """What every member's map of one photo shares: the truth's signed distance, the thin parts, the shared
    field and the roof blobs. Maps are computed on the band within BAND px of the true boundary only; beyond
    it every member is certain (0 or 255), since no error here moves the boundary that far."""

    def __init__(self, img: str, truth: np.ndarray) -> None:
        self.img, self.shape, self.truth = img, truth.shape, truth
        distance = signed_distance(truth)
        self.band = np.flatnonzero(np.abs(distance) < BAND)
        self.distance = distance.reshape(-1)[self.band]
        self.certain = np.where(distance > 0, 255, 0).astype(np.uint8)
        self.shared_field = self.field(img)
        self.thin_parts: dict[int, np.ndarray] = {}
        rng = _rng("roof", img)
        on_boundary = self.band[np.abs(self.distance) <= 1]  # the pixels either side of it: |d| is 1 there
        self.bumps = []
        if len(on_boundary):
            ys, xs = np.unravel_index(on_boundary, self.shape)
            top = np.argsort(ys)[: max(1, len(ys) // 5)]  # the upper fifth of the boundary: roof and glass
            band_y, band_x = np.unravel_index(self.band, self.shape)
            for _ in range(int(rng.integers(*ROOF_BLOBS))):
                i = top[int(rng.integers(len(top)))]
                radius = float(rng.uniform(25, 70))
                squared = (band_y - ys[i]) ** 2 + (band_x - xs[i]) ** 2
                self.bumps.append(np.exp(-squared / (2 * radius**2)).astype(np.float32))

    def field(self, *names: object) -> np.ndarray:
        """`smooth_field` on the band."""
        return smooth_field(self.shape, *names).reshape(-1)[self.band]

    def thin(self, width: int) -> np.ndarray:
        """Bool, on the band: the car's parts narrower than `width` px."""
        if width not in self.thin_parts:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width))
            opened = cv2.morphologyEx(self.truth.astype(np.uint8), cv2.MORPH_OPEN, kernel)
            self.thin_parts[width] = ((self.truth > 0) & (opened == 0)).reshape(-1)[self.band]
        return self.thin_parts[width]

    def roof_field(self, member: str, shared: float) -> np.ndarray:
        """The member's boundary shift in the roof blobs, on the band (px per unit of `Style.roof`; `shared` of
        its variance common to every member)."""
        field = np.zeros(len(self.band), np.float32)
        common, own = _rng("roof-depth", self.img), _rng("roof-depth", self.img, member)
        for bump in self.bumps:
            field += float(np.sqrt(shared) * common.normal() + np.sqrt(1 - shared) * own.normal()) * bump
        return field

    def full_map(self, band_levels: np.ndarray) -> np.ndarray:
        """(H, W) uint8 map: `band_levels` on the band, certainty beyond it."""
        levels = self.certain.copy()
        levels.reshape(-1)[self.band] = band_levels
        return levels


def member_logit(photo: Photo, style: Style, fold: int) -> np.ndarray:
    """Fold model `fold`'s logit of the member on the photo's band, in px (before the division by softness)."""
    own = photo.field(photo.img, style.twin or style.name)
    field = np.sqrt(style.shared) * photo.shared_field + np.sqrt(1 - style.shared) * own
    offset = style.offset * (WEAK if angle_of(photo.img) in style.weak_angles else 1.0)
    noise = style.fold_noise * (WEAK if fold == style.weak_fold else 1.0)
    z = photo.distance + style.bias + offset * field + noise * photo.field(photo.img, style.name, fold)
    if style.roof:
        z += style.roof * photo.roof_field(style.name, style.shared)
    if style.thin:
        thin = photo.thin(style.thin)
        z[thin] = -np.abs(z[thin])  # missed: as sure it is background as it would be sure of the part
    return z


def _probability(logit: np.ndarray, softness: float) -> np.ndarray:
    return 1 / (1 + np.exp(np.clip(-logit / softness, -80, 80)))


def oof_map(photo: Photo, style: Style, fold: int) -> np.ndarray:
    """The member's (H, W) uint8 map of a train photo by the model of its fold (which never saw it)."""
    return photo.full_map(np.rint(255 * _probability(member_logit(photo, style, fold), style.softness)))


def fold_mean_map(photo: Photo, style: Style, n_folds: int) -> np.ndarray:
    """The member's (H, W) uint8 map of a test photo: the mean of its fold models' probabilities."""
    total = sum(_probability(member_logit(photo, style, fold), style.softness) for fold in range(n_folds))
    return photo.full_map(np.rint(255 * total / n_folds))


def write_members(run_dir: Path, data: Path, styles: list[Style], *, tag: str) -> None:
    """Every style's OOF maps (each by the fold model that never saw its car) and fold-mean test maps into
    RUN/oof at the data's size; a member already complete for the same spec is kept. Photos are the outer
    loop, so each truth's distance transform is computed once for all members."""
    from folds import read_folds
    from oof import Store

    folds = read_folds(run_dir / "folds.csv")
    store = Store(run_dir / "oof")
    rles, test_rles = read_rle_csv(data / "train_masks.csv"), read_rle_csv(data / "test_masks.csv")
    todo = [s for s in styles if not _complete(store, s, tag, len(rles), len(test_rles))]
    if not todo:
        return
    shape = rle_shape(data)
    with contextlib.ExitStack() as stack:
        writers = {
            s.name: stack.enter_context(store.open_member(s.name, _spec(s, tag), folds.hash, shape, reset=True))
            for s in todo
        }
        for img, fold in sorted(folds.fold_of.items()):
            photo = Photo(img, rle_decode(rles[img], shape))
            for s in todo:
                writers[s.name].write("train", img, oof_map(photo, s, fold), fold=fold)
        for img in sorted(test_rles):
            photo = Photo(img, rle_decode(test_rles[img], shape))
            for s in todo:
                writers[s.name].write("test", img, fold_mean_map(photo, s, folds.n_folds))


def _spec(style: Style, tag: str) -> dict:
    return {"name": style.name, "bench": tag, "style": repr(style)}


def _complete(store: Any, style: Style, tag: str, n_train: int, n_test: int) -> bool:
    if not store.path.is_dir() or style.name not in store.members():
        return False
    same = store.metadata(style.name)["spec"] == _spec(style, tag)
    return same and (len(store.ids(style.name, "train")), len(store.ids(style.name, "test"))) == (n_train, n_test)


def rle_shape(data: Path) -> tuple[int, int]:
    """(H, W) of the data's photos (the first train photo's header)."""
    with Image.open(min((data / "train").iterdir())) as photo:
        width, height = photo.size
    return height, width
