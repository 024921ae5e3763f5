"""Members from anywhere: the fold file teammates train on, `workbench import-member` in every exchange format
(checked against the files themselves), every refusal leaving the store byte-identical, and your own loop
writing a member through `open_member`."""
from __future__ import annotations

import csv
import hashlib
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from carvana.dataset import CarvanaData, car_of, load_mask
from carvana.metric import dice
from oof import Store
from tests.conftest import assert_user_error, run_cli

FORMATS = ("png8", "png16", "npy-float", "npy-logits", "npy-uint8")


def member_maps(data: Path, split: str, seed: int) -> dict[str, np.ndarray]:
    """{img: (H, W) float64 probabilities}: the truth (or a car-shaped guess for test photos) blurred, shifted
    and noised differently per seed, so members differ near the boundary."""
    rng = np.random.default_rng(seed)
    cars = CarvanaData(data)
    maps = {}
    for img in cars.ids(split):
        photo = cars.load_image(img, split)
        base = load_mask(cars.mask_path(img)) if split == "train" else (photo.mean(axis=2) < 200).astype(np.uint8)
        soft = cv2.GaussianBlur(base.astype(np.float32), (0, 0), 1.0 + seed)
        shift = int(rng.integers(-2, 3))
        soft = np.roll(soft, shift, axis=1) + rng.normal(0, 0.05, soft.shape)
        maps[img] = np.clip(soft, 0, 1).astype(np.float64)
    return maps


def save_map(path_stem: Path, proba: np.ndarray, fmt: str) -> Path:
    """One map file in an exchange format; returns its path."""
    if fmt == "png8":
        path = path_stem.parent / f"{path_stem.name}.png"
        cv2.imwrite(str(path), np.rint(proba * 255).astype(np.uint8))
    elif fmt == "png16":
        path = path_stem.parent / f"{path_stem.name}.png"
        cv2.imwrite(str(path), np.rint(proba * 65535).astype(np.uint16))
    elif fmt == "npy-uint8":
        path = path_stem.parent / f"{path_stem.name}.npy"
        np.save(path, np.rint(proba * 255).astype(np.uint8))
    elif fmt == "npy-float":
        path = path_stem.parent / f"{path_stem.name}.npy"
        np.save(path, proba.astype(np.float32))
    else:  # logits
        path = path_stem.parent / f"{path_stem.name}.npy"
        clipped = np.clip(proba, 1e-6, 1 - 1e-6)
        np.save(path, np.log(clipped / (1 - clipped)).astype(np.float32))
    return path


def export_member(
    out: Path, data: Path, fmt: str, seed: int, fold_of: dict[str, int] | None = None
) -> tuple[Path, Path]:
    """OOF maps as out/oof/<img> (or out/oof/fold<k>/<img> with `fold_of`) and test maps as out/test/<img>."""
    oof_dir, test_dir = out / "oof", out / "test"
    for img, proba in member_maps(data, "train", seed).items():
        folder = oof_dir / f"fold{fold_of[img]}" if fold_of else oof_dir
        folder.mkdir(parents=True, exist_ok=True)
        save_map(folder / f"{img}.jpg" if seed % 2 else folder / img, proba, fmt)  # `<img>.jpg.<ext>` accepted too
    test_dir.mkdir(parents=True, exist_ok=True)
    for img, proba in member_maps(data, "test", seed).items():
        save_map(test_dir / img, proba, fmt)
    return oof_dir, test_dir


def file_proba(path: Path) -> np.ndarray:
    """The probabilities a map file holds, read without the workbench."""
    if path.suffix == ".png":
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return array / (65535.0 if array.dtype == np.uint16 else 255.0)
    array = np.load(path)
    if array.dtype == np.uint8:
        return array / 255.0
    return array.astype(np.float64)


def independent_oof_dice(oof_dir: Path, data: Path, logits: bool) -> float:
    scores = []
    for path in sorted(oof_dir.rglob("*.*")):
        img = path.name.split(".")[0]
        values = file_proba(path)
        car = values >= 0 if logits else values >= 0.5
        scores.append(dice(car, load_mask(data / "train_masks" / f"{img}_mask.gif")))
    return float(np.mean(scores))


def read_fold_file(path: Path) -> dict[str, int]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "fold"]
    return {car: int(fold) for car, fold in rows[1:]}


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ---- the fold file -------------------------------------------------------------------------------------------


def test_folds_export_writes_one_row_per_car_and_a_new_run_adopts_it(tiny_config, tiny_data, tmp_path):
    exported = tmp_path / "team_folds.csv"
    result = run_cli("folds", "--config", str(tiny_config), "--export", str(exported))
    assert result.returncode == 0, result.stderr
    folds = read_fold_file(exported)
    train_ids = CarvanaData(tiny_data).train_ids
    assert sorted(folds) == sorted({car_of(img) for img in train_ids})
    run_folds = {row["img"]: int(row["fold"]) for row in csv.DictReader(open(tmp_path / "run" / "folds.csv"))}
    assert all(run_folds[img] == folds[car_of(img)] for img in train_ids)

    # a teammate's run adopts them, from `id,fold` and from `img,fold`
    per_image = tmp_path / "per_image.csv"
    per_image.write_text("img,fold\n" + "".join(f"{img}.jpg,{folds[car_of(img)]}\n" for img in train_ids))
    for source, run_dir in [(exported, tmp_path / "mate1"), (per_image, tmp_path / "mate2")]:
        result = run_cli("folds", "--config", str(tiny_config), "--run-dir", str(run_dir), "--from", str(source))
        assert result.returncode == 0, result.stderr
        assert (run_dir / "folds.csv").read_bytes() == (tmp_path / "run" / "folds.csv").read_bytes()


@pytest.mark.parametrize("text, fragment", [
    ("id,fold\n", "no fold for train car"),
    ("car,fold\n", "header is 'car,fold'"),
    ("img,fold\n{img0},0\n{img1},1\n", "split across folds"),
    ("id,fold\n{car0},0\n{car0},1\n", "listed twice"),
    ("id,fold\nabcdefabcdef,0\n", "not a train car of this data"),
])
def test_folds_from_a_bad_file_is_refused_and_writes_nothing(tiny_config, tiny_data, tmp_path, text, fragment):
    train_ids = CarvanaData(tiny_data).train_ids
    bad = tmp_path / "bad.csv"
    bad.write_text(text.format(img0=train_ids[0], img1=train_ids[1], car0=car_of(train_ids[0])))
    result = run_cli("folds", "--config", str(tiny_config), "--from", str(bad))
    assert_user_error(result, str(bad), fragment)
    assert not (tmp_path / "run" / "folds.csv").exists()


def test_folds_export_refuses_a_path_inside_the_run(tiny_config, tmp_path):
    result = run_cli("folds", "--config", str(tiny_config), "--export", str(tmp_path / "run" / "folds.csv"))
    assert_user_error(result, "inside the run folder")


# ---- import-member at the competition's size ------------------------------------------------------------------


@pytest.mark.slow
def test_members_in_four_formats_import_at_full_resolution_score_as_their_files_and_stack(tmp_path):
    from carvana.synth import generate

    data = tmp_path / "data"
    generate(data, 3, 1, size=(1918, 1280), seed=11, progress=False)
    config = tmp_path / "full.yaml"
    config.write_text(
        f"data: {data}\nrun_dir: {tmp_path / 'run'}\nfolds: {{n_folds: 3}}\n"
        "zoo:\n  train: {epochs: 1}\n  members: [avg_mask_128]\n"
        "stack: {blends: [mean], stackers: [], n_submissions: 1, postprocess: [], entries_mean: false}\n"
        "tune: {n_trials: 1, per_angle: false}\n"
    )
    fold_file = tmp_path / "folds.csv"
    assert run_cli("folds", "--config", str(config), "--export", str(fold_file)).returncode == 0
    fold_of_car = read_fold_file(fold_file)
    fold_of = {img: fold_of_car[car_of(img)] for img in CarvanaData(data).train_ids}
    assert run_cli("fold-train", "--config", str(config)).returncode == 0

    expected = {}
    for seed, fmt in enumerate(["png8", "png16", "npy-float", "npy-logits"]):
        name = f"mate_{fmt.replace('-', '_')}"
        oof_dir, test_dir = export_member(tmp_path / name, data, fmt, seed, fold_of if fmt == "png16" else None)
        args = ["--folds", str(fold_file)] if fmt == "npy-float" else []
        args += ["--logits"] if fmt == "npy-logits" else []
        result = run_cli("import-member", name, "--config", str(config), "--oof", str(oof_dir), "--test",
                         str(test_dir), *args)
        assert result.returncode == 0, result.stderr
        expected[name] = independent_oof_dice(oof_dir, data, logits=fmt == "npy-logits")
        meta = Store(tmp_path / "run" / "oof").metadata(name)
        assert meta["spec"]["imported"]["n_files"] == 64 and meta["spec"]["imported"]["sources"]["oof"]
        shutil.rmtree(tmp_path / name)  # the store holds its own copy now; 600 MB of float maps per format

    result = run_cli("stack", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^test maps: \d+\.\d s", result.stdout, re.MULTILINE), result.stdout  # one line, all entries
    rows = {row["entry"]: row for row in csv.DictReader(open(tmp_path / "run" / "leaderboard.csv"))}
    for name, score in expected.items():
        assert rows[name]["kind"] == "member" and rows[name]["source"] == "imported"
        assert abs(float(rows[name]["oof_mean_dice"]) - score) <= 2e-5, (name, rows[name]["oof_mean_dice"], score)
    assert rows["avg_mask_128"]["kind"] == "member" and rows["avg_mask_128"]["source"] == ""
    assert {"mean", "tuned"} <= set(rows)
    assert "(imported)" in (tmp_path / "run" / "report" / "members.md").read_text()


# ---- refusals --------------------------------------------------------------------------------------------------


@pytest.fixture
def team_run(tiny_config, tiny_data, tmp_path):
    """A run with folds and one imported member already in its store (so 'unchanged' means something)."""
    fold_file = tmp_path / "folds_export.csv"
    assert run_cli("folds", "--config", str(tiny_config), "--export", str(fold_file)).returncode == 0
    oof_dir, test_dir = export_member(tmp_path / "first", tiny_data, "png8", 0)
    result = run_cli("import-member", "mate", "--config", str(tiny_config), "--oof", str(oof_dir), "--test",
                     str(test_dir))
    assert result.returncode == 0, result.stderr
    return tiny_config, tiny_data, tmp_path, read_fold_file(fold_file)


def _break_missing(oof: Path, test: Path, data: Path, fold_of_car: dict) -> tuple[list[str], str]:
    next(oof.iterdir()).unlink()
    return [], "no map of train photo"


def _break_extra(oof: Path, test: Path, data: Path, fold_of_car: dict) -> tuple[list[str], str]:
    save_map(test / "0123456789ab_01", np.zeros((64, 96)), "png8")
    return [], "not a test photo of this data"


def _break_folds(oof: Path, test: Path, data: Path, fold_of_car: dict) -> tuple[list[str], str]:
    cars = sorted(fold_of_car)
    other = {car: (fold_of_car[car] + (1 if car == cars[0] else 0)) % 3 for car in cars}  # one car moved
    for path in list(oof.iterdir()):
        folder = oof / f"fold{other[car_of(path.name.split('.')[0])]}"
        folder.mkdir(exist_ok=True)
        path.rename(folder / path.name)
    return [], "made with other folds: 1 of"


def _break_folds_file(oof: Path, test: Path, data: Path, fold_of_car: dict) -> tuple[list[str], str]:
    cars = sorted(fold_of_car)
    swapped = dict(fold_of_car)
    a, b = next((x, y) for x in cars for y in cars if fold_of_car[x] != fold_of_car[y])
    swapped[a], swapped[b] = fold_of_car[b], fold_of_car[a]
    path = oof.parent / "mate_folds.csv"
    path.write_text("id,fold\n" + "".join(f"{car},{k}\n" for car, k in swapped.items()))
    return ["--folds", str(path)], "made with other folds: 2 of"


def _break_nan(oof: Path, test: Path, data: Path, fold_of_car: dict) -> tuple[list[str], str]:
    path = sorted(test.iterdir())[-1]
    path.unlink()
    bad = np.full((64, 96), 0.5, dtype=np.float32)
    bad[3, 3] = np.nan
    np.save(path.with_suffix(".npy"), bad)
    return [], "holds NaN"


def _break_logits(oof: Path, test: Path, data: Path, fold_of_car: dict) -> tuple[list[str], str]:
    for path in [*oof.iterdir(), *test.iterdir()]:
        proba = file_proba(path)
        path.unlink()
        save_map(path.parent / path.name.removesuffix(".png"), proba, "npy-logits")
    return [], "--logits"


def _break_aspect(oof: Path, test: Path, data: Path, fold_of_car: dict) -> tuple[list[str], str]:
    path = sorted(oof.iterdir())[0]
    save_map(path.with_suffix(""), np.zeros((64, 64)), "png8")  # a square crop
    return [], "aspect"


@pytest.mark.parametrize("damage", [
    _break_missing, _break_extra, _break_folds, _break_folds_file, _break_nan, _break_logits, _break_aspect,
], ids=lambda f: f.__name__.removeprefix("_break_"))
def test_a_bad_export_is_refused_in_one_line_and_leaves_the_store_byte_identical(team_run, damage):
    config, data, tmp_path, fold_of_car = team_run
    store = tmp_path / "run" / "oof"
    before = tree_digest(store)
    oof_dir, test_dir = export_member(tmp_path / "second", data, "png8", 2)
    extra_args, fragment = damage(oof_dir, test_dir, data, fold_of_car)
    for name in ("mate", "mate2"):  # replacing an existing member, and a new one
        result = run_cli("import-member", name, "--config", str(config), "--oof", str(oof_dir), "--test",
                         str(test_dir), *extra_args)
        assert_user_error(result, fragment)
        assert result.returncode == 2
        assert tree_digest(store) == before


def test_a_refusal_in_a_run_without_a_store_leaves_no_store(tiny_config, tiny_data, tmp_path):
    assert run_cli("folds", "--config", str(tiny_config)).returncode == 0
    oof_dir, test_dir = export_member(tmp_path / "mate", tiny_data, "npy-float", 0)
    next(oof_dir.iterdir()).unlink()
    result = run_cli("import-member", "mate", "--config", str(tiny_config), "--oof", str(oof_dir), "--test",
                     str(test_dir))
    assert_user_error(result, "no map of train photo")
    assert not (tmp_path / "run" / "oof").exists()


def test_importing_again_replaces_the_member_and_a_zoo_name_is_refused(team_run):
    config, data, tmp_path, _ = team_run
    store = Store(tmp_path / "run" / "oof")
    first = store.metadata("mate")["generation"]
    oof_dir, test_dir = export_member(tmp_path / "again", data, "npy-uint8", 3)
    result = run_cli("import-member", "mate", "--config", str(config), "--oof", str(oof_dir), "--test", str(test_dir))
    assert result.returncode == 0, result.stderr
    assert "taken as made with the run's exported folds" in result.stdout
    meta = store.metadata("mate")
    assert meta["generation"] != first and meta["spec"]["imported"]["format"] == "npy-uint8"
    img = store.ids("mate", "train")[0]
    assert np.array_equal(store.read("mate", "train", img), np.load(next(oof_dir.glob(f"{img}*"))))

    config.write_text(config.read_text() + "zoo:\n  members: [avg_mask_128]\n")
    result = run_cli("import-member", "avg_mask_128", "--config", str(config), "--oof", str(oof_dir), "--test",
                     str(test_dir))
    assert_user_error(result, "is in the config's zoo")


def test_maps_of_another_size_are_resized_once_to_the_store(tiny_config, tiny_data, tmp_path):
    """Half-size maps (48x32 for 96x64 photos) land at the store's resolution, area/bilinear like every resize."""
    assert run_cli("folds", "--config", str(tiny_config)).returncode == 0
    oof_dir, test_dir = tmp_path / "oof", tmp_path / "test"
    for folder, split in [(oof_dir, "train"), (test_dir, "test")]:
        folder.mkdir()
        for img in CarvanaData(tiny_data).ids(split):
            save_map(folder / img, np.linspace(0, 1, 48 * 32).reshape(32, 48), "npy-float")
    result = run_cli("import-member", "half", "--config", str(tiny_config), "--oof", str(oof_dir), "--test",
                     str(test_dir))
    assert result.returncode == 0, result.stderr
    store = Store(tmp_path / "run" / "oof")
    got = store.read("half", "test", store.ids("half", "test")[0])
    want = cv2.resize(np.linspace(0, 1, 48 * 32).reshape(32, 48).astype(np.float32), (96, 64),
                      interpolation=cv2.INTER_LINEAR)
    assert got.shape == (64, 96) and np.abs(got.astype(int) - np.rint(np.clip(want, 0, 1) * 255)).max() <= 1


# ---- your own loop ---------------------------------------------------------------------------------------------


def test_your_own_loop_writes_a_member_through_open_member(tiny_config, tiny_data, tmp_path):
    from carvana.errors import WorkbenchError
    from workbench.config import load_config
    from workbench.imports import open_member

    assert run_cli("folds", "--config", str(tiny_config)).returncode == 0
    config = load_config(tiny_config)
    maps = {split: member_maps(tiny_data, split, 1) for split in ("train", "test")}
    with open_member(config, "notebook_net", source="tests") as member:
        with pytest.raises(WorkbenchError, match="a leak"):
            img = member.fold_ids(0)[0]
            member.write_oof(img, maps["train"][img], fold=1)
        for k in range(member.n_folds):
            for img in member.fold_ids(k):
                member.write_oof(img, maps["train"][img], fold=k)
        for img in member.test_ids:
            member.write_test(img, maps["test"][img])
    store = Store(tmp_path / "run" / "oof")
    assert store.members() == ["notebook_net"]
    assert store.metadata("notebook_net")["spec"]["imported"]["sources"] == {"python": "tests"}

    before = tree_digest(store.path)
    with pytest.raises(WorkbenchError, match="no test map"), open_member(config, "notebook_net") as member:
        for k in range(member.n_folds):
            for img in member.fold_ids(k):
                member.write_oof(img, maps["train"][img], fold=k)
    with pytest.raises(RuntimeError), open_member(config, "other") as member:
        raise RuntimeError("the training loop crashed")
    assert tree_digest(store.path) == before


def test_the_docs_example_of_your_own_loop_runs_as_written(tiny_config, tmp_path):
    """The Python block of docs/team.md, with the config path pointed at the tiny run."""
    from tests.conftest import REPO

    text = (REPO / "docs" / "team.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'load_config("configs/demo.yaml")' in code
    assert run_cli("folds", "--config", str(tiny_config)).returncode == 0
    exec(compile(code.replace("configs/demo.yaml", str(tiny_config)), "docs/team.md", "exec"), {})
    store = Store(tmp_path / "run" / "oof")
    assert store.members() == ["my_mean_mask"]
    assert store.metadata("my_mean_mask")["spec"]["imported"]["sources"] == {"python": "docs/team.md example"}
