"""The member families: one row per framework saying which `arch:` values it owns and where its code is.
Building, fold training, loading a trained member and the catalogue tests all dispatch through this table.

Every function is named as a lazy "module:function" string, imported on first use, so reading the table
(as `zoo.spec` does to validate a config) loads no framework, and predicting maps never imports a training
loop. A family's own rules for specs (what its loop cannot honour, its default training settings) are rows
of the table too; `zoo.spec` applies them.

Adding a framework: write its model builder, training function and member class (the PyTorch and Keras
families are laid out alike: `<fw>_models`, `<fw>_losses`, `train_<fw>`, `<fw>_member`), then add a row.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from zoo.archs import CUSTOM, SMP_ARCHS

if TYPE_CHECKING:  # zoo.spec reads this table: only type names come back from it
    from zoo.fold_data import FoldData
    from zoo.spec import MemberSpec

Net = Callable[[np.ndarray], np.ndarray]


class Member(Protocol):
    """A trained member, whatever its framework: photos in, probability maps out."""

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 photos (and their angles 1..16, when known) -> (N, H, W) float32 in [0, 1]."""
        ...


@dataclass(frozen=True)
class Family:
    """One framework's members: their archs and the "module:function" names of their code."""

    name: str  # MemberSpec.framework
    title: str  # as messages name it
    archs: tuple[str, ...]  # the `arch:` values that are this family's
    train: str  # (spec, FoldData, work_dir, progress, board_dir) -> the fold's checkpoint Path
    load: str  # (spec, checkpoint paths) -> Member; several checkpoints are averaged (the test maps)
    build: str = ""  # spec -> an untrained network ("": the family has none)
    net: str = ""  # (spec, networks) -> Net, their mean probability: (B, h, w, 3) uint8 -> (B, h, w) float32
    looks_at_photos: bool = True  # False: crops, tiles and pseudo-labels cannot apply
    train_defaults: dict[str, Any] = field(default_factory=dict)  # under the config's `zoo.train` and the member's
    # What its loop cannot honour: (key, the value(s) that are fine, "a|b" or a tuple for several; why / the fix)
    unsupported: tuple[tuple[str, object, str], ...] = ()


def _table(families: list[Family]) -> dict[str, Family]:
    """{name: family}; a duplicate family name or an arch claimed twice fails at import."""
    names, archs = [f.name for f in families], [arch for f in families for arch in f.archs]
    duplicates = sorted({n for group in (names, archs) for n in group if group.count(n) > 1})
    if duplicates:
        raise ValueError(f"zoo.families: {duplicates} named twice")
    return {family.name: family for family in families}


FAMILIES = _table(
    [
        Family(
            "baseline",
            "baseline",
            ("avg_mask",),
            train="zoo.avg_mask:train_avg_mask",
            load="zoo.avg_mask:AvgMaskMember",
            looks_at_photos=False,
        ),
        Family(
            "torch",
            "PyTorch",
            ("simple_cnn", *SMP_ARCHS, CUSTOM),
            train="zoo.train_torch:train_fold",
            load="zoo.torch_member:TorchMember",
            build="zoo.torch_models:build_torch_model",
            net="zoo.torch_member:member_net",
        ),
        Family(
            "keras",
            "Keras",
            ("keras_unet",),
            train="zoo.train_keras:train_keras_fold",
            load="zoo.keras_member:KerasMember",
            build="zoo.keras_models:build_keras_unet",
            net="zoo.keras_member:member_net",
            train_defaults={"optimizer": "rmsprop", "lr": 1e-3},  # R2's RMSprop (1e-4 at full scale; higher for demos)
            unsupported=(
                ("train.ema", 0.0, "EMA weights are PyTorch-only; remove it or use a PyTorch member"),
                ("train.swa_epochs", 0, "SWA is PyTorch-only; remove it or use a PyTorch member"),
                ("train.loss", "bce_dice|bce_logdice", "the Keras loop has bce_dice and bce_logdice; pick one"),
                ("encoder_weights", None, "the Keras U-Net has no pretrained encoder; remove it or use an smp member"),
                ("train.pseudo", "", "pseudo-label training is PyTorch-only; remove it or use a PyTorch member"),
                ("train.channels_last", ("auto", False), "channels-last is PyTorch's; remove it or leave it at auto"),
                ("train.precision", "auto", "the Keras loop takes mixed float16 on a GPU itself; remove it"),
                ("train.compile", False, "train-time torch.compile is PyTorch's; remove it or use a PyTorch member"),
            ),
        ),
    ]
)
ARCH_FAMILIES = {arch: family for family in FAMILIES.values() for arch in family.archs}  # every valid `arch:`


def family_of(arch: str) -> Family:
    """The family of `arch`; ValueError listing the valid archs."""
    if arch not in ARCH_FAMILIES:
        raise ValueError(f"arch {arch!r} unknown; valid: {', '.join(ARCH_FAMILIES)}")
    return ARCH_FAMILIES[arch]


def build_network(spec: MemberSpec) -> Any:
    """An untrained network for `spec` in its framework (a torch nn.Module, a keras.Model)."""
    return _function(spec, "build")(spec)


def member_net(spec: MemberSpec, networks: list) -> Net:
    """`net((B, h, w, 3) uint8) -> (B, h, w) float32`: the mean probability of `networks` of `spec`'s framework."""
    return _function(spec, "net")(spec, networks)


def train_member_fold(
    spec: MemberSpec, data: FoldData, work_dir: Path, progress: bool = True, board_dir: Path | None = None
) -> Path:
    """Train the member on one fold; return the checkpoint its predictions load from. `board_dir` is the
    folder for its TensorBoard events (None: none written)."""
    return _function(spec, "train")(spec, data, work_dir, progress, board_dir)


def load_member(spec: MemberSpec, checkpoint_paths: list[Path]) -> Member:
    """The trained member for `spec` from its fold checkpoints (several are averaged)."""
    return _function(spec, "load")(spec, checkpoint_paths)


def _function(spec: MemberSpec, role: str) -> Callable:
    """The function `spec`'s family names for `role` ("train", "load", "build", "net"), imported now."""
    family = spec.family
    target = getattr(family, role)
    if not target:
        raise ValueError(f"member {spec.name}: the {family.title} family (arch {spec.arch}) has no `{role}`")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
