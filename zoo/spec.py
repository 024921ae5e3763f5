"""Member specs: what a member is (framework, architecture, encoder, input size) and how it trains.

A spec is a frozen dataclass; `spec_hash` identifies it so that a changed spec never silently
reuses results trained under the old one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from oof.format import MEMBER_PATTERN

FAMILIES = {
    # arch -> framework
    "avg_mask": "baseline",
    "simple_cnn": "torch",
    "unet": "torch",
    "fpn": "torch",
    "linknet": "torch",
    "keras_unet": "keras",
}


def check_field_types(obj: object, where: str) -> None:
    """Validate (and normalise) the int / float / str / bool fields of a frozen dataclass from YAML.

    Floats accept ints and numeric strings (YAML reads `1e-3` as a string); ints must be whole.
    """
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), f.type
        if kind == "float" and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                object.__setattr__(obj, f.name, float(value))
                continue
            except ValueError:
                pass
        expected = {"int": int, "float": float, "str": str, "bool": bool}.get(kind)
        if expected and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            raise ValueError(f"{where}: `{f.name}` must be {kind}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How a member trains; every field can be set per member or as `zoo.train` defaults in the YAML."""

    epochs: int = 4
    batch_size: int = 8
    accumulate: int = 1  # gradient accumulation steps: effective batch = batch_size x accumulate
    optimizer: str = "adam"  # adam | rmsprop
    lr: float = 1e-3
    plateau_factor: float = 0.1  # ReduceLROnPlateau on validation mean Dice
    plateau_patience: int = 4
    early_stop_patience: int = 8
    augment: bool = True
    num_workers: int = 0  # DataLoader workers; 0 = the main process (right for small CPU runs)
    hflip_tta: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self, "train")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"optimizer is {self.optimizer!r}; valid: adam, rmsprop")
        if min(self.epochs, self.batch_size, self.accumulate) < 1:
            raise ValueError("epochs, batch_size and accumulate must be at least 1")


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member. `height` x `width` is the input resolution (sides divisible by 32 for
    the U-Nets); its maps are resized to the store's resolution."""

    name: str
    arch: str  # one of FAMILIES
    height: int
    width: int
    encoder: str = ""  # smp encoder name (resnet18, efficientnet-b0, tu-mobilenetv3_small_050, ...)
    encoder_weights: str | None = None  # None, or a local weights file (no downloads here)
    depth: int = 4  # keras_unet: number of down-sampling steps
    filters: int = 16  # keras_unet: filters of the first block, doubled at each step
    decoder_channels: tuple[int, ...] = ()  # smp Unet decoder widths; () = the library default
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_field_types(self, f"member {self.name}")
        if not MEMBER_PATTERN.match(self.name):
            raise ValueError(f"member name {self.name!r}: use letters, digits, '_', '-' and '.' only")
        if self.arch not in FAMILIES:
            raise ValueError(f"member {self.name}: arch {self.arch!r} unknown; valid: {', '.join(FAMILIES)}")
        if self.framework != "baseline" and (self.height % 32 or self.width % 32) and self.arch != "simple_cnn":
            raise ValueError(f"member {self.name}: input {self.height}x{self.width} must have sides divisible by 32")
        if self.arch in ("unet", "fpn", "linknet") and not self.encoder:
            raise ValueError(f"member {self.name}: arch {self.arch} needs an `encoder`")

    @property
    def framework(self) -> str:
        return FAMILIES[self.arch]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def hash(self) -> str:
        """sha256 of everything that shapes the member's results."""
        shaping = self.to_dict()
        del shaping["train"]["num_workers"]  # how batches are loaded does not change the results
        text = json.dumps(shaping, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def member_name(arch: str, encoder: str, height: int) -> str:
    """`<arch>_<encoder>_<height>`, the house naming (e.g. unet_resnet34_512)."""
    parts = [arch] + ([encoder.replace("tu-", "")] if encoder else []) + [str(height)]
    return "_".join(parts)
