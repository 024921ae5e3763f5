"""Ensemble selection (Caruana et al. 2004): greedy forward selection of members with replacement.

Start from the best single member on the fitting images; at each of `max_steps` steps add (again, if it is
already in) the member whose addition gives the highest exact mean per-image Dice of the count-weighted blend
(the fast evaluator, `stacking.evaluate`), even when no addition improves it: repeating a member is how its
weight grows past an equal share, so the path goes on and the best-scoring prefix is kept. The blend's
weights are the selection counts over their sum.

Against overfitting, the number of steps searched is chosen by inner car-grouped folds: for each fitting
fold j, select on the other fitting folds and score on fold j the best prefix within s steps, for every s;
the s with the best mean held-out score (the smallest on ties) caps the search on all fitting folds. The
kept prefix scores at least the path's first step, so the selected blend is never worse than the best
member on the folds it was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stacking.evaluate import FoldedEvaluator


@dataclass(frozen=True)
class SelectionPath:
    """The greedy path: counts (n_steps + 1, M) int64 after each step (row 0: the best single member), and
    the fitting score after each step (n_steps + 1,) float64."""

    counts: np.ndarray
    scores: np.ndarray

    def best_within(self, n_steps: int) -> int:
        """The step (0..n_steps) with the highest fitting score, the earliest on ties."""
        return int(np.argmax(self.scores[: n_steps + 1]))

    def weights(self, step: int) -> np.ndarray:
        """(M,) float64 weights summing to 1 after `step` additions."""
        return self.counts[step] / self.counts[step].sum()


def greedy_path(
    folded: FoldedEvaluator, folds: Sequence[int], threshold: float = 0.5, max_steps: int = 10
) -> SelectionPath:
    """Greedy forward selection with replacement on the images of `folds` (see the module docstring)."""
    n = folded.evaluators[folds[0]].n_members
    eye = np.eye(n, dtype=np.int64)
    singles = [folded.score(threshold, eye[m], folds) for m in range(n)]
    counts = [eye[int(np.argmax(singles))]]  # argmax: the first of equal members
    scores = [max(singles)]
    for _ in range(max_steps):
        candidates = [counts[-1] + eye[m] for m in range(n)]
        trial = [folded.score(threshold, c, folds) for c in candidates]
        best = int(np.argmax(trial))
        counts.append(candidates[best])
        scores.append(trial[best])
    return SelectionPath(np.stack(counts), np.array(scores))


def inner_n_steps(
    folded: FoldedEvaluator, folds: Sequence[int], threshold: float = 0.5, max_steps: int = 10
) -> tuple[int, np.ndarray]:
    """The search length s whose best-within-s prefix has the best mean held-out score over inner folds (each
    fitting fold held out once), and those mean scores (max_steps + 1,); (max_steps, empty) with < 2 folds."""
    if len(folds) < 2:
        return max_steps, np.empty(0)
    held = np.zeros(max_steps + 1)
    for j in folds:
        path = greedy_path(folded, [k for k in folds if k != j], threshold, max_steps)
        held += [folded.score(threshold, path.counts[path.best_within(s)], [j]) for s in range(max_steps + 1)]
    held /= len(folds)
    return int(np.argmax(held)), held  # argmax: the shortest of equal prefixes


def select(
    folded: FoldedEvaluator, folds: Sequence[int], threshold: float = 0.5, max_steps: int = 10, inner: bool = True
) -> tuple[np.ndarray, SelectionPath, int]:
    """(weights (M,) float64, the path on all `folds`, the step kept) of ensemble selection."""
    n_steps = inner_n_steps(folded, folds, threshold, max_steps)[0] if inner else max_steps
    path = greedy_path(folded, folds, threshold, n_steps)
    step = path.best_within(n_steps)
    return path.weights(step), path, step
