"""Which network a member may name as `arch:`, beside the baselines and the Keras U-Net: every
segmentation_models_pytorch architecture, built through smp's own factory, and `custom`, your own
network from an importable `module:function` (see docs/zoo_custom_members.md).

Framework-free (nothing here imports torch), so `zoo.spec` validates a config without loading a
framework; only a custom member's own module is imported, to check that it is there.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

CUSTOM = "custom"
BUILDER_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
BUILDER_FIX = "give `builder: package.module:function`, a function returning a torch nn.Module"


@dataclass(frozen=True)
class SmpArch:
    """How one smp architecture is built and fed (measured on smp 0.6 with `tu-test_resnet`,
    `resnet18` and, for DPT, `tu-test_vit`)."""

    multiple: int = 32  # input sides must divide by it: the encoder's output stride, or what the decoder needs
    min_side: int = 0  # the smallest input side the decoder accepts (0: any multiple)
    decoder_channels: bool = False  # takes `decoder_channels` (and encoder_depth = their number)
    vit_encoder: bool = False  # needs a timm ViT encoder (`tu-...`), built for any input size


# Every architecture of smp.MODEL_ARCHITECTURES_MAPPING, by smp's own lowercase name (a test keeps the
# two lists equal). Each multiple is the smallest whose every multiple comes back as (B, 1, H, W), unet's
# excepted. `builder_args` that change strides (encoder_depth, encoder_output_stride, upsampling) may
# need another: the build refuses an encoder stride that does not divide it, training a wrong output.
SMP_ARCHS = {
    "unet": SmpArch(decoder_channels=True),  # smp 0.6 takes any size; 32 kept: existing members' maps stay the same
    "unetplusplus": SmpArch(decoder_channels=True),
    "manet": SmpArch(decoder_channels=True),
    "linknet": SmpArch(),
    "fpn": SmpArch(),
    "pspnet": SmpArch(multiple=8),  # encoder_depth 3: features at stride 8
    "deeplabv3": SmpArch(multiple=8),  # dilated encoder, output stride 8
    "deeplabv3plus": SmpArch(multiple=16),  # dilated encoder, output stride 16
    "pan": SmpArch(multiple=16, min_side=128),  # its pyramid pools the stride-16 features three times by 2
    "upernet": SmpArch(),
    "segformer": SmpArch(),
    "dpt": SmpArch(vit_encoder=True),  # patch-16 ViTs (16 fails: the decoder halves their grid once more)
}
# smp.create_model's arguments the workbench sets: the encoder from the member's fields, one channel of logits out
SMP_RESERVED = ("arch", "encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params")


def import_builder(builder: str) -> Callable:
    """The function `builder` ("package.module:function") names; ValueError saying what is missing
    and how to fix it. Importing runs the module's top level, as any import does."""
    if not BUILDER_PATTERN.match(builder):
        raise ValueError(f"`builder` is {builder!r}; {BUILDER_FIX}")
    module_name, function_name = builder.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(
            f"`builder` {builder}: no module {error.name!r} can be imported; install its package or add "
            "its folder to PYTHONPATH (every worker must be able to import it)"
        ) from None
    except Exception as error:  # the user's module failed at import: show why, not our traceback
        raise ValueError(
            f"`builder` {builder}: importing {module_name} failed ({type(error).__name__}: {error})"
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise ValueError(f"`builder` {builder}: module {module_name} has no `{function_name}`; {BUILDER_FIX}")
    if not callable(function):
        raise ValueError(f"`builder` {builder}: `{function_name}` is not callable ({function!r}); {BUILDER_FIX}")
    return function


def check_builder_args(args: object, reserved: tuple[str, ...] = ()) -> None:
    """`builder_args` is a mapping of keyword names (none of `reserved`) to JSON values: they are hashed
    and saved with the member."""
    if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
        raise ValueError(f"`builder_args` must be a mapping of keyword names to values, got {args!r}")
    taken = sorted(set(args) & set(reserved))
    if taken:
        raise ValueError(f"`builder_args` sets {', '.join(taken)}, which the workbench sets; remove it")
    try:
        json.dumps(args, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`builder_args` must hold plain values (numbers, strings, lists, mappings): {error}"
        ) from None
