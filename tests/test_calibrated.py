"""bench.calibrated, the regime bench's members at Carvana's accuracy: the generator's errors exist where its
docstring puts them."""

import numpy as np

from bench.calibrated import Photo, Style, oof_map


def car_truth(height: int = 160, width: int = 240) -> np.ndarray:
    """A car-like blob: an ellipse body with a 3 px antenna on the roof."""
    yy, xx = np.mgrid[:height, :width]
    body = ((yy - 100) / 45) ** 2 + ((xx - 120) / 90) ** 2 <= 1
    antenna = (yy >= 30) & (yy < 56) & (xx >= 150) & (xx < 153)
    return (body | antenna).astype(np.uint8)


def test_roof_blobs_sit_on_the_upper_boundary_of_some_photos():
    """Up to two blobs per photo (0, 1 or 2, seeded by the photo): over 12 photos some have blobs, and each
    blob peaks on the boundary's upper fifth (before the fix no pixel was `on the boundary` and none had any)."""
    truth = car_truth()
    counts = []
    for k in range(12):
        photo = Photo(f"{k:012d}_01", truth)
        counts.append(len(photo.bumps))
        ys = np.unravel_index(photo.band, truth.shape)[0]
        for bump in photo.bumps:
            assert ys[int(np.argmax(bump))] < 100  # the top of the car (the body's centre row is 100)
    assert set(counts) <= {0, 1, 2} and sum(counts) > 0


def test_a_roof_blob_moves_the_members_boundary():
    truth = car_truth()
    photo = next(p for p in (Photo(f"{k:012d}_01", truth) for k in range(12)) if p.bumps)
    with_roof, without = oof_map(photo, Style("m", roof=5.0), 0), oof_map(photo, Style("m", roof=0.0), 0)
    moved = np.flatnonzero((with_roof >= 128) != (without >= 128))
    assert moved.size > 0
    weight = dict(zip(photo.band.tolist(), sum(photo.bumps).tolist()))
    assert all(weight.get(i, 0.0) > 1e-3 for i in moved.tolist())  # only where a blob is


def test_calibrate_scores_every_photo_and_a_perfect_member_at_one(tmp_path):
    """bench.calibrate's yardstick: each member's OOF and fold-mean maps and the plain mean are scored on every
    train photo; a member with no error is the truth (Dice 1), an erring one is not."""
    from bench.calibrate import measure
    from carvana.synth import generate

    generate(tmp_path, 2, 0, size=(240, 160), seed=0, progress=False)
    perfect = Style("perfect", softness=0.05, offset=0.0, thin=0, roof=0.0, fold_noise=0.0)
    scores = measure(tmp_path, [perfect, Style("m", offset=4.0)])
    assert set(scores) == {"perfect", "perfect test", "m", "m test", "mean"}
    assert all(len(values) == 32 for values in scores.values())
    assert min(scores["perfect"]) == min(scores["perfect test"]) == 1.0
    assert np.mean(scores["m"]) < 0.999
