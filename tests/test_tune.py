"""Optuna tuning: baseline first, resumable to an exact trial count, honest nesting by construction,
several processes on one study, and `workbench tune` end to end on a tiny run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from carvana.errors import WorkbenchError
from carvana.metric import dice
from oof.format import to_uint8
from stacking.evaluate import DiceEvaluator
from stacking.storage import open_storage
from stacking.tune import (
    WORKER,
    TunedParams,
    TuneSpace,
    build_folded_evaluator,
    tune_study,
)
from stacking.tuned import TunedBlend, blend_levels, blend_mask, blend_proba, nested_tune, tuned_map
from tests.conftest import TUNE_MEMBERS as MEMBERS
from tests.conftest import make_evaluator, make_images

REPO = Path(__file__).resolve().parents[1]
COMPLETE = optuna.trial.TrialState.COMPLETE
optuna.logging.set_verbosity(optuna.logging.WARNING)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def values(storage, name: str) -> list[float]:
    return [t.value for t in optuna.load_study(study_name=name, storage=storage).trials]


def test_folded_score_is_the_mean_over_the_union():
    folded = make_evaluator()
    images = make_images()
    union = DiceEvaluator.from_images(img for i, img in enumerate(images) if i % 3 in (0, 2))
    for threshold, weights in [(0.5, None), (np.linspace(0.3, 0.7, 16), [0.2, 0.5, 0.3])]:
        got = folded.per_image(threshold, weights, [0, 2])
        np.testing.assert_array_equal(np.sort(got), np.sort(union.per_image(threshold, weights)))
        assert folded.score(threshold, weights, [0, 2]) == pytest.approx(union.score(threshold, weights), abs=1e-15)


def test_space_decodes_offsets_clipped_and_weights_normalised():
    space = TuneSpace(threshold_range=(0.3, 0.6), max_offset=0.2)
    params = {"threshold": 0.55, "t01": 0.2, "t02": -0.2, **{f"t{a:02d}": 0.0 for a in range(3, 17)},
              "w_a": 0.0, "w_b": 1.0, "w_c": 3.0}
    threshold, weights = space.decode(params, MEMBERS)
    assert threshold[0] == 0.6 and threshold[1] == pytest.approx(0.35) and np.all(threshold[2:] == 0.55)
    np.testing.assert_allclose(weights, [0, 0.25, 0.75])
    zero = space.decode({**params, "w_b": 0.0, "w_c": 0.0}, MEMBERS)[1]
    np.testing.assert_allclose(zero, [1 / 3] * 3)  # all weights zero: the plain mean
    assert set(TuneSpace(per_angle=False).baseline(["only"])) == {"threshold"}  # one member: no weights
    with pytest.raises(ValueError):
        TuneSpace(threshold_range=(0.6, 0.8))  # the baseline 0.5 must lie inside


def test_tuned_blend_starts_from_the_weighted_blend_of_its_folds(tmp_path):
    """Trial 1 of a new study is the weighted blend fitted on the same folds (a warm start), so the tuned blend
    is never below it on its fitting folds; warm_start=False leaves the search to TPE."""
    from stacking.blenders import WeightedMeanBlender
    from stacking.maps import TrainMaps
    from stacking.tuned import TunedBlend

    folded, url = make_evaluator(), sqlite_url(tmp_path / "optuna.db")
    X = TrainMaps.from_evaluator(folded, MEMBERS).folds([0, 1])
    space = TuneSpace(per_angle=False)
    model = TunedBlend(storage=url, study="w", n_trials=4, space=space).fit(X)
    weighted = WeightedMeanBlender().fit(X)
    trials = optuna.load_study(study_name=model.study_, storage=url).trials
    assert model.study_ == "w-outer2" and len(trials) == 4 and trials[0].user_attrs["baseline"]
    assert trials[1].user_attrs["warm_start"] and trials[1].value == pytest.approx(weighted.score_, abs=1e-12)
    np.testing.assert_allclose(space.decode(trials[1].params, MEMBERS)[1], weighted.weights_)
    assert model.params_.value >= weighted.score_
    cold = TunedBlend(storage=url, study="c", n_trials=4, space=space, warm_start=False).fit(X)
    assert not any("warm_start" in t.user_attrs for t in optuna.load_study(study_name=cold.study_, storage=url).trials)


def test_baseline_first_and_resume_to_exact_count(tmp_path):
    folded, url = make_evaluator(), sqlite_url(tmp_path / "optuna.db")
    best = tune_study(folded, [0, 1, 2], MEMBERS, TuneSpace(), url, "s", n_trials=4, seed=0)
    study = optuna.load_study(study_name="s", storage=url)
    first = study.trials[0]
    assert first.params == TuneSpace().baseline(MEMBERS)
    assert first.value == folded.score(0.5, None, [0, 1, 2])
    assert best.n_trials == 4 and best.value == max(t.value for t in study.trials)
    assert best.members == tuple(MEMBERS) and best.threshold.shape == (16,) and best.weights.sum() == pytest.approx(1)
    before = [(t.params, t.value) for t in study.trials]

    tune_study(folded, [0, 1, 2], MEMBERS, TuneSpace(), url, "s", n_trials=4, seed=0)
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 4  # nothing added
    tune_study(folded, [0, 1, 2], MEMBERS, TuneSpace(), url, "s", n_trials=7, seed=0)
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == 7 and all(t.state == COMPLETE for t in trials)
    assert [(t.params, t.value) for t in trials[:4]] == before  # continued, nothing lost or redone


def test_journal_storage_resumes(tmp_path):
    folded, url = make_evaluator(), f"journal:{tmp_path / 'optuna.log'}"
    tune_study(folded, [0, 1], MEMBERS, TuneSpace(per_angle=False), url, "j", n_trials=3, seed=0)
    tune_study(folded, [0, 1], MEMBERS, TuneSpace(per_angle=False), url, "j", n_trials=3, seed=0)
    assert len(optuna.load_study(study_name="j", storage=open_storage(url)).trials) == 3


def test_reuse_with_other_settings_is_refused(tmp_path):
    folded, url = make_evaluator(), sqlite_url(tmp_path / "optuna.db")
    tune_study(folded, [0, 1, 2], MEMBERS, TuneSpace(), url, "s", 1, 0, context={"folds_hash": "x"})
    for change in [dict(members=["a", "b"]), dict(space=TuneSpace(per_angle=False)), dict(folds=[0, 1]),
                   dict(context={"folds_hash": "y"})]:
        kwargs = dict(members=MEMBERS, space=TuneSpace(), folds=[0, 1, 2], context={"folds_hash": "x"}) | change
        with pytest.raises(WorkbenchError, match="set `tune.study` to a new name"):
            tune_study(folded, storage=url, study_name="s", n_trials=2, seed=0, **kwargs)


def test_dead_workers_running_trial_is_failed_and_replaced(tmp_path):
    folded, url = make_evaluator(), sqlite_url(tmp_path / "optuna.db")
    tune_study(folded, [0, 1, 2], MEMBERS, TuneSpace(), url, "s", n_trials=2, seed=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study = optuna.load_study(study_name="s", storage=url)
    orphan = study.ask()  # a `workbench tune` killed mid-trial leaves this RUNNING
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{int(dead.stdout)}")
    tune_study(folded, [0, 1, 2], MEMBERS, TuneSpace(), url, "s", n_trials=4, seed=0)
    states = [t.state for t in optuna.load_study(study_name="s", storage=url).trials]
    assert states.count(COMPLETE) == 4 and states[orphan.number] == optuna.trial.TrialState.FAIL


def test_nested_outer_study_never_sees_its_fold():
    """Poison fold 0's truths: the outer-0 study must not change at all, every study that sees fold 0 must."""
    def blend(storage) -> TunedBlend:
        return TunedBlend(storage=storage, space=TuneSpace(), study="blend", n_trials=12, seed=3)

    clean_storage, poisoned_storage = optuna.storages.InMemoryStorage(), optuna.storages.InMemoryStorage()
    clean = nested_tune(make_evaluator(), blend(clean_storage), members=MEMBERS, n_folds=3)
    poisoned = nested_tune(make_evaluator(poison_fold=0), blend(poisoned_storage), members=MEMBERS, n_folds=3)
    assert values(clean_storage, "blend-outer0") == values(poisoned_storage, "blend-outer0")
    assert clean.outer[0].params == poisoned.outer[0].params
    for name in ["blend-outer1", "blend-outer2", "blend"]:
        assert values(clean_storage, name) != values(poisoned_storage, name)
    fold0 = [f"img{i:02d}" for i in range(0, 12, 3)]
    assert all(clean.honest_per_image[i] != poisoned.honest_per_image[i] for i in fold0)


def test_nested_result_is_consistent():
    folded, storage = make_evaluator(), optuna.storages.InMemoryStorage()
    blend = TunedBlend(storage=storage, space=TuneSpace(), study="blend", n_trials=8, seed=0)
    result = nested_tune(folded, blend, members=MEMBERS, n_folds=3)
    assert sorted(result.honest_per_image) == [f"img{i:02d}" for i in range(12)]
    for k, params in result.outer.items():
        expected = folded.per_image(params.threshold, params.weights, [k])
        np.testing.assert_array_equal([result.honest_per_image[i] for i in folded.ids[k]], expected)
        others = [f for f in range(3) if f != k]
        assert params.value == pytest.approx(folded.score(params.threshold, params.weights, others))
    assert result.honest_mean == pytest.approx(np.mean(list(result.honest_per_image.values())))
    assert result.tuned_on == result.params.value == max(values(storage, "blend"))
    assert result.baseline == folded.score(0.5, None, [0, 1, 2]) <= result.tuned_on


def test_blend_mask_follows_the_evaluator_rule():
    images = make_images(seed=5)
    evaluator = DiceEvaluator.from_images(images)
    rng = np.random.default_rng(1)
    for _ in range(5):
        params = TunedParams(rng.uniform(0.2, 0.8, 16), rng.dirichlet([1, 1, 1]), 0.0, 1)
        got = [dice(blend_mask(maps, angle, params), truth) for maps, truth, angle in images]
        np.testing.assert_array_equal(got, evaluator.per_image(params.threshold, params.weights))


def test_blend_levels_are_exact_int32_sums():
    """Two members at level 200 weighted 1:3: S = 200 x 2^16 in int32 whatever NumPy's promotion rules (NumPy
    1.26 multiplied a uint8 map by an int32 scalar of 16384 in uint16, where 200 x 16384 wraps to 0)."""
    params = TunedParams(np.full(16, 0.5), np.array([0.25, 0.75]), 0.0, 1, ("a", "b"))
    level_sum, total = blend_levels(np.full((2, 2, 3), 200, np.uint8), params)
    assert total == 2**16 and level_sum.dtype == np.int32
    np.testing.assert_array_equal(level_sum, np.full((2, 3), 200 * 2**16))
    assert blend_mask(np.full((2, 2, 3), 200, np.uint8), 1, params).all()


# (member m0, member m1) levels of one row of pixels; weighted 1:3 their blend p is (v0 + 3 v1) / 1020:
# 0, 0.25, 0.4, 0.5, 150/255, 0.6, 0.6, 0.75, 0.8, 1.
TUNED_PIXELS = [(0, 0), (255, 0), (102, 102), (0, 170), (150, 150), (153, 153), (0, 204), (0, 255), (204, 204),
                (255, 255)]


@pytest.mark.parametrize("angle, levels", [
    (1, [0, 64, 102, 128, 150, 153, 153, 191, 204, 255]),  # t = 0.5: the blend's own levels (p = 0.5 is car)
    (2, [0, 53, 85, 106, 125, 128, 128, 175, 191, 255]),  # t = 0.6: [0, t) onto [0, 0.5), [t, 1] onto [0.5, 1]
])
def test_tuned_map_levels(angle, levels):
    """The tuned entry's stored levels: the weighted blend remapped so that its angle's threshold lands on 0.5,
    car pixels pinned to >= 128/255 and background to <= 127/255 (p = t is car)."""
    threshold = np.full(16, 0.5)
    threshold[1] = 0.6  # angle 2
    params = TunedParams(threshold, np.array([0.25, 0.75]), 0.0, 1, ("m0", "m1"))
    maps = np.array(TUNED_PIXELS, dtype=np.uint8).T[:, None, :]  # (2, 1, 10)
    out = tuned_map(maps, angle, params)
    assert out.dtype == np.float32 and out.shape == (1, len(TUNED_PIXELS))
    np.testing.assert_array_equal(to_uint8(out, "tuned"), [levels])
    np.testing.assert_array_equal(out >= 0.5, blend_mask(maps, angle, params))
    tie = 3 if angle == 1 else 5  # p = t exactly: car, at the pinned 128/255
    assert out[0, tie] == np.float32(128 / 255)


def test_blend_proba_and_saved_params(tmp_path):
    maps = make_images(seed=2)[0][0]
    equal = TunedParams(np.full(16, 0.5), np.full(3, 1 / 3), 0.9, 4, tuple(MEMBERS), {"threshold": 0.5})
    np.testing.assert_allclose(blend_proba(maps, equal), maps.mean(axis=0) / 255, atol=1e-6)
    skewed = TunedParams(np.linspace(0.3, 0.7, 16), np.array([0.0, 0.25, 0.75]), 0.9, 4, tuple(MEMBERS), {})
    np.testing.assert_allclose(blend_proba(maps, skewed), (0.25 * maps[1] + 0.75 * maps[2]) / 255, atol=1e-6)
    back = TunedParams.from_dict(json.loads(json.dumps(skewed.to_dict())))
    np.testing.assert_array_equal(back.threshold, skewed.threshold)
    np.testing.assert_array_equal(back.weights, skewed.weights)
    assert back.members == skewed.members and back.value == 0.9 and back.n_trials == 4


WORKER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.conftest import TUNE_MEMBERS as MEMBERS, make_evaluator
    from stacking.tune import FoldedEvaluator, TuneSpace, tune_study

    class Slow(FoldedEvaluator):  # slow trials, so that both workers are surely at work at once
        def score(self, *args):
            time.sleep(0.03)
            return super().score(*args)

    folder = Path(sys.argv[1])
    slow = Slow(make_evaluator().evaluators)
    (folder / f"ready{sys.argv[2]}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)
    tune_study(slow, [0, 1, 2], MEMBERS, TuneSpace(), sys.argv[3], "shared", n_trials=16, seed=int(sys.argv[2]))
""")


def test_two_processes_share_one_study(tmp_path):
    url = sqlite_url(tmp_path / "optuna.db")
    workers = [subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(tmp_path), str(i), url], cwd=REPO,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read()
    trials = optuna.load_study(study_name="shared", storage=url).trials
    complete = [t for t in trials if t.state == COMPLETE]
    assert len(complete) == 16
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both did work
    assert all(t.user_attrs.get("surplus") for t in trials if t.state != COMPLETE)
    assert WORKER not in {t.user_attrs["worker"] for t in trials}


# ---- `workbench tune` on a tiny run -------------------------------------------------------------------
STORE_HW = (32, 48)  # half the tiny data's 64 x 96: truths go through the area + majority resize


def make_run(config_path: Path, n_members: int = 2):
    """folds.csv and an OOF store of `n_members` noisy members for the tiny dataset; returns (config, folds)."""
    from carvana.dataset import CarvanaData
    from oof import Store
    from stacking.maps import truth_at
    from workbench.config import load_config
    from workbench.steps import make_folds

    config_path.write_text(config_path.read_text() + "oof:\n  resolution: 48x32\n")  # the store's W x H
    config = load_config(config_path)
    folds = make_folds(config)
    rles = CarvanaData(config.data).train_rles

    def truth(img: str) -> np.ndarray:
        return truth_at(rles[img], (64, 96), STORE_HW)

    store = Store(config.run_dir / "oof")
    rng = np.random.default_rng(0)
    for m in range(n_members):
        with store.open_member(f"m{m}", {"name": f"m{m}"}, folds.hash, STORE_HW) as writer:
            for img, fold in folds.fold_of.items():
                noisy = truth(img) * 200.0 + rng.normal(30 + 20 * m, 40, STORE_HW)
                writer.write("train", img, np.clip(noisy, 0, 255).astype(np.uint8), fold)
    return config, folds


def test_folded_evaluator_from_the_store(tiny_config):
    from carvana.dataset import CarvanaData, angle_of
    from oof import Store
    from stacking.maps import truth_at

    config, folds = make_run(tiny_config)
    store = Store(config.run_dir / "oof")
    rles = CarvanaData(config.data).train_rles

    def truth(img: str) -> np.ndarray:
        return truth_at(rles[img], (64, 96), STORE_HW)

    assert truth(folds.ids(0)[0]).shape == STORE_HW
    folded = build_folded_evaluator(store, ["m0", "m1"], folds.fold_of, truth)
    for k in range(folds.n_folds):
        ids = folds.ids(k)
        reference = DiceEvaluator.from_images(
            (np.stack([store.read(m, "train", i) for m in ["m0", "m1"]]), truth(i), angle_of(i)) for i in ids)
        assert folded.ids[k] == ids
        np.testing.assert_array_equal(folded.per_image(0.45, [0.3, 0.7], [k]), reference.per_image(0.45, [0.3, 0.7]))


def test_workbench_tune_two_processes(tiny_config, tmp_path):
    config_text = tiny_config.read_text() + "tune:\n  n_trials: 5\n"
    tiny_config.write_text(config_text)
    config, folds = make_run(tiny_config)
    command = [sys.executable, "-m", "workbench.cli", "tune", "--config", str(tiny_config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    url = f"sqlite:///{config.run_dir.resolve() / 'optuna.db'}"
    saved = json.loads((config.run_dir / "tune.json").read_text())
    study = saved["study"]  # blend-<hash of members, maps, folds, space>
    assert study.startswith("blend-")
    for name in [study, f"{study}-outer0", f"{study}-outer1", f"{study}-outer2"]:
        trials = optuna.load_study(study_name=name, storage=url).trials
        assert sum(t.state == COMPLETE for t in trials) == 5, name
    assert "honest" in outputs[0][0]
    assert saved["members"] == ["m0", "m1"] and len(saved["honest_per_image"]) == len(folds.fold_of)


def test_workbench_tune_without_store_is_a_clear_error(tiny_config):
    from workbench.cli import main
    from workbench.config import load_config
    from workbench.steps import make_folds

    make_folds(load_config(tiny_config))
    with pytest.raises(WorkbenchError, match="fold-train"):
        from workbench.tune import tune_run
        tune_run(load_config(tiny_config), progress=False)
    assert main(["tune", "--config", str(tiny_config)]) == 2
