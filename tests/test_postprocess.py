"""Post-processing operations on a map, and the rule that keeps one only when it beats the best entry on OOF."""
from __future__ import annotations

import numpy as np

from stacking.postprocess import drop_blobs, fill_holes, largest_component, postprocess_map


def car_with_artefacts() -> np.ndarray:
    """(64, 96) uint8 map: a car box with a pinhole and a large enclosed gap, a near fragment, a far blob."""
    proba = np.full((64, 96), 10, np.uint8)
    proba[10:50, 10:70] = 240
    proba[20, 30] = 60  # a pinhole in the body
    proba[30:45, 20:40] = 20  # a large enclosed gap (like the gap between the wheels)
    proba[10:14, 71:74] = 200  # a fragment touching-distance from the car
    proba[56:59, 88:91] = 220  # a small blob far away on the floor
    return proba


def test_largest_component_keeps_the_car_only():
    car = largest_component(car_with_artefacts() >= 128)
    assert car[30, 15] and not car[57, 89] and not car[12, 72]


def test_fill_holes_fills_pinholes_and_spares_large_gaps():
    car = fill_holes(car_with_artefacts() >= 128)
    assert car[20, 30] and not car[35, 30]


def test_drop_blobs_drops_far_small_blobs_and_keeps_near_fragments():
    car = drop_blobs(car_with_artefacts() >= 128)
    assert not car[57, 89] and car[12, 72] and car[30, 15]


def test_postprocessed_map_keeps_the_levels_it_does_not_flip():
    proba = car_with_artefacts()
    out = postprocess_map(proba, "largest")
    changed = out != proba
    assert np.all(out[changed] == 127) and np.array_equal(out >= 128, largest_component(proba >= 128))
    filled = postprocess_map(proba, "fill_holes")
    assert filled[20, 30] == 128 and filled[35, 30] == 20
