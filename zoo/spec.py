"""Member specs: what a member is (framework, architecture, encoder, input size) and how it trains.

A spec is a frozen dataclass; `spec_hash` identifies it so that a changed spec never silently
reuses results trained under the old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from carvana.yaml_scalars import check_field_types
from oof.format import MEMBER_PATTERN
from zoo.archs import CUSTOM, SMP_ARCHS, SMP_RESERVED, SmpArch, check_builder_args, import_builder
from zoo.families import ARCH_FAMILIES, Family
from zoo.geometry import padded_size

SCHEDULES = ("plateau", "cosine", "cyclic")
LOSSES = ("bce_dice", "bce_logdice", "lovasz")
TTA_VIEWS = ("hflip", "shift")
PSEUDO_FIELDS = {"pseudo": "", "pseudo_share": 0.25}  # their defaults: left out of a spec while unset
DEVICE_FIELDS = {  # their defaults: added later, left out of a spec while unset
    "persistent_workers": True,
    "prefetch_factor": 2,
    "channels_last": "auto",
    "precision": "auto",
    "compile": False,
}
LOADING_FIELDS = ("num_workers", "persistent_workers", "prefetch_factor")  # how batches arrive: not in the hash
UNSHAPING = tuple(f"train.{key}" for key in LOADING_FIELDS)  # nor compared when a member's store resumes
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
BUILDER_FIELDS = {"builder": "", "builder_args": {}, "builder_multiple": 32}  # their defaults


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
    # How training uses the machine (zoo.train_device resolves "auto": GPU-box values on CUDA, the CPU's as before)
    num_workers: int | str = "auto"  # DataLoader processes; auto = min(8, cores) on CUDA, 0 (the main process) on CPU
    persistent_workers: bool = True  # with workers: keep them (and their copies of the photos) from epoch to epoch
    prefetch_factor: int = 2  # with workers: batches each one loads ahead
    channels_last: bool | str = "auto"  # PyTorch: the NHWC layout for model and batches; auto = on CUDA only
    precision: str = "auto"  # PyTorch autocast: auto (CUDA: bfloat16 where the card has it, else float16; CPU: float32)
    compile: bool = False  # PyTorch: torch.compile the training model (slow first epoch; pays off on a GPU)
    seed: int = 0
    crop: tuple[int, int] | None = None  # [h, w] random crops of the padded photo (None = whole photos)
    schedule: str = "plateau"  # plateau | cosine | cyclic (cosine restarts every `cycle_epochs`)
    warmup_epochs: int = 0  # linear LR warm-up before the schedule
    prior_bias: bool = True  # the output layer's bias starts at the log-odds of the fold's car share (zoo.recipe)
    cycle_epochs: int = 10  # cyclic: epochs per cycle
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off; 0.999 typical)
    swa_epochs: int = 0  # average the weights of the last N epochs (stochastic weight averaging; 0 = off)
    loss: str = "bce_dice"  # bce_dice | bce_logdice | lovasz
    border_weight: float = 1.0  # weight of pixels near the mask boundary in the BCE/Dice losses (1 = plain)
    clip_grad: float = 0.0  # max global gradient norm (0 = off)
    pseudo: str = ""  # a pseudo-label set of the config (`pseudo:`): fold k also trains on fold k's set
    pseudo_share: float = 0.25  # at most this share of each batch is pseudo-labelled photos (as bench.pseudo_round)

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", _size_pair(self.crop, "train.crop"))
        check_field_types(self, "train")
        choices = {"optimizer": ("adam", "rmsprop"), "schedule": SCHEDULES, "loss": LOSSES}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"`train.{key}` is {getattr(self, key)!r}; valid: {', '.join(valid)}")
        if min(self.epochs, self.batch_size, self.accumulate, self.cycle_epochs) < 1:
            raise ValueError("epochs, batch_size, accumulate and cycle_epochs must be at least 1")
        if min(self.warmup_epochs, self.swa_epochs) < 0 or self.clip_grad < 0 or not 0 <= self.ema < 1:
            raise ValueError("train: warmup_epochs, swa_epochs and clip_grad must be >= 0, and ema in [0, 1)")
        self._check_device_fields()
        if self.pseudo and not 1 <= self.pseudo_share * self.batch_size < self.batch_size:
            raise ValueError(
                f"`train.pseudo_share` is {self.pseudo_share}: with batch_size {self.batch_size} a batch would hold "
                f"{int(self.pseudo_share * self.batch_size)} pseudo-labelled photos; give 1 to batch_size - 1 of them"
            )
        if self.pseudo and self.loss == "lovasz":
            raise ValueError("`train.pseudo` needs a loss that weighs pixels (bce_dice or bce_logdice), not lovasz")
        if self.border_weight < 1:
            raise ValueError(f"`train.border_weight` is {self.border_weight}; use 1 (off) or more")
        if self.loss == "lovasz" and self.border_weight != 1:
            raise ValueError("`train.border_weight` weights the BCE and Dice terms; with `loss: lovasz` leave it at 1")

    def _check_device_fields(self) -> None:
        """The machine settings that are not plain scalars: "auto" or a value of the setting's own type."""
        workers, layout = self.num_workers, self.channels_last
        if workers != "auto" and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
            raise ValueError(f"`train.num_workers` is {workers!r}; use auto or a whole number >= 0 (0 = no workers)")
        if layout != "auto" and not isinstance(layout, bool):
            raise ValueError(f"`train.channels_last` is {layout!r}; use auto (on CUDA only), true or false")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`train.precision` is {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.prefetch_factor < 1:
            raise ValueError(f"`train.prefetch_factor` is {self.prefetch_factor}; use 1 or more")


@dataclass(frozen=True)
class PredictConfig:
    """How a member predicts photos: whole (padded) or by overlapping tiles, and its TTA views."""

    tile: tuple[int, int] | None = None  # [h, w] tiles of the padded photo, blended by a smooth window
    overlap: int = 64  # px shared by neighbouring tiles
    tta: tuple[str, ...] = ("hflip",)  # any of: hflip, shift (vertical shifts of SHIFT_PX, undone)
    compile: bool = False  # PyTorch members: torch.compile the fold models before predicting (pays off on a GPU)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", _size_pair(self.tile, "predict.tile"))
        object.__setattr__(self, "tta", tuple(self.tta))
        check_field_types(self, "predict")
        unknown = sorted(set(self.tta) - set(TTA_VIEWS))
        if unknown:
            raise ValueError(f"`predict.tta` has {unknown[0]!r}; valid: {', '.join(TTA_VIEWS)} (or [] for none)")
        if self.overlap < 0 or (self.tile is not None and 2 * self.overlap >= min(self.tile)):
            raise ValueError(f"`predict.overlap` is {self.overlap}; use 0 up to half the smaller tile side")


def _size_pair(value: object, key: str) -> tuple[int, int] | None:
    """A YAML `[h, w]` as a tuple of two positive ints (None stays None)."""
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"`{key}` must be [height, width] in px, got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member. `height` x `width` is the input resolution: photos of another size are
    resized to it, photos of that size are not; either way the network sees them padded to its
    `multiple` (1918 -> 1920), and its maps are cropped back."""

    name: str
    arch: str  # one of zoo.families.ARCH_FAMILIES
    height: int
    width: int
    encoder: str = ""  # smp encoder name (resnet18, efficientnet-b0, tu-mobilenetv3_small_050, ...)
    encoder_weights: str | None = None  # None, or a local weights file (no downloads here)
    depth: int = 4  # keras_unet: number of down-sampling steps
    filters: int = 16  # keras_unet: filters of the first block, doubled at each step
    decoder_channels: tuple[int, ...] = ()  # smp unet/unetplusplus/manet decoder widths; () = the library default
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    builder: str = ""  # custom: "package.module:function" returning an nn.Module, (B, 3, H, W) -> (B, 1, H, W) logits
    builder_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the builder (or smp's)
    builder_multiple: int = 32  # custom: what the network's input sides must divide by (photos are padded to it)

    def __post_init__(self) -> None:
        check_field_types(self, f"member {self.name}")
        if not MEMBER_PATTERN.match(self.name):
            raise ValueError(f"member name {self.name!r}: use letters, digits, '_', '-' and '.' only")
        if self.arch not in ARCH_FAMILIES:
            raise ValueError(f"member {self.name}: arch {self.arch!r} unknown; valid: {', '.join(ARCH_FAMILIES)}")
        self._check_builder()
        if self.arch in SMP_ARCHS:
            self._check_smp(SMP_ARCHS[self.arch])
        self._check_unsupported()
        if self.train.pseudo and not self.family.looks_at_photos:
            raise ValueError(f"member {self.name}: arch {self.arch} looks at no photo: `train.pseudo` cannot apply")
        self._check_window(self.train.crop, "train.crop")
        self._check_window(self.predict.tile, "predict.tile")

    def _check_builder(self) -> None:
        """A custom member's builder imports; the builder's fields are refused where they would do nothing."""
        where = f"member {self.name}"
        if self.arch != CUSTOM and (self.builder or self.builder_multiple != BUILDER_FIELDS["builder_multiple"]):
            raise ValueError(f"{where}: `builder` and `builder_multiple` need `arch: custom`")
        if self.builder_args and self.arch not in SMP_ARCHS and self.arch != CUSTOM:
            raise ValueError(
                f"{where}: arch {self.arch} takes no `builder_args` (smp archs and custom do); remove them"
            )
        takes = [a for a, smp in SMP_ARCHS.items() if smp.decoder_channels]
        if self.decoder_channels and self.arch not in takes:
            raise ValueError(
                f"{where}: arch {self.arch} takes no `decoder_channels` (only {', '.join(takes)}); remove it"
            )
        try:
            check_builder_args(self.builder_args, reserved=SMP_RESERVED if self.arch in SMP_ARCHS else ())
            if self.arch == CUSTOM:
                import_builder(self.builder)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if self.arch == CUSTOM and (self.encoder or self.encoder_weights):
            raise ValueError(f"{where}: arch custom has no `encoder`; pass your network's settings in `builder_args`")
        if self.builder_multiple < 1:
            raise ValueError(f"{where}: `builder_multiple` is {self.builder_multiple}; use 1 or more")

    def _check_smp(self, smp: SmpArch) -> None:
        if not self.encoder:
            raise ValueError(f"member {self.name}: arch {self.arch} needs an `encoder`")
        if smp.vit_encoder and not self.encoder.startswith("tu-"):
            raise ValueError(
                f"member {self.name}: arch {self.arch} needs a timm ViT encoder with 16 px patches, "
                f"e.g. `encoder: tu-vit_small_patch16_224`; {self.encoder!r} is not one"
            )
        if min(padded_size(self.height, self.width, self.multiple)) < smp.min_side:
            raise ValueError(
                f"member {self.name}: arch {self.arch} needs inputs of at least {smp.min_side} px a side; "
                f"use height and width >= {smp.min_side}"
            )

    def _check_unsupported(self) -> None:
        """Settings the family's loop cannot honour (its `unsupported` row) are refused by key."""
        for key, fine, fix in self.family.unsupported:
            value = getattr(self.train, key[6:]) if key.startswith("train.") else getattr(self, key)
            fine_values = fine if isinstance(fine, tuple) else str(fine).split("|") if isinstance(fine, str) else [fine]
            if value not in fine_values:
                raise ValueError(
                    f"member {self.name}: `{key}: {value}` cannot be honoured by the {self.family.title} loop; {fix}"
                )

    def _check_window(self, window: tuple[int, int] | None, key: str) -> None:
        """A crop or tile fits the padded photo and keeps the network's multiple."""
        if window is None:
            return
        if not self.family.looks_at_photos:
            raise ValueError(f"member {self.name}: `{key}` does not apply to arch {self.arch}; remove it")
        min_side = SMP_ARCHS[self.arch].min_side if self.arch in SMP_ARCHS else 0
        if min(window) < min_side:
            raise ValueError(f"member {self.name}: `{key}` {list(window)}: arch {self.arch} needs sides >= {min_side}")
        padded_h, padded_w = padded_size(self.height, self.width, self.multiple)
        if window[0] > padded_h or window[1] > padded_w:
            raise ValueError(
                f"member {self.name}: `{key}` {list(window)} is larger than the padded photo "
                f"{padded_h}x{padded_w}; use at most [{padded_h}, {padded_w}]"
            )
        if window[0] % self.multiple or window[1] % self.multiple:
            raise ValueError(
                f"member {self.name}: `{key}` {list(window)} must have sides divisible by "
                f"{self.multiple} (the network's down-sampling)"
            )

    @property
    def multiple(self) -> int:
        """What the network's input sides must divide by: photos are padded up to it."""
        if self.framework == "keras":
            return 2**self.depth
        if self.arch == CUSTOM:
            return self.builder_multiple
        return SMP_ARCHS[self.arch].multiple if self.arch in SMP_ARCHS else 1

    @property
    def family(self) -> Family:
        """The member's row of `zoo.families`: its framework and where its code is."""
        return ARCH_FAMILIES[self.arch]

    @property
    def framework(self) -> str:
        return self.family.name

    def to_dict(self) -> dict:
        """The spec as plain data. Outside arch custom the builder's fields are left out while unset, and so are
        the pseudo-label fields, the training's machine settings added later (`DEVICE_FIELDS`), `predict.compile`
        and `train.prior_bias` when off, so the specs and hashes of members made before those fields existed stay
        the same (a member trained with the prior bias, the default since, has a new hash and is retrained)."""
        spec = dataclasses.asdict(self)
        for key, default in BUILDER_FIELDS.items():
            if self.arch != CUSTOM and spec[key] == default:
                del spec[key]
        for key, default in PSEUDO_FIELDS.items():
            if not self.train.pseudo and spec["train"][key] == default:
                del spec["train"][key]
        for key, default in DEVICE_FIELDS.items():
            if spec["train"][key] == default:
                del spec["train"][key]
        if not self.predict.compile:  # added later: the specs of members made before it stay the same
            del spec["predict"]["compile"]
        if not self.train.prior_bias:  # the recipe before the prior bias: those members' hashes stay
            del spec["train"]["prior_bias"]
        return spec

    def __hash__(self) -> int:  # `builder_args` is a dict, which Python cannot hash: use the spec's sha256
        return hash(self.hash)

    @property
    def hash(self) -> str:
        """sha256 of everything that shapes the member's results."""
        shaping = self.to_dict()
        for key in LOADING_FIELDS:  # how batches are loaded does not change the results
            shaping["train"].pop(key, None)
        text = json.dumps(shaping, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def member_name(arch: str, encoder: str, height: int) -> str:
    """`<arch>_<encoder>_<height>`, the house naming (e.g. unet_resnet34_512)."""
    parts = [arch] + ([encoder.replace("tu-", "")] if encoder else []) + [str(height)]
    return "_".join(parts)
