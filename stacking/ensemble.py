"""The mean of the learned entries: a third level that learns nothing.

The learned entries (blends with fitted weights, pixel stackers, the tuned blend, the CNN stacker) err
in different places: a pixel stacker fixes the band a blend gets wrong, a blend is steadier where a
stacker overfits its sample. Their equal average, pixel by pixel, is written as the entry
`ENTRIES_MEAN` from the entries' stored OOF and test maps, image by image. It fits nothing, so its OOF
maps stay honest: each entry's OOF map of fold k came from fits without fold k. The list is fixed (every
learned entry of the run, `is_learned`), never chosen on the OOF images. On the five datasets of the
robustness bench it scored at or above the best single entry on honest OOF on every dataset
(bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oof import Store
from stacking.crossfit import MapWriter, TestClock, write_each_map

ENTRIES_MEAN = "entries_mean"
FIXED_KINDS = ("member", "postprocess", "ensemble")  # kinds that are not fitted on the truth themselves


def is_learned(entry: str, kind: str) -> bool:
    """Whether a leaderboard entry was fitted on the truth: every kind but members, post-processing, this
    module's mean and the fixed blends (mean, logit_mean, vote)."""
    from stacking.blenders import BLENDERS

    if kind == "blend":
        return BLENDERS[entry].learned
    return kind not in FIXED_KINDS


def entries_mean_spec(store: Store, entries: Sequence[str]) -> dict:
    """What the mean's maps depend on: the exact maps of each averaged entry."""
    return {
        "entry": ENTRIES_MEAN,
        "of": list(entries),
        "source_generations": [store.metadata(e)["generation"] for e in entries],
    }


def write_entries_mean(store: Store, entries: Sequence[str], writer: MapWriter, clock: TestClock | None = None) -> None:
    """Write the mean of `entries`' maps in `store`: every OOF map (to its fold), then every test map."""
    if len(entries) < 2:
        raise ValueError(f"the mean of entries needs at least 2 entries, got {list(entries)}")
    write_each_map(store, entries[0], writer, lambda split, img: mean_map(store, entries, split, img), clock)


def mean_map(store: Store, entries: Sequence[str], split: str, img: str) -> np.ndarray:
    """(H, W) uint8 mean of the entries' stored levels of `img`, rounded half to even: level >= 128 (car) exactly
    where the entries' mean probability is >= 0.5."""
    total = np.zeros(store.resolution(entries[0]), dtype=np.int32)
    for entry in entries:
        total += store.read(entry, split, img)
    return np.rint(total / len(entries)).astype(np.uint8)
