"""The member catalogue: a plain dict of named specs, and resolving a config's `zoo:` section.

A config lists members by catalogue name (`- unet_resnet18_128`), by name with overrides
(`- {name: unet_resnet18_128, train: {epochs: 6}}`), or in full (`- {arch: fpn, encoder: ...}`).
`zoo.train` sets training defaults for every member; a member's own `train:` wins over them.
"""
from __future__ import annotations

import dataclasses

from zoo.spec import MemberSpec, TrainConfig, member_name

KERAS_TRAIN = {"optimizer": "rmsprop", "lr": 1e-3}  # R2 used RMSprop (1e-4 at full scale; higher for short demos)


def _spec(arch: str, height: int, width: int, encoder: str = "", **fields) -> MemberSpec:
    return MemberSpec(member_name(arch, encoder, height), arch, height, width, encoder, **fields)


def _catalogue(specs: list[MemberSpec]) -> dict[str, MemberSpec]:
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate member names in the catalogue: {duplicates}")
    return {s.name: s for s in specs}


SMALL_DECODER = (64, 32, 16, 8)
MEMBERS = _catalogue([
    # Baselines after R2: the mean training mask (one per angle) and a 3-layer CNN.
    _spec("avg_mask", 128, 192),
    _spec("simple_cnn", 128, 192),
    # CPU-sized members for the synthetic demo (Kaggle aspect 1.5: W = 1.5 H).
    _spec("keras_unet", 64, 96, depth=3, filters=16),
    _spec("keras_unet", 128, 192, depth=4, filters=16),
    _spec("unet", 64, 96, "resnet18", decoder_channels=SMALL_DECODER),
    _spec("unet", 128, 192, "resnet18", decoder_channels=SMALL_DECODER),
    _spec("fpn", 128, 192, "mobilenet_v2"),
    _spec("linknet", 64, 96, "tu-mobilenetv3_small_050"),
    _spec("linknet", 128, 192, "tu-mobilenetv3_small_050"),
    _spec("linknet", 128, 192, "efficientnet-b0"),
    _spec("unet", 64, 96, "tu-test_resnet", decoder_channels=SMALL_DECODER),  # for tests
    # GPU members for the real competition: resolution is the strongest single lever.
    _spec("keras_unet", 1024, 1536, depth=6, filters=32),
    _spec("unet", 512, 768, "resnet34"),
    _spec("unet", 1024, 1536, "resnet34"),
    _spec("unet", 1280, 1920, "resnet34"),  # full resolution, 1918 padded to 1920
    _spec("linknet", 1280, 1920, "resnet34"),
    _spec("fpn", 1024, 1536, "efficientnet-b0"),
    _spec("unet", 1024, 1536, "efficientnet-b0"),
])


def resolve_members(entries: list, train_defaults: dict | None = None) -> list[MemberSpec]:
    """MemberSpecs for a config's `zoo.members` list; ValueError naming the bad entry."""
    specs = []
    for index, entry in enumerate(entries):
        specs.append(_resolve(entry, train_defaults or {}, f"zoo.members[{index}]"))
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"zoo.members: {name} is listed twice; give one of them another `name:`")
    return specs


def _resolve(entry: object, train_defaults: dict, where: str) -> MemberSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a member name or a mapping, got {entry!r}")
    entry = dict(entry)
    train = {**train_defaults, **(entry.pop("train", None) or {})}
    base = MEMBERS.get(entry.get("name", ""))
    if base is None and "arch" not in entry:
        raise ValueError(f"{where}: unknown member {entry.get('name')!r}; valid names: {', '.join(MEMBERS)} "
                         "(or define one with `arch:`, `height:`, `width:`)")
    fields = {f.name for f in dataclasses.fields(MemberSpec)}
    for key in list(entry) + [f"train.{k}" for k in train]:
        name = key.removeprefix("train.")
        valid = fields if not key.startswith("train.") else {f.name for f in dataclasses.fields(TrainConfig)}
        if name not in valid:
            raise ValueError(f"{where}: unknown key `{key}` (valid: {', '.join(sorted(valid))})")
    if "decoder_channels" in entry:
        entry["decoder_channels"] = tuple(entry["decoder_channels"])
    if base is not None:
        spec = dataclasses.replace(base, **entry)
    else:
        entry.setdefault("name", member_name(entry["arch"], entry.get("encoder", ""), entry.get("height", 0)))
        spec = MemberSpec(**entry)
    keras_defaults = KERAS_TRAIN if spec.arch == "keras_unet" else {}
    return dataclasses.replace(spec, train=TrainConfig(**{**keras_defaults, **train}))
