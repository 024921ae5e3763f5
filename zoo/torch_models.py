"""PyTorch members: R2's 3-layer CNN and segmentation-models-pytorch decoders with any encoder."""

from __future__ import annotations

import typing
from pathlib import Path

import torch
from torch import nn

from carvana.errors import WorkbenchError
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


def build_torch_model(spec: MemberSpec) -> nn.Module:
    """An untrained model for `spec` that maps (N, 3, H, W) float images to (N, 1, H, W) logits."""
    if spec.arch == "simple_cnn":
        return SimpleCNN()
    import segmentation_models_pytorch as smp

    kinds = {"unet": smp.Unet, "fpn": smp.FPN, "linknet": smp.Linknet}
    kwargs: dict[str, object] = {}
    if spec.arch == "unet" and spec.decoder_channels:
        kwargs["decoder_channels"] = spec.decoder_channels
        kwargs["encoder_depth"] = len(spec.decoder_channels)
    try:
        model = kinds[spec.arch](spec.encoder, encoder_weights=None, classes=1, **kwargs)
    except (KeyError, ValueError, RuntimeError) as error:
        raise WorkbenchError(
            f"member {spec.name}: cannot build {spec.arch} with encoder {spec.encoder!r} ({error})"
        ) from None
    if spec.encoder_weights:
        _load_encoder_weights(model, Path(spec.encoder_weights), spec.name)
    return model


CLASSIFIER_HEADS = ("fc.", "_fc.", "classifier.", "head.", "last_linear.")  # ImageNet heads encoders drop
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # smp's "imagenet" preprocessing


def input_stats(spec: MemberSpec) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) per RGB channel of inputs in [0, 1] for a member with pretrained encoder weights,
    the statistics its encoder was trained with (smp's preprocessing parameters); None without.

    `tu-` encoders read timm's pretrained config (offline); smp's own encoders were all trained on
    ImageNet with the ImageNet statistics (smp fetches the same numbers from the hub at run time)."""
    if not spec.encoder_weights or spec.arch not in ("unet", "fpn", "linknet"):
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
