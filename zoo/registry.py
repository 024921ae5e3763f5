"""The member catalogue: a plain dict of named specs, and resolving a config's `zoo:` section.

A config lists members by catalogue name (`- unet_resnet18_128`), by name with overrides
(`- {name: unet_resnet18_128, train: {epochs: 6}}`), or in full (`- {arch: fpn, encoder: ...}`, any smp
architecture, or `- {arch: custom, builder: "package.module:function", ...}` for your own network).
`zoo.train` and `zoo.predict` set defaults for every member; a member's own `train:` and `predict:`
win over them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from zoo.archs import CUSTOM
from zoo.families import ARCH_FAMILIES
from zoo.spec import MemberSpec, PredictConfig, TrainConfig, member_name


def _spec(arch: str, height: int, width: int, encoder: str = "", **fields) -> MemberSpec:
    return MemberSpec(member_name(arch, encoder, height), arch, height, width, encoder, **fields)


def _catalogue(specs: list[MemberSpec]) -> dict[str, MemberSpec]:
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate member names in the catalogue: {duplicates}")
    return {s.name: s for s in specs}


SMALL_DECODER = (64, 32, 16, 8)
MEMBERS = _catalogue(
    [
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
        # Full resolution: the photos' own 1280x1918, padded to 1280x1920 for the network, never stretched.
        _spec("unet", 1280, 1918, "resnet34"),
        _spec("linknet", 1280, 1918, "resnet34"),
        # Too large to train or predict whole: 1024x1024 crops (4th place), 1024x1024 tiles blended over 128 px.
        _spec(
            "unet",
            1280,
            1918,
            "resnet50",
            train=TrainConfig(crop=(1024, 1024)),
            predict=PredictConfig(tile=(1024, 1024), overlap=128),
        ),
        _spec("fpn", 1024, 1536, "efficientnet-b0"),
        _spec("unet", 1024, 1536, "efficientnet-b0"),
    ]
)


def resolve_members(
    entries: list, train_defaults: dict | None = None, predict_defaults: dict | None = None
) -> list[MemberSpec]:
    """MemberSpecs for a config's `zoo.members` list; ValueError naming the bad entry."""
    specs = []
    for index, entry in enumerate(entries):
        specs.append(_resolve(entry, train_defaults or {}, predict_defaults or {}, f"zoo.members[{index}]"))
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"zoo.members: {name} is listed twice; give one of them another `name:`")
    return specs


def _resolve(entry: object, train_defaults: dict, predict_defaults: dict, where: str) -> MemberSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a member name or a mapping, got {entry!r}")
    entry = dict(entry)
    base = MEMBERS.get(entry.get("name", ""))
    # Catalogue settings first, then the config's defaults, then the member's own.
    base_train = _changed(base.train, TrainConfig()) if base else {}
    base_predict = _changed(base.predict, PredictConfig()) if base else {}
    train = {**base_train, **train_defaults, **(entry.pop("train", None) or {})}
    predict = {**base_predict, **predict_defaults, **(entry.pop("predict", None) or {})}
    if base is None and "arch" not in entry:
        raise ValueError(
            f"{where}: unknown member {entry.get('name')!r}; valid names: {', '.join(MEMBERS)} "
            "(or define one with `arch:`, `height:`, `width:`)"
        )
    _check_keys(entry, train, predict, where)
    if "decoder_channels" in entry:
        entry["decoder_channels"] = tuple(entry["decoder_channels"])
    arch = entry.get("arch", base.arch if base else "")
    # the family's training defaults come under the config's (not an arch: MemberSpec says why)
    family_train = ARCH_FAMILIES[arch].train_defaults if isinstance(arch, str) and arch in ARCH_FAMILIES else {}
    try:
        entry.update(train=TrainConfig(**{**family_train, **train}), predict=PredictConfig(**predict))
    except ValueError as error:
        raise ValueError(f"member {entry.get('name') or where}: {error}") from None
    if base is not None:
        return dataclasses.replace(base, **entry)
    # a custom member is named after its builder function: `<function>_<height>`
    family = str(entry.get("builder", "")).rpartition(":")[2] if arch == CUSTOM else arch
    entry.setdefault("name", member_name(family or arch, entry.get("encoder", ""), entry.get("height", 0)))
    return MemberSpec(**entry)


def _changed(config: Any, default: Any) -> dict:
    """The fields of a config dataclass that differ from its defaults."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def _check_keys(entry: dict, train: dict, predict: dict, where: str) -> None:
    valid = {
        "": {f.name for f in dataclasses.fields(MemberSpec)} - {"train", "predict"},
        "train.": {f.name for f in dataclasses.fields(TrainConfig)},
        "predict.": {f.name for f in dataclasses.fields(PredictConfig)},
    }
    if "hflip_tta" in train:
        raise ValueError(f"{where}: `train.hflip_tta` is now `predict.tta` ([hflip], the default, or []): move the key")
    for prefix, keys in (("", entry), ("train.", train), ("predict.", predict)):
        for key in keys:
            if key not in valid[prefix]:
                raise ValueError(f"{where}: unknown key `{prefix}{key}` (valid: {', '.join(sorted(valid[prefix]))})")
