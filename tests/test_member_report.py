"""The member report: a member that collapses in one fold is reported (warning line and members.md), the
error correlation and leave-one-out effect follow their definitions."""
from __future__ import annotations

import numpy as np
import pytest

from stacking.blenders import SelectedBlend
from stacking.maps import TrainMaps
from stacking.member_report import collapsed_folds, error_correlation, leave_one_out
from stacking.robust import batch_dice
from tests.test_selection import noisy_members
from workbench.report import report_members


def leaderboard_rows(maps: np.ndarray, truth: np.ndarray, fold: np.ndarray) -> list[dict]:
    rows = []
    for m in range(maps.shape[1]):
        dice = batch_dice(maps[:, m] / 255, truth)
        rows.append({"entry": f"m{m}", "kind": "member", "oof_mean_dice": f"{dice.mean():.6f}",
                     **{f"fold{k}": f"{dice[fold == k].mean():.6f}" for k in range(3)}})
    return rows


def test_a_member_that_collapses_in_one_fold_is_reported(tmp_path, capsys):
    maps, truth, fold = noisy_members(2, n_images=24, broken_fold=2)
    report = report_members(tmp_path, leaderboard_rows(maps, truth, fold), TrainMaps.from_arrays(maps, truth,
                                                                                                  fold=fold))
    out = capsys.readouterr().out
    assert "WARNING: member m0 collapsed in fold 2" in out
    assert out.count("WARNING") == 1
    text = report.read_text()
    assert "WARNING: m0 collapsed in fold 2" in text and text.count("(collapsed)") == 1


def test_no_warning_without_a_collapse():
    assert collapsed_folds({"a": [0.95, 0.94, 0.96], "b": [0.90, 0.88, 0.91]}) == []
    assert collapsed_folds({"a": [0.95, 0.68, 0.96]}) == [("a", 1)]


def test_collapse_is_a_ratio_of_errors_at_any_accuracy():
    """At 0.997 a fold model at 0.983 has failed though it is only 0.011 below its siblings (3x their errors);
    a weak member's fold 0.03 lower is noise (1.2x); near-perfect siblings do not make a 0.0005 drop a collapse."""
    failed = [0.996400, 0.994228, 0.982931, 0.995750, 0.995632]  # bench.regime's failed-fold member
    healthy = [0.996884, 0.994239, 0.995636, 0.995587, 0.996115]  # its best member: 1.31x at most
    assert collapsed_folds({"failed": failed, "healthy": healthy}) == [("failed", 2)]
    assert collapsed_folds({"weak": [0.80, 0.77, 0.81]}) == []
    assert collapsed_folds({"perfect": [1.0, 0.9995, 1.0]}) == []
    assert collapsed_folds({"one fold": [0.9]}) == []


def test_error_correlation_and_leave_one_out():
    maps, truth, fold = noisy_members(4)
    maps[:, 3] = maps[:, 0]  # a copy errs exactly where its original does
    train = TrainMaps.from_arrays(maps, truth, fold=fold)
    corr = error_correlation(train)
    errors = ((maps >= 128) != truth[:, None]).transpose(1, 0, 2, 3).reshape(4, -1)
    assert corr == pytest.approx(np.corrcoef(errors), abs=1e-5)
    assert corr[0, 3] == pytest.approx(1)
    weights = SelectedBlend().fit(train).weights_
    effect = leave_one_out(train.evaluator(), weights)
    view = train.evaluator()
    for m in np.flatnonzero(weights):
        rest = weights.copy()
        rest[m] = 0
        without = view.score(0.5, rest / rest.sum()) if rest.sum() else view.score(0.5, weights)
        expected = view.score(0.5, weights) - without
        assert effect[m] == pytest.approx(expected)
    assert np.all(effect[weights == 0] == 0)
