"""PyTorch members: R2's 3-layer CNN, every segmentation-models-pytorch architecture with any encoder
(through smp's own factory, `smp.create_model`), and your own network from a `module:function` builder.

Whatever builds it, a network maps (B, 3, H, W) float images to (B, 1, H, W) logits; `check_logits`
refuses anything else with one error naming the member, in training and in prediction alike.
"""

from __future__ import annotations

import typing
from pathlib import Path

import torch
from torch import nn

from carvana.errors import WorkbenchError
from zoo.archs import CUSTOM, SMP_ARCHS, import_builder
from zoo.spec import MemberSpec


class SimpleCNN(nn.Module):
    """R2's baseline: conv16 - conv32 - conv1 (5x5), ReLU between; returns logits (N, 1, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 1, 5, padding=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def output_layer(model: nn.Module) -> nn.Conv2d | nn.ConvTranspose2d | None:
    """The network's output layer, whose bias `train.prior_bias` sets: the last registered 2-D convolution with
    one output channel and a bias (smp's segmentation head, SimpleCNN's last conv); None for a network without."""
    found = [
        module
        for module in model.modules()
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and module.out_channels == 1 and module.bias is not None
    ]
    return found[-1] if found else None


def set_output_bias(model: nn.Module, value: float) -> None:
    """Set the bias of the network's `output_layer` to `value` (nothing for a network without one)."""
    layer = output_layer(model)
    if layer is not None and layer.bias is not None:
        with torch.no_grad():
            layer.bias.fill_(value)


def build_torch_model(spec: MemberSpec) -> nn.Module:
    """An untrained model for `spec` that maps (N, 3, H, W) float images to (N, 1, H, W) logits."""
    if spec.arch == "simple_cnn":
        return SimpleCNN()
    if spec.arch == CUSTOM:
        return _build_custom(spec)
    model = _build_smp(spec)
    if spec.encoder_weights:
        _load_encoder_weights(model, Path(spec.encoder_weights), spec.name)
    return model


def _build_smp(spec: MemberSpec) -> nn.Module:
    import segmentation_models_pytorch as smp

    kwargs: dict[str, object] = {}
    if spec.decoder_channels:  # only archs that take them get here (zoo.spec checks)
        kwargs["decoder_channels"] = spec.decoder_channels
        kwargs["encoder_depth"] = len(spec.decoder_channels)
    if SMP_ARCHS[spec.arch].vit_encoder:
        kwargs["dynamic_img_size"] = True  # a ViT made for 224 px squares then takes any padded photo
    kwargs.update(spec.builder_args)  # any other smp option (decoder widths, attention, ...)
    try:
        model = smp.create_model(spec.arch, spec.encoder, encoder_weights=None, classes=1, **kwargs)
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as error:
        raise WorkbenchError(
            f"member {spec.name}: cannot build {spec.arch} with encoder {spec.encoder!r} ({_first_problem(error)})"
        ) from None
    stride = getattr(model.encoder, "output_stride", None)
    if isinstance(stride, int) and spec.multiple % stride:
        raise WorkbenchError(
            f"member {spec.name}: encoder {spec.encoder} down-samples by {stride}, but arch {spec.arch} pads "
            f"photos to multiples of {spec.multiple}; choose an encoder whose output stride divides {spec.multiple}"
        )
    return model


def _build_custom(spec: MemberSpec) -> nn.Module:
    """The user's network: `builder(**builder_args)`, an nn.Module."""
    try:
        model = import_builder(spec.builder)(**spec.builder_args)
    except (ValueError, TypeError) as error:  # a vanished module or arguments the builder does not take
        raise WorkbenchError(f"member {spec.name}: {spec.builder}(**{spec.builder_args}) failed ({error})") from None
    if not isinstance(model, nn.Module):
        raise WorkbenchError(
            f"member {spec.name}: builder {spec.builder} returned a {type(model).__name__}; "
            "it must return a torch nn.Module"
        )
    return model


def check_logits(logits: object, images: torch.Tensor, name: str) -> torch.Tensor:
    """`logits` when they are (B, 1, H, W) for (B, 3, H, W) `images`; one WorkbenchError otherwise."""
    expected = (images.shape[0], 1, *images.shape[2:])
    got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if got != expected:
        raise WorkbenchError(
            f"member {name}: the network maps images {tuple(images.shape)} to {got}; it must return one "
            f"channel of logits at the input's size, (B, 1, H, W) = {expected} (a custom network's input is "
            "the photo padded to `builder_multiple`)"
        )
    return typing.cast(torch.Tensor, logits)


CLASSIFIER_HEADS = ("fc.", "_fc.", "classifier.", "head.", "last_linear.")  # ImageNet heads encoders drop
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # smp's "imagenet" preprocessing


def input_stats(spec: MemberSpec) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) per RGB channel of inputs in [0, 1] for a member with pretrained encoder weights,
    the statistics its encoder was trained with (smp's preprocessing parameters); None without.

    `tu-` encoders read timm's pretrained config (offline); smp's own encoders were all trained on
    ImageNet with the ImageNet statistics (smp fetches the same numbers from the hub at run time)."""
    if not spec.encoder_weights or spec.arch not in SMP_ARCHS:
        return None
    if spec.encoder.startswith("tu-"):
        import timm

        name = spec.encoder.removeprefix("tu-")
        config = timm.models.get_pretrained_cfg(name) if timm.models.is_model_pretrained(name) else None
        if config is not None:
            return tuple(config.mean), tuple(config.std)
    return IMAGENET_STATS


def _load_encoder_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a local encoder state dict (this machine cannot download pretrained weights)."""
    fix = "give the weights file made for this encoder (see README, pretrained encoders) or leave it empty"
    encoder = typing.cast(nn.Module, model.encoder)
    if not path.is_file():
        raise WorkbenchError(f"member {name}: `encoder_weights` file {path} not found; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        state = state.get("state_dict", state)
        # smp's own encoders drop an ImageNet file's classifier head and return nothing: compare keys here
        expected = set(encoder.state_dict())
        missing = sorted(expected - set(state))
        missing += sorted(k for k in set(state) - expected if not k.startswith(CLASSIFIER_HEADS))  # another depth
        encoder.load_state_dict(dict(state), strict=False)
    except (RuntimeError, TypeError, ValueError, OSError, EOFError) as error:
        raise WorkbenchError(
            f"member {name}: `encoder_weights` {path} does not fit encoder "
            f"{encoder.__class__.__name__} ({_first_problem(error)}); {fix}"
        ) from None
    if missing:  # an ImageNet file's classifier head is fine; a half-filled or deeper encoder is not
        raise WorkbenchError(
            f"member {name}: `encoder_weights` {path} does not fit encoder "
            f"{encoder.__class__.__name__} ({len(missing)} weights missing or extra, "
            f"e.g. {missing[0]}); {fix}"
        )


def _first_problem(error: Exception) -> str:
    """The informative line of a load error (torch puts "size mismatch for ..." after a header)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "mismatch" in line or "Missing" in line), lines[0] if lines else "")
    return detail[:160]
