"""The experiment config: a YAML file loaded into frozen dataclasses, validated on load.

Unknown keys are rejected with their dotted name and the valid ones; relative paths are relative to
the directory the command runs in (the repository root for `make` targets).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from carvana.atomic import write_text_atomic
from carvana.dataset import parse_size
from carvana.errors import WorkbenchError
from folds import STRATIFY
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
    guard: bool = False  # True: stackers used only where inner folds say they beat the selected blend (~3x cost)
    n_submissions: int = 3  # top entries also written to RUN/submissions/ for `workbench blend`


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
        if self.members is not None and (not isinstance(self.members, list) or not self.members
                                         or not all(isinstance(m, str) for m in self.members)):
            raise ValueError(f"tune.members must be a non-empty list of member names, got {self.members!r}")


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

    def member(self, name: str) -> MemberSpec:
        """The zoo member called `name`; WorkbenchError listing the valid names."""
        for spec in self.zoo:
            if spec.name == name:
                return spec
        raise WorkbenchError(f"no member {name!r} in this config's zoo; valid: {', '.join(s.name for s in self.zoo)}")


def load_config(path: Path, *, data: Path | None = None, run_dir: Path | None = None) -> ExperimentConfig:
    """Load `path`; `data` and `run_dir` override the config's folders (the CLI's --data, --run-dir)."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{path}: config not found; see configs/ for examples")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise WorkbenchError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise WorkbenchError(f"{path}: the top level must be a mapping of keys to values")
    raw.setdefault("name", path.stem)
    raw.setdefault("run_dir", f"runs/{raw['name']}")
    if data is not None:
        raw["data"] = str(data)
    if run_dir is not None:
        raw["run_dir"] = str(run_dir)
    if "data" not in raw:
        raise WorkbenchError(f"{path}: no `data:` folder given; add `data: data/synthetic` or pass --data DIR")
    if isinstance(raw.get("stack"), dict) and "resolution" in raw["stack"]:
        raise WorkbenchError(f"{path}: `stack.resolution` is now `oof.resolution` (W x H of the stored maps; "
                             "omit it to keep the photos' own size): move the key")
    try:
        raw["zoo"] = _zoo_members(raw.get("zoo"))
        return _build(ExperimentConfig, raw, "")
    except (TypeError, ValueError) as error:
        raise WorkbenchError(f"{path}: {error}") from None


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
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name + ".")
    if hint is Path:
        return Path(str(value))
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is MemberSpec:
        return value  # already resolved by _zoo_members
    if typing.get_origin(hint) is tuple:
        return _convert_tuple(hint, value, name)
    if hint in (int, float, str, bool):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise TypeError(f"`{name}` must be {hint.__name__}, got {value!r}")
        return value
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
    try:
        return tuple(kind(v) for kind, v in zip(kinds, value))
    except ValueError:
        raise TypeError(f"`{name}` has a value that is not a number: {value!r}") from None


def config_to_dict(config: object) -> dict:
    """A plain dict of a config dataclass, paths as strings, for saving as YAML."""
    def plain(value: object) -> object:
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
    path = config.run_dir / "config.yaml"
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
