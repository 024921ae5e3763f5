"""The experiment config: a YAML file loaded into frozen dataclasses, validated on load.

Unknown keys are rejected with their dotted name and the valid ones; relative paths are relative to
the directory the command runs in (the repository root for `make` targets).

About 400 lines: one frozen dataclass per section and the one YAML reader and type checker they share
(`zoo.spec` holds the member specs); the sections are small, the checks need to be in one place.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from carvana.atomic import write_text_atomic
from carvana.dataset import parse_size
from carvana.errors import WorkbenchError
from carvana.yaml_scalars import yaml_scalar
from folds import STRATIFY
from workbench.runfolder import RunPaths
from zoo.pseudo import PseudoSetConfig
from zoo.registry import resolve_members
from zoo.spec import MemberSpec


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic studio generated when the data folder is missing (`make demo`)."""

    cars: int = 24
    test_cars: int = 8
    size: tuple[int, int] = (480, 320)  # (W, H)
    seed: int = 0
    variant: str = "default"  # a studio variant: carvana.synth.variants.VARIANTS

    def __post_init__(self) -> None:
        from carvana.synth.variants import get_variant

        get_variant(self.variant)  # an unknown name is refused when the config loads, with the valid names


@dataclass(frozen=True)
class FoldsConfig:
    n_folds: int = 5
    stratify: str = "area"  # area | make | none
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stratify not in STRATIFY:
            raise ValueError(f"folds.stratify is {self.stratify!r}; valid: {', '.join(STRATIFY)}")
        if self.n_folds < 2:
            raise ValueError(f"folds.n_folds is {self.n_folds}; use 2 or more")


@dataclass(frozen=True)
class OofConfig:
    """The members' probability-map store (RUN/oof)."""

    resolution: tuple[int, int] | None = None  # (W, H) of the stored maps; None = the photos' own size

    def __post_init__(self) -> None:
        if self.resolution is not None and min(self.resolution) < 1:
            raise ValueError(f"oof.resolution is {self.resolution}; give W x H like 1918x1280 (or omit it)")


@dataclass(frozen=True)
class StackConfig:
    blends: tuple[str, ...] = ("mean", "logit_mean", "vote", "weighted_mean", "selected")
    stackers: tuple[str, ...] = ("lightgbm", "logistic")  # per-pixel level-2 models on the uncertain band
    max_pixels: int = 2_000_000  # band pixels sampled to fit each stacker (bounds memory and time)
    band: tuple[float, float] = (0.02, 0.98)  # stackers learn where not every member is <= lo or >= hi
    max_band_share: float = 1.0  # stackers predict at most this share of an image's pixels (the most doubtful)
    postprocess: tuple[str, ...] = ("largest", "fill_holes", "drop_blobs")  # on the best entry, kept if it helps
    cnn_epochs: int = 0  # the CNN stacker (zoo.cnn_stacker) trains this many epochs per fit; 0 leaves it out
    cnn_size: tuple[int, int] = (96, 64)  # W x H at which it sees the photo and the members' maps
    # True: the pixel stackers and the tuned blend are used only where inner folds show they beat the selected
    # blend clear of the car-bootstrap noise (stacking.robust; 7 fits instead of 4 with 3 folds, 16 of 6 with 5)
    guard: bool = False
    entries_mean: bool = True  # the equal mean of every learned entry's maps as one more entry (stacking.ensemble)
    monotone: bool = True  # LightGBM's answer only rises with each member's own probability (stacking.pixel_stacker)
    weighting: str = "pixel"  # stackers' loss: "pixel" (pooled band pixels) or "dice" (weights follow per-image Dice)
    n_submissions: int = 3  # top entries also written to RUN/submissions/ for `workbench blend`
    fit_jobs: int = 1  # entries' fits (each outer fold's and the one on all) at once; -1 = compute.cpu_workers

    def __post_init__(self) -> None:
        from stacking.blenders import BLENDERS
        from stacking.pixel_stacker import STACKERS, WEIGHTINGS
        from stacking.postprocess import OPERATIONS

        _check_names("stack.blends", self.blends, BLENDERS)
        _check_names("stack.stackers", self.stackers, STACKERS)
        _check_names("stack.postprocess", self.postprocess, OPERATIONS)
        _check_range("stack.weighting", self.weighting, self.weighting in WEIGHTINGS, f"use one of {list(WEIGHTINGS)}")
        _check_range("stack.cnn_epochs", self.cnn_epochs, self.cnn_epochs >= 0, "use 0 (no CNN stacker) or more")
        low, high = self.band
        _check_range("stack.band", list(self.band), 0 <= low < high <= 1, "need 0 <= lo < hi <= 1, e.g. [0.02, 0.98]")
        _check_range("stack.max_pixels", self.max_pixels, self.max_pixels >= 1, "use 1 or more")
        _check_range("stack.max_band_share", self.max_band_share, 0 < self.max_band_share <= 1, "need 0 < share <= 1")
        _check_range("stack.n_submissions", self.n_submissions, self.n_submissions >= 1, "use 1 or more")
        _check_range("stack.fit_jobs", self.fit_jobs, self.fit_jobs >= 1 or self.fit_jobs == -1, "use 1 or more, or -1")


def _check_range(key: str, value: object, ok: bool, need: str) -> None:
    """ValueError `key is value; need` unless `ok` (the one form of every range check)."""
    if not ok:
        raise ValueError(f"`{key}` is {value!r}; {need}")


def _check_names(key: str, names: tuple[str, ...], valid: dict) -> None:
    """ValueError for a name not in the registry `valid` (listing the valid ones) or a name given twice."""
    for name in names:
        if name not in valid:
            raise ValueError(f"`{key}` names {name!r}; valid: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"`{key}` lists a name twice: {list(names)}")


@dataclass(frozen=True)
class TuneConfig:
    """`workbench tune`: Optuna over the blend's threshold(s) and member weights, nested over the folds."""

    storage: str | None = None  # an Optuna storage URL, or journal:PATH; None = sqlite:///RUN/optuna.db
    study: str = "blend"  # outer studies are <study>-outer<k>
    n_trials: int = 200  # complete trials per study; there are n_folds + 1 studies
    per_angle: bool = True  # 16 per-angle threshold offsets
    tune_weights: bool = True
    threshold_range: tuple[float, float] = (0.2, 0.8)
    seed: int = 0
    members: list[str] | None = None  # None = every member whose OOF maps are complete

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ValueError(f"tune.n_trials is {self.n_trials}; use 1 or more")
        low, high = self.threshold_range
        if not 0 < low <= 0.5 <= high <= 1:
            raise ValueError(f"tune.threshold_range is {list(self.threshold_range)}; need 0 < low <= 0.5 <= high <= 1")
        if self.members is not None and (
            not isinstance(self.members, list) or not self.members or not all(isinstance(m, str) for m in self.members)
        ):
            raise ValueError(f"tune.members must be a non-empty list of member names, got {self.members!r}")


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ComputeConfig:
    """Where member x fold jobs, test shards and stacker shards run (`engine: local` never imports Ray)."""

    engine: str = "local"  # local: in this process, one job after another | ray: Ray core tasks
    address: str | None = None  # ray: None = start Ray here for the command; auto = join `ray start`; ray://h:10001
    gpus_per_job: int | None = None  # fold and test-shard jobs; None = 1 when this machine has a GPU, else 0
    cpus_per_job: int | None = None  # None = zoo.train.num_workers + 1 (DataLoader workers plus the job)
    max_retries: int = 3  # worker or node deaths; Python exceptions are reported, not retried
    test_shards: int | None = None  # contiguous test id ranges per member; None = 2 per job slot; 1 locally
    cpu_workers: int | None = None  # stacker test-map shards at a time; None = every core
    cache_dir: Path | None = None  # node-local decode cache; None = RUN/cache
    claim_grace_s: float = 600.0  # a job claim whose heartbeat is older than this is taken over
    threads: int | None = None  # CPU threads of every job (PyTorch, TensorFlow); None = all cores, cpus_per_job on Ray
    deterministic: bool = False  # PyTorch's deterministic algorithms (slower on GPUs; no effect on CPU results here)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"compute.engine is {self.engine!r}; valid: {', '.join(ENGINES)}")
        for name in ("gpus_per_job", "cpus_per_job", "max_retries", "test_shards", "cpu_workers", "threads"):
            value = getattr(self, name)
            low = 1 if name in ("cpus_per_job", "test_shards", "cpu_workers", "threads") else 0
            if value is not None and value < low:
                raise ValueError(f"compute.{name} is {value}; use {low} or more")
        if self.address is not None and self.engine != "ray":
            raise ValueError(f"compute.address is {self.address!r} but compute.engine is local; add `engine: ray`")
        if self.claim_grace_s <= 0:
            raise ValueError(f"compute.claim_grace_s is {self.claim_grace_s}; use a positive number of seconds")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: Path
    run_dir: Path
    seed: int = 0
    synth: SynthConfig | None = None
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    zoo: tuple[MemberSpec, ...] = ()  # from the YAML's `zoo: {train: {...}, members: [...]}`
    oof: OofConfig = field(default_factory=OofConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    pseudo: tuple[PseudoSetConfig, ...] = ()  # from the YAML's `pseudo: {<set>: {source: [...], ...}}`

    def __post_init__(self) -> None:
        _check_pseudo(self.zoo, self.pseudo)

    def member(self, name: str) -> MemberSpec:
        """The zoo member called `name`; WorkbenchError listing the valid names."""
        for spec in self.zoo:
            if spec.name == name:
                return spec
        raise WorkbenchError(f"no member {name!r} in this config's zoo; valid: {', '.join(s.name for s in self.zoo)}")

    def pseudo_set(self, name: str) -> PseudoSetConfig:
        """The pseudo-label set called `name`; WorkbenchError listing the valid names."""
        for cfg in self.pseudo:
            if cfg.name == name:
                return cfg
        valid = ", ".join(c.name for c in self.pseudo) or "none"
        raise WorkbenchError(f"no pseudo-label set {name!r} in this config's `pseudo:`; valid: {valid}")


def _check_pseudo(zoo: tuple[MemberSpec, ...], sets: tuple[PseudoSetConfig, ...]) -> None:
    """Sources are zoo members that are not trained on the set they label; `train.pseudo` names a set."""
    names = {spec.name for spec in zoo}
    by_name = {cfg.name: cfg for cfg in sets}
    for cfg in sets:
        unknown = [m for m in cfg.source if m not in names]
        if unknown:
            raise ValueError(f"pseudo.{cfg.name}.source names {unknown[0]!r}, not a zoo member; valid: {sorted(names)}")
    for spec in zoo:
        wanted = spec.train.pseudo
        if not wanted:
            continue
        if wanted not in by_name:
            raise ValueError(
                f"member {spec.name}: `train.pseudo` names {wanted!r}, not a set of the config's `pseudo:` "
                f"(sets: {', '.join(by_name) or 'none'})"
            )
        if spec.name in by_name[wanted].source:
            raise ValueError(f"member {spec.name} is a source of pseudo-label set {wanted}, which it trains on")


def load_config(
    path: Path, *, data: Path | None = None, run_dir: Path | None = None, compute: dict | None = None
) -> ExperimentConfig:
    """Load `path`; `data` and `run_dir` override the config's folders (the CLI's --data, --run-dir),
    `compute` ({key: value}, None values ignored) the keys of its `compute:` section (--engine ...)."""
    path = Path(path)
    if path.is_dir():
        raise WorkbenchError(f"{path}: is a folder; --config needs a YAML file, e.g. configs/demo.yaml")
    if not path.is_file():
        raise WorkbenchError(f"{path}: config not found; see configs/ for examples")
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    raw.setdefault("run_dir", f"runs/{raw['name']}")
    if data is not None:
        raw["data"] = str(data)
    if run_dir is not None:
        raw["run_dir"] = str(run_dir)
    overrides = {k: v for k, v in (compute or {}).items() if v is not None}
    if overrides:
        section = raw.get("compute") or {}
        raw["compute"] = {**section, **overrides} if isinstance(section, dict) else section
    if "data" not in raw:
        raise WorkbenchError(f"{path}: no `data:` folder given; add `data: data/synthetic` or pass --data DIR")
    if isinstance(raw.get("stack"), dict) and "resolution" in raw["stack"]:
        raise WorkbenchError(
            f"{path}: `stack.resolution` is now `oof.resolution` (W x H of the stored maps; "
            "omit it to keep the photos' own size): move the key"
        )
    try:
        raw["zoo"] = _zoo_members(raw.get("zoo"))
        raw["pseudo"] = _pseudo_sets(raw.get("pseudo"))
        config = _build(ExperimentConfig, raw, "")
    except (TypeError, ValueError) as error:
        raise WorkbenchError(f"{path}: {error}") from None
    for key, folder in (("data", config.data), ("run_dir", config.run_dir)):
        if folder.exists() and not folder.is_dir():
            raise WorkbenchError(f"{path}: `{key}` {folder} is a file, not a folder; give a folder (or a new name)")
    return config


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading, except that only decimal numbers are ints: `0x0` and `1280x0` stay sizes
    (strings), not hexadecimal integers, and `1:30` is not base 60."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789"))


def read_yaml(path: Path) -> dict:
    """The YAML mapping in `path`; WorkbenchError naming the file and line of a syntax error."""
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}, line {mark.line + 1} column {mark.column + 1}" if mark else str(path)
        raise WorkbenchError(f"{where}: not valid YAML ({error.problem or error.context}); fix that line") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise WorkbenchError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise WorkbenchError(f"{path}: the top level must be a mapping of keys to values")
    return raw


def _zoo_members(raw: object) -> tuple[MemberSpec, ...]:
    """Resolve `zoo: {train: {...defaults}, members: [...]}` against the member catalogue."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise TypeError("`zoo` must be a mapping with `members:` (and optional `train:`, `predict:` defaults)")
    unknown = sorted(set(raw) - {"train", "predict", "members"})
    if unknown:
        raise ValueError(f"unknown key `zoo.{unknown[0]}` (valid keys: train, predict, members)")
    return tuple(resolve_members(raw.get("members") or [], raw.get("train") or {}, raw.get("predict") or {}))


def _pseudo_sets(raw: object) -> tuple[PseudoSetConfig, ...]:
    """`pseudo: {<set name>: {source: [...], ...}}` as one PseudoSetConfig per set."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise TypeError("`pseudo` must be a mapping of set names to their settings, e.g. {round2: {source: [...]}}")
    return tuple(
        _build(PseudoSetConfig, {**(settings or {}), "name": str(name)}, f"pseudo.{name}.")
        for name, settings in raw.items()
    )


def _build(cls: type, raw: object, prefix: str):
    """Instantiate dataclass `cls` from a YAML mapping, recursively, rejecting unknown keys."""
    if not isinstance(raw, dict):
        raise TypeError(f"`{prefix.rstrip('.') or 'top level'}` must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ValueError(f"unknown key `{prefix}{key}` (valid keys: {', '.join(names)})")
    kwargs = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in raw.items()}
    return cls(**kwargs)


def _convert(hint: object, value: object, name: str) -> object:
    """Convert a YAML value to the field's type (dataclass, Path, tuple, optional, scalar)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return None if value is None else _convert(options[0], value, name)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, name + ".")
    if hint is Path:
        return Path(str(value))
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] in (MemberSpec, PseudoSetConfig):
        return value  # already resolved by _zoo_members, _pseudo_sets
    if typing.get_origin(hint) is tuple:
        return _convert_tuple(hint, value, name)
    if isinstance(hint, type) and hint in (int, float, str, bool):
        return yaml_scalar(hint, value, name)  # the zoo's sections follow the same rule
    return value


def _convert_tuple(hint: object, value: object, name: str) -> tuple:
    """Tuples come as YAML lists, or as `WxH` strings for (W, H) sizes."""
    kinds = typing.get_args(hint)
    if len(kinds) == 2 and kinds[1] is Ellipsis:  # tuple[str, ...]: a list of any length
        if not isinstance(value, list) or not all(isinstance(v, kinds[0]) for v in value):
            raise TypeError(f"`{name}` must be a list of {kinds[0].__name__}, got {value!r}")
        return tuple(value)
    if isinstance(value, str) and "x" in value:
        try:
            value = parse_size(value)
        except ValueError as error:
            raise TypeError(f"`{name}`: {error}") from None
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"`{name}` must be a list like [480, 320] or a size like 480x320, got {value!r}")
    if len(kinds) != len(value):
        raise TypeError(f"`{name}` needs {len(kinds)} values, got {value!r}")
    try:  # each value by the scalars' rule: a size of 480.7 px is refused, not cut to 480
        return tuple(yaml_scalar(kind, v, name) for kind, v in zip(kinds, value))
    except TypeError:
        example = "whole numbers like [480, 320] (or 480x320)" if int in kinds else "numbers like [0.2, 0.8]"
        raise TypeError(f"`{name}` must be {len(kinds)} {example}, got {value!r}") from None


def config_to_dict(config: typing.Any) -> dict:
    """A plain dict of a config dataclass, paths as strings, for saving as YAML."""

    def plain(value: typing.Any) -> typing.Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def save_resolved(config: ExperimentConfig) -> Path:
    """Write the resolved config to RUN/config.yaml atomically."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    path = RunPaths(config.run_dir).config_yaml
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
