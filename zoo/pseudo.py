"""Fold-honest pseudo-labels: unscored test photos labelled, for each fold k, only by models that never saw
fold k's cars, so that a member trained on them keeps honest OOF maps.

Fold k's set is made by the source members' fold-k models (trained on every fold but k) and is read only by
fold k's model of a pseudo-labelled member, which predicts fold k's cars: no label it learns from was made
by a model that trained on those cars. The usual recipe (labels from the fold-averaged test maps, i.e. from
models that trained on every fold) leaks fold k into fold k's model; it exists here only as `leaky: true`,
to measure how much it flatters the OOF score.

A set lives in `RUN/pseudo/<set>/` as a store (`oof.Store`) with one member per fold, `fold<k>`, whose
test maps are the labels (probability x 255 at the run's store resolution), and a record per fold,
`fold<k>.json`: the source models (member, spec hash, checkpoint, when it finished), the folds, the
settings and the photos kept. Labelling a fold is one job: it predicts every candidate photo once to
score its confidence, keeps the most confident, and predicts those again to store them, so memory holds
one photo's maps at a time whatever the number of candidates.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carvana.atomic import read_marker, write_json_atomic
from carvana.dataset import CarvanaData, angle_of
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from carvana.resize import resize_image, resize_proba
from carvana.yaml_scalars import check_field_types
from folds import Folds
from oof import Store
from oof.format import MEMBERS_STORE, check_member_name, fold_dir_name
from zoo.spec import MemberSpec

__all__ = ["LABELS", "PseudoSet", "PseudoSetConfig", "label_fold", "load_pseudo_set", "pseudo_dir", "set_current"]

LABELS = ("hard", "soft")
PSEUDO_DIR = "pseudo"


@dataclass(frozen=True)
class PseudoSetConfig:
    """One pseudo-label set (`pseudo: {<name>: {...}}` in the YAML); a member names it in `train.pseudo`."""

    name: str
    source: tuple[str, ...]  # zoo members whose fold-k models (averaged) label fold k's set
    n_photos: int = 0  # photos kept per fold, the most confident first (0 = every candidate that passes)
    n_candidates: int = 0  # test photos each fold's models label (a seeded subset; 0 = every test photo)
    uncertain: tuple[float, float] = (0.1, 0.9)  # a label pixel is uncertain when its probability is inside
    max_uncertain_share: float = 0.05  # photos with more uncertain pixels (share of the photo) are not kept
    labels: str = "hard"  # hard: car where the label is >= 0.5 | soft: the probability itself
    ignore_uncertain: bool = True  # uncertain pixels are left out of the loss
    seed: int = 0
    leaky: bool = False  # comparison only: labels from the sources' fold-averaged test maps (leaks every fold)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", tuple(self.source))
        check_field_types(self, f"pseudo.{self.name}")
        check_member_name(self.name)
        low, high = (float(v) for v in self.uncertain)
        object.__setattr__(self, "uncertain", (low, high))
        if not self.source:
            raise ValueError(f"pseudo.{self.name}: `source` names no member; list the zoo members that label it")
        if self.labels not in LABELS:
            raise ValueError(f"pseudo.{self.name}: `labels` is {self.labels!r}; valid: {', '.join(LABELS)}")
        if not 0 <= low < 0.5 < high <= 1:
            raise ValueError(f"pseudo.{self.name}: `uncertain` is {[low, high]}; need 0 <= low < 0.5 < high <= 1")
        if min(self.n_photos, self.n_candidates) < 0 or not 0 <= self.max_uncertain_share <= 1:
            raise ValueError(
                f"pseudo.{self.name}: n_photos and n_candidates must be >= 0, max_uncertain_share in [0, 1]"
            )

    def settings(self) -> dict:
        """What the labels depend on besides the source models (recorded with every fold)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def pseudo_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / PSEUDO_DIR / name


def _record_path(run_dir: Path, name: str, fold: int) -> Path:
    return pseudo_dir(run_dir, name) / f"{fold_dir_name(fold)}.json"


def _made_by(cfg: PseudoSetConfig, fold: int, folds: Folds, models: list[dict]) -> dict:
    """The identity of fold `fold`'s labels: settings, folds and the exact source models."""
    return {"set": cfg.name, "fold": fold, "folds_hash": folds.hash, "settings": cfg.settings(), "models": models}


def source_models(cfg: PseudoSetConfig, fold: int, run_dir: Path, specs: dict[str, MemberSpec]) -> list[dict]:
    """[{member, spec_hash, checkpoint, finished}] of the models that label fold `fold`: each source member's
    fold-`fold` model (or, leaky, every fold's); WorkbenchError naming a source that is not trained yet."""
    from zoo.runner import member_dir  # the runner imports this module for training

    models = []
    for name in cfg.source:
        folder = member_dir(run_dir, specs[name])
        for k in sorted({fold} if not cfg.leaky else _all_folds(folder)):
            done = read_marker(folder / fold_dir_name(k) / "done.json")
            if done is None:
                raise WorkbenchError(
                    f"{folder / fold_dir_name(k)}: source member {name} of pseudo-label set {cfg.name} has no "
                    f"trained fold {k} yet; run `workbench fold-train` first"
                )
            models.append(
                {
                    "member": name,
                    "fold": k,
                    "spec_hash": done["spec_hash"],
                    "checkpoint": done["checkpoint"],
                    "finished": done["finished"],
                }
            )
    return models


def _all_folds(folder: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("fold")) for p in folder.glob("fold*") if p.is_dir())


def set_current(cfg: PseudoSetConfig, fold: int, run_dir: Path, folds: Folds, specs: dict[str, MemberSpec]) -> bool:
    """True when fold `fold`'s labels are complete and made by today's source models, folds and settings."""
    record = read_marker(_record_path(run_dir, cfg.name, fold))
    try:
        made_by = _made_by(cfg, fold, folds, source_models(cfg, fold, run_dir, specs))
    except WorkbenchError:
        return False
    if record is None or {k: record.get(k) for k in made_by} != made_by:
        return False
    return _stored_ids(run_dir, cfg.name, fold) == set(record["ids"])  # every label on disk, none lost since


def _stored_ids(run_dir: Path, name: str, fold: int) -> set[str]:
    store = Store(pseudo_dir(run_dir, name))
    try:
        return set(store.ids(fold_dir_name(fold), "test"))
    except WorkbenchError:  # no store, or no member for this fold
        return set()


def label_fold(
    cfg: PseudoSetConfig,
    fold: int,
    specs: dict[str, MemberSpec],
    data: CarvanaData,
    folds: Folds,
    run_dir: Path,
    resolution: tuple[int, int],
    progress: bool = True,
) -> bool:
    """Make fold `fold`'s labels (see the module docstring); False when they are already current."""
    if set_current(cfg, fold, run_dir, folds, specs):
        return False
    models = source_models(cfg, fold, run_dir, specs)
    made_by = _made_by(cfg, fold, folds, models)
    label = _labeller(cfg, models, specs, data, run_dir, resolution)
    candidates = _candidates(cfg, fold, data.test_ids)
    scores = []
    for img, levels in label(candidates, f"{cfg.name} fold {fold}: scoring", progress):
        scores.append((uncertain_share(levels, cfg.uncertain), img))
    passing = [(share, img) for share, img in scores if share <= cfg.max_uncertain_share]
    kept = sorted(img for _, img in heapq.nsmallest(cfg.n_photos or len(passing), passing))
    store = Store(pseudo_dir(run_dir, cfg.name))
    with store.open_member(fold_dir_name(fold), made_by, folds.hash, resolution, reset=True) as writer:
        for img, levels in label(kept, f"{cfg.name} fold {fold}: labels", progress):
            writer.write("test", img, levels)
    if progress:
        print(
            f"{cfg.name} fold {fold}: {len(kept)} of {len(candidates)} photos kept ({len(passing)} with at most "
            f"{cfg.max_uncertain_share:g} of their pixels uncertain)"
        )
    share_of = {img: round(share, 6) for share, img in scores}
    write_json_atomic(
        _record_path(run_dir, cfg.name, fold),
        {**made_by, "n_candidates": len(candidates), "ids": kept, "uncertain_share": {i: share_of[i] for i in kept}},
    )
    return True


def uncertain_share(levels: np.ndarray, band: tuple[float, float]) -> float:
    """Share of the photo's pixels whose probability (levels / 255) lies strictly inside `band`."""
    low, high = band
    return float(np.mean((levels > low * 255) & (levels < high * 255)))


def _candidates(cfg: PseudoSetConfig, fold: int, test_ids: list[str]) -> list[str]:
    ids = sorted(test_ids)
    if not cfg.n_candidates or cfg.n_candidates >= len(ids):
        return ids
    rng = np.random.default_rng(cfg.seed + 104_729 * fold)
    return sorted(rng.choice(ids, size=cfg.n_candidates, replace=False).tolist())


def _labeller(
    cfg: PseudoSetConfig,
    models: list[dict],
    specs: dict[str, MemberSpec],
    data: CarvanaData,
    run_dir: Path,
    resolution: tuple[int, int],
) -> Callable[[list[str], str, bool], Iterator[tuple[str, np.ndarray]]]:
    """label(ids, desc, progress) -> (img, (H, W) uint8 label levels at `resolution`) for each id, in order: the
    mean of the models' probabilities, predicted a chunk of photos at a time (or, leaky, the mean of the
    sources' stored fold-averaged test maps)."""
    from zoo.families import load_member
    from zoo.runner import PREDICT_CHUNK, member_dir

    stored = Store(Path(run_dir) / MEMBERS_STORE)
    members = (
        []
        if cfg.leaky
        else [
            (
                specs[m["member"]],
                load_member(
                    specs[m["member"]],
                    [member_dir(run_dir, specs[m["member"]]) / fold_dir_name(m["fold"]) / m["checkpoint"]],
                ),
            )
            for m in models
        ]
    )

    def chunk_levels(chunk: list[str]) -> np.ndarray:
        if cfg.leaky:
            total = sum(stored.read_many(name, "test", chunk).astype(np.float32) for name in cfg.source)
            return np.rint(np.asarray(total) / len(cfg.source)).astype(np.uint8)
        photos = [data.load_image(img, "test") for img in chunk]
        angles = np.array([angle_of(img) for img in chunk])
        total = np.zeros((len(chunk), *resolution), dtype=np.float32)
        for spec, member in members:
            batch = np.stack([resize_image(photo, spec.height, spec.width) for photo in photos])
            for i, proba in enumerate(member.predict_proba(batch, angles=angles)):
                total[i] += resize_proba(proba, *resolution)
        return np.rint(np.clip(total / len(members), 0, 1) * 255).astype(np.uint8)

    def label(ids: list[str], desc: str, progress: bool) -> Iterator[tuple[str, np.ndarray]]:
        bar = progress_bar(total=len(ids), desc=desc, disable=not progress, leave=False, unit="img")
        for start in range(0, len(ids), PREDICT_CHUNK):
            chunk = ids[start : start + PREDICT_CHUNK]
            yield from zip(chunk, chunk_levels(chunk))
            bar.update(len(chunk))
        bar.close()

    return label


@dataclass(frozen=True)
class PseudoSet:
    """Fold k's pseudo-labels as a member's training reads them (checked by `load_pseudo_set`)."""

    cfg: PseudoSetConfig
    fold: int
    ids: list[str]
    store: Store

    @property
    def generation(self) -> str:
        """The labels' generation in the store: it changes whenever the set is made again."""
        return str(self.store.metadata(fold_dir_name(self.fold))["generation"])

    def levels(self, img: str) -> np.ndarray:
        """(H, W) uint8 label levels of `img` at the store's resolution."""
        return self.store.read(fold_dir_name(self.fold), "test", img)


def load_pseudo_set(
    cfg: PseudoSetConfig, fold: int, run_dir: Path, folds: Folds, specs: dict[str, MemberSpec]
) -> PseudoSet:
    """Fold `fold`'s labels for training, checked: they exist, are complete, and were made with the run's
    folds by today's fold-`fold` source models with these settings; else WorkbenchError with the fix."""
    path = _record_path(run_dir, cfg.name, fold)
    record = read_marker(path)
    fix = f"run `workbench pseudo-label --config ...` (it makes set {cfg.name} again where it is not current)"
    if record is None:
        raise WorkbenchError(f"{path}: pseudo-label set {cfg.name} has no complete fold {fold}; {fix}")
    if record.get("folds_hash") != folds.hash:
        raise WorkbenchError(f"{path}: pseudo-label set {cfg.name} was made with other folds; {fix}")
    if _stored_ids(run_dir, cfg.name, fold) != set(record["ids"]):
        raise WorkbenchError(f"{path}: pseudo-label set {cfg.name} fold {fold} is incomplete on disk; {fix}")
    if not set_current(cfg, fold, run_dir, folds, specs):
        raise WorkbenchError(
            f"{path}: pseudo-label set {cfg.name} fold {fold} was made by other source models or settings than "
            f"the config's (sources retrained or settings changed); {fix}"
        )
    return PseudoSet(cfg, fold, list(record["ids"]), Store(pseudo_dir(run_dir, cfg.name)))
