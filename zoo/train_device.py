"""How a PyTorch training run uses its machine: the device settings of `zoo.spec.TrainConfig` resolved for CUDA
or the CPU. A pure function of the settings and the machine (no torch here), so a GPU box's values are testable
on a laptop.

"auto" gives a GPU box what keeps the card busy (worker processes that stay up, pinned memory, channels-last,
bfloat16 autocast where the card has it) and the CPU exactly what the demo and the tests were made with: the
main process loads the batches, the default layout, float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from zoo.spec import TrainConfig

__all__ = ["MAX_AUTO_WORKERS", "DeviceSettings", "loader_workers", "resolve_train_device"]

MAX_AUTO_WORKERS = 8  # past this, decoding and augmenting full-size photos rarely waits on more processes


@dataclass(frozen=True)
class DeviceSettings:
    """The resolved settings: what the DataLoader, the model's layout and autocast are given."""

    num_workers: int
    persistent_workers: bool  # only ever True with workers (the DataLoader refuses it without)
    prefetch_factor: int | None  # None without workers (the DataLoader refuses a value)
    pin_memory: bool
    channels_last: bool
    precision: str  # float32 (autocast off) | bfloat16 | float16 (with a gradient scaler)
    compile: bool

    @property
    def scaled(self) -> bool:
        """float16 gradients underflow without a scaler; bfloat16 and float32 need none."""
        return self.precision == "float16"


def loader_workers(num_workers: int | str, on_gpu: bool, n_cpus: int | None = None) -> int:
    """`train.num_workers` as a count: auto = min(MAX_AUTO_WORKERS, cores) with a GPU, 0 (the main process) without."""
    if num_workers != "auto":
        return int(num_workers)
    return min(MAX_AUTO_WORKERS, n_cpus or os.cpu_count() or 1) if on_gpu else 0


def resolve_train_device(
    cfg: TrainConfig, device_type: str, auto_precision: str = "float32", n_cpus: int | None = None
) -> DeviceSettings:
    """`cfg`'s device settings on a `device_type` ("cuda" or "cpu") machine with `n_cpus` cores (None = this one's).

    `auto_precision` is what `precision: auto` means there, as `zoo.torch_member.amp_dtype` decides it (the one
    home of that rule): "bfloat16" or "float16" on CUDA; on the CPU auto is float32 whatever it says.
    """
    on_gpu = device_type == "cuda"
    workers = loader_workers(cfg.num_workers, on_gpu, n_cpus)
    precision = cfg.precision if cfg.precision != "auto" else auto_precision if on_gpu else "float32"
    return DeviceSettings(
        num_workers=workers,
        persistent_workers=bool(workers) and cfg.persistent_workers,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        pin_memory=on_gpu,
        channels_last=on_gpu if cfg.channels_last == "auto" else bool(cfg.channels_last),
        precision=precision,
        compile=cfg.compile,
    )
