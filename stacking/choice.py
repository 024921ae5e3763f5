"""Which entry to submit, and which second one: decisions that the noise of the OOF scores cannot fool.

The leaderboard ranks entries by honest OOF mean Dice, but near 0.997 the gaps between entries are often
smaller than the spread from which cars happen to be in the train set. So the best entry is chosen only
when its gain over each simpler candidate, (a) the best member and (b) the plain mean of the members (the
`mean` blend), is clear of that noise: the paired car-bootstrap 95% interval of (best entry - candidate)
lies above 0 (`stacking.uncertainty`, the same resamples for every comparison). Otherwise the simplest
candidate the best entry does not clearly beat is chosen, best member first: an entry that wins by noise
loses nothing by being replaced with a simpler one, and a simpler one has fewer ways to fail on new cars.

Kaggle lets a team pick two final submissions. The second is the simplest entry, other than the chosen one,
within the noise of the best entry (its gain interval relative to the best contains 0; the best entry itself
qualifies), simplest by `KIND_ORDER`, then by higher OOF score; when no other entry is within the noise, the
runner-up by honest OOF.

`workbench stack` marks the choice in the leaderboard (`mark_choice`: the `choice` and `choice_reason`
columns), and `workbench submit` reads it back (`chosen_row`), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stacking.leaderboard import CHOICE_COLUMNS, EntryScore
from stacking.uncertainty import Gain, paired_gains

__all__ = ["KIND_ORDER", "PLAIN_MEAN", "Choice", "choose", "chosen_row", "mark_choice"]

# Simplest first: one model; a fixed or lightly fitted rule over members; the tuned blend (weights and
# thresholds); a learned level-2 model; the mean of learned entries; an extra step on top of the best entry.
# Kinds not listed (a future kind) count as the most complex.
KIND_ORDER = ("member", "blend", "tuned", "stacker", "cnn", "ensemble", "postprocess")
PLAIN_MEAN = "mean"  # the `mean` blend (stacking.blenders.MeanBlender): the plain mean of the members' maps
CHOICE, REASON = CHOICE_COLUMNS  # the leaderboard's columns: which submission, and why
CHOSEN, SECOND = "chosen", "second"  # the values of its CHOICE column


@dataclass(frozen=True)
class Choice:
    """The entry to submit and the second submission (None when there is one entry), each with its reason."""

    entry: str
    reason: str  # what follows "chosen: <entry> " in the summary
    second: str | None
    second_reason: str

    def lines(self) -> list[str]:
        """The two summary lines `workbench stack` prints."""
        return [
            f"chosen: {self.entry} {self.reason}",
            f"second submission: {self.second or 'none'} {self.second_reason}",
        ]


def choose(scores: Sequence[EntryScore]) -> Choice:
    """The choice among `scores` (every entry scored on the same train images and folds); see the module."""
    if not scores:
        raise ValueError("choose() needs at least one scored entry")
    best = max(scores, key=lambda s: s.oof_mean_dice)  # the first of equals, as the leaderboard's order
    per_image = {s.entry: s.oof_per_image for s in scores}
    fold_of = best.folds.fold_of
    entry, reason = _first(scores, best, per_image, fold_of)
    if len(scores) == 1:
        return Choice(entry, reason, None, f"({entry} is the only entry)")
    second, second_reason = _second(scores, best, entry, paired_gains(per_image, best.entry, fold_of))
    return Choice(entry, reason, second, second_reason)


def _first(
    scores: Sequence[EntryScore], best: EntryScore, per_image: dict[str, dict[str, float]], fold_of: dict[str, int]
) -> tuple[str, str]:
    """The chosen entry and its reason: the simplest candidate that `best` does not clearly beat, else `best`."""
    members = [s for s in scores if s.kind == "member"]
    best_member = max(members, key=lambda s: s.oof_mean_dice) if members else None
    plain_mean = next((s for s in scores if s.entry == PLAIN_MEAN and s.kind == "blend"), None)
    simpler: list[tuple[EntryScore, str]] = []  # the candidates simpler than `best`, simplest first
    role = "the best entry by honest OOF"
    for candidate, candidate_role in ((best_member, "the best member"), (plain_mean, "the plain mean")):
        if candidate is best:
            role = f"{candidate_role}, and the best entry by honest OOF"
            break
        if candidate is not None:
            simpler.append((candidate, candidate_role))
    beaten = []
    for candidate, candidate_role in simpler:
        # Only these two entries: the resamples depend on the cars and the seed alone, so every comparison
        # (and the leaderboard's gain columns) uses the same ones.
        pair = {candidate.entry: per_image[candidate.entry], best.entry: per_image[best.entry]}
        gain = paired_gains(pair, candidate.entry, fold_of)[best.entry]  # best minus candidate
        if gain.lo <= 0:
            return candidate.entry, (
                f"({candidate_role}): {best.entry}'s gain {gain.gain:+.6f} is within the noise "
                f"(95% car bootstrap {gain.lo:+.6f} to {gain.hi:+.6f})"
            )
        beaten.append(f"{candidate.entry} ({candidate_role}) by {_interval(gain)}")
    reason = f"({role}, mean Dice {best.oof_mean_dice:.6f})"
    return best.entry, reason + (f": clear of the noise over {' and '.join(beaten)}" if beaten else "")


def _second(scores: Sequence[EntryScore], best: EntryScore, chosen: str, vs_best: dict[str, Gain]) -> tuple[str, str]:
    """The second submission and its reason: the simplest other entry within the noise of `best`."""
    others = [s for s in scores if s.entry != chosen]
    within = [s for s in others if vs_best[s.entry].lo <= 0 <= vs_best[s.entry].hi]
    if not within:
        runner_up = max(others, key=lambda s: s.oof_mean_dice)
        return runner_up.entry, (
            f"(the runner-up by honest OOF mean Dice {runner_up.oof_mean_dice:.6f}; "
            f"no other entry is within the noise of {best.entry})"
        )
    simplest = min(within, key=lambda s: (_simplicity(s.kind), -s.oof_mean_dice))
    if simplest is best:
        return best.entry, f"(the best entry by honest OOF mean Dice {best.oof_mean_dice:.6f})"
    gain = vs_best[simplest.entry]
    return simplest.entry, (
        f"(the simplest other entry within the noise of {best.entry}: {gain.gain:+.6f} against it, "
        f"95% car bootstrap {gain.lo:+.6f} to {gain.hi:+.6f})"
    )


def _simplicity(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _interval(gain: Gain) -> str:
    return f"{gain.gain:+.6f} (95% car bootstrap {gain.lo:+.6f} to {gain.hi:+.6f})"


def mark_choice(scores: Sequence[EntryScore], choice: Choice) -> None:
    """Record `choice` in the leaderboard rows of `scores` (`choice`, `choice_reason`) for `workbench submit`."""
    for score in scores:
        for column in CHOICE_COLUMNS:  # a choice made before this one
            score.extra.pop(column, None)
        if score.entry == choice.entry:
            score.extra.update({CHOICE: CHOSEN, REASON: choice.reason})
        elif score.entry == choice.second:
            score.extra.update({CHOICE: SECOND, REASON: choice.second_reason})


def chosen_row(rows: Sequence[dict[str, str]]) -> dict[str, str]:
    """The leaderboard row `workbench stack` chose; without a recorded choice (a leaderboard of members that
    `fold-train` wrote, where the rule's choice is the best member) the first row, which `write_leaderboard`
    makes the best by honest OOF."""
    if not rows:
        raise ValueError("chosen_row() needs at least one leaderboard row")
    return next((r for r in rows if r.get(CHOICE) == CHOSEN), rows[0])
