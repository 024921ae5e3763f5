"""The submission choice (`stacking.choice`): the best entry only when its gain over the best member and the
plain mean is clear of the car-bootstrap noise, else the simplest of them; a second, different submission; and
the choice read back from the leaderboard as `workbench submit` does. Scores are made by hand, no training."""

from __future__ import annotations

import numpy as np
import pytest

from folds import Folds
from stacking.choice import KIND_ORDER, PLAIN_MEAN, Choice, choose, chosen_row, mark_choice
from stacking.leaderboard import EntryScore, add_gains, read_leaderboard, write_leaderboard
from stacking.uncertainty import paired_gains

N_CARS, N_ANGLES, N_FOLDS = 40, 4, 4
CARS = [f"{i:012x}" for i in range(0xA00, 0xA00 + N_CARS)]
IMAGES = [f"{car}_{angle:02d}" for car in CARS for angle in range(1, N_ANGLES + 1)]
FOLDS = Folds({img: CARS.index(img[:12]) % N_FOLDS for img in IMAGES}, N_FOLDS, "hash")
RNG_SEED = 7


def base() -> np.ndarray:
    """The best member's per-image Dice: around 0.99, some cars harder than others."""
    rng = np.random.default_rng(RNG_SEED)
    return 0.99 + np.repeat(rng.normal(0, 0.003, N_CARS), N_ANGLES) + rng.normal(0, 0.001, len(IMAGES))


def shifted(gain: float, car_noise: float, seed: int) -> np.ndarray:
    """The best member's scores plus `gain` and a per-car noise of spread `car_noise` (mean 0 over the cars)."""
    noise = np.random.default_rng(seed).normal(0, car_noise, N_CARS)
    return base() + gain + np.repeat(noise - noise.mean(), N_ANGLES)


def entry(name: str, kind: str, dice: np.ndarray) -> EntryScore:
    return EntryScore(name, kind, 0.5, dict(zip(IMAGES, map(float, dice))), FOLDS)


def run_of(tuned_gain: float, tuned_noise: float, mean_gain: float = 0.0, mean_noise: float = 0.002) -> list:
    """Two members (a the best), the plain mean, a vote blend and the tuned blend, in leaderboard-like order."""
    return [
        entry("a", "member", base()),
        entry("b", "member", base() - 0.004),
        entry(PLAIN_MEAN, "blend", shifted(mean_gain, mean_noise, 1)),
        entry("vote", "blend", shifted(-0.0001, 0.002, 2)),
        entry("tuned", "tuned", shifted(tuned_gain, tuned_noise, 3)),
    ]


def gain(scores: list[EntryScore], entry: str, baseline: str):
    """`entry`'s gain over `baseline`, by the one bootstrap."""
    per_image = {s.entry: s.oof_per_image for s in scores}
    return paired_gains(per_image, baseline, FOLDS.fold_of)[entry]


def test_a_gain_within_the_noise_chooses_the_best_member():
    """tuned is the best entry by a hair (+0.0001) with a per-car noise ten times that: the best member is
    chosen, and the line names tuned's gain and its interval (the leaderboard's gain columns agree)."""
    scores = run_of(tuned_gain=0.0001, tuned_noise=0.002)
    assert max(scores, key=lambda s: s.oof_mean_dice).entry == "tuned"
    choice = choose(scores)
    g = gain(scores, "tuned", "a")
    assert g.lo < 0 < g.hi
    assert choice.entry == "a"
    assert choice.lines()[0] == (
        f"chosen: a (the best member): tuned's gain {g.gain:+.6f} is within the noise "
        f"(95% car bootstrap {g.lo:+.6f} to {g.hi:+.6f})"
    )
    add_gains(scores)
    tuned = next(s for s in scores if s.entry == "tuned").extra
    assert f"{float(tuned['gain_lo']):+.6f} to {float(tuned['gain_hi']):+.6f}" in choice.reason


def test_a_clear_gain_chooses_the_best_entry():
    """tuned gains +0.002 on every car (a little noise): clear of the noise over the best member and the
    plain mean, so it is chosen, and the reason shows both intervals above 0."""
    scores = run_of(tuned_gain=0.002, tuned_noise=0.0001)
    choice = choose(scores)
    assert choice.entry == "tuned"
    for baseline in ("a", PLAIN_MEAN):
        g = gain(scores, "tuned", baseline)
        assert g.lo > 0 and f"{baseline} " in choice.reason and f"{g.lo:+.6f} to {g.hi:+.6f}" in choice.reason
    assert choice.reason.startswith("(the best entry by honest OOF, mean Dice ")
    assert "clear of the noise over a (the best member)" in choice.reason


def test_the_plain_mean_when_the_best_beats_the_member_but_not_the_mean():
    """tuned clearly beats the best member but is within the noise of the plain mean: the mean is chosen."""
    scores = run_of(tuned_gain=0.002, tuned_noise=0.0001, mean_gain=0.0019, mean_noise=0.002)
    assert gain(scores, "tuned", "a").lo > 0 and gain(scores, "tuned", PLAIN_MEAN).lo <= 0
    choice = choose(scores)
    assert choice.entry == PLAIN_MEAN
    assert choice.reason.startswith("(the plain mean): tuned's gain ")


def test_the_best_member_when_it_is_the_best_entry():
    scores = run_of(tuned_gain=-0.003, tuned_noise=0.0001, mean_gain=-0.002)
    choice = choose(scores)
    assert choice.entry == "a"
    assert (
        choice.reason == f"(the best member, and the best entry by honest OOF, mean Dice {scores[0].oof_mean_dice:.6f})"
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"tuned_gain": 0.0001, "tuned_noise": 0.002},
        {"tuned_gain": 0.002, "tuned_noise": 0.0001},
        {"tuned_gain": 0.002, "tuned_noise": 0.0001, "mean_gain": 0.0019},
        {"tuned_gain": -0.003, "tuned_noise": 0.0001, "mean_gain": -0.002},
    ],
)
def test_the_second_submission_is_the_simplest_other_entry_within_the_noise(settings):
    """Never the chosen entry; within the noise of the best entry (or the runner-up when nothing else is);
    no simpler entry within the noise is passed over."""
    scores = run_of(**settings)
    choice = choose(scores)
    best = max(scores, key=lambda s: s.oof_mean_dice)
    vs_best = {s.entry: gain(scores, s.entry, best.entry) for s in scores}
    within = [s for s in scores if s.entry != choice.entry and vs_best[s.entry].lo <= 0 <= vs_best[s.entry].hi]
    assert choice.second is not None and choice.second != choice.entry
    second = next(s for s in scores if s.entry == choice.second)
    if within:
        assert second in within
        rank = KIND_ORDER.index(second.kind)
        assert all(KIND_ORDER.index(s.kind) >= rank for s in within)
        assert all(s.oof_mean_dice <= second.oof_mean_dice for s in within if s.kind == second.kind)
    else:
        assert second is max((s for s in scores if s.entry != choice.entry), key=lambda s: s.oof_mean_dice)
        assert "the runner-up" in choice.second_reason


def test_noise_case_names_the_simplest_entry_within_the_noise_second():
    """a is chosen (tuned's gain is noise); b is clearly worse; the plain mean is within tuned's noise and
    simpler than tuned, so it is the second submission, with its gain relative to tuned."""
    scores = run_of(tuned_gain=0.0001, tuned_noise=0.002)
    choice = choose(scores)
    g = gain(scores, PLAIN_MEAN, "tuned")
    assert g.lo <= 0 <= g.hi and gain(scores, "b", "tuned").hi < 0
    assert (choice.entry, choice.second) == ("a", PLAIN_MEAN)
    assert choice.lines()[1] == (
        f"second submission: mean (the simplest other entry within the noise of tuned: {g.gain:+.6f} against it, "
        f"95% car bootstrap {g.lo:+.6f} to {g.hi:+.6f})"
    )


def test_one_entry_names_one_submission():
    choice = choose([entry("a", "member", base())])
    assert choice == Choice("a", choice.reason, None, "(a is the only entry)")
    assert choice.lines()[1] == "second submission: none (a is the only entry)"


def test_kinds_and_the_plain_mean_are_the_stacks_own():
    """Every kind `workbench stack` writes has a place in the order; PLAIN_MEAN is the mean blender's name."""
    from stacking.blenders import MeanBlender

    assert set(KIND_ORDER) == {"member", "blend", "tuned", "stacker", "cnn", "ensemble", "postprocess"}
    assert PLAIN_MEAN == MeanBlender.name


def test_the_leaderboard_records_the_choice_and_keeps_its_order(tmp_path):
    """`workbench stack` marks the choice; the rows stay in honest OOF order; `chosen_row` (what `workbench
    submit` takes by default) finds it; rows kept by `fold-train` lose it, and the top row is taken then."""
    scores = run_of(tuned_gain=0.0001, tuned_noise=0.002)
    choice = choose(scores)
    add_gains(scores)
    mark_choice(scores, choice)
    path = tmp_path / "leaderboard.csv"
    write_leaderboard(path, scores)
    rows = read_leaderboard(path)
    assert [r["entry"] for r in rows] == [s.entry for s in sorted(scores, key=lambda s: -s.oof_mean_dice)]
    assert rows[0]["entry"] == "tuned" and chosen_row(rows)["entry"] == choice.entry == "a"
    marked = {r["entry"]: (r["choice"], r["choice_reason"]) for r in rows if r["choice"]}
    assert marked == {"a": ("chosen", choice.reason), PLAIN_MEAN: ("second", choice.second_reason)}
    kept = write_leaderboard(path, [], keep=lambda row: row["kind"] == "member")
    assert all(not r.get("choice") for r in kept) and chosen_row(kept)["entry"] == "a"


def test_the_leaderboard_orders_by_the_exact_score_where_rounding_ties(tmp_path):
    """Two entries 1e-7 apart print the same six decimals; the leaderboard's top row is the one `choose`
    calls the best (the demo's summary names the top row), not whichever came first."""
    first, better = entry("first", "ensemble", base()), entry("better", "postprocess", base() + 1e-7)
    assert first.row()["oof_mean_dice"] == better.row()["oof_mean_dice"]
    rows = write_leaderboard(tmp_path / "leaderboard.csv", [first, better])
    assert [r["entry"] for r in rows] == ["better", "first"]
    assert max([first, better], key=lambda s: s.oof_mean_dice).entry == "better"
