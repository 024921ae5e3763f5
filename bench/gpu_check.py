"""The GPU-only checks of issue 21 item 5: one prepared script for a lent GPU machine's few minutes.

    python -m bench.gpu_check --out DIR            (on the GPU machine; ~6-8 minutes on one H100)
    python -m bench.gpu_check --out DIR --quick    (anywhere: tiny sizes, a few steps; checks the script itself)

1. Training photos per second at 1918x1280 (padded to 1280x1920) for `unet_resnet34_1280`: float16 with a
   gradient scaler and bfloat16 autocast, channels-last, eager and `torch.compile`d, through the settings
   `zoo.train_device` resolves (synthetic batches on the device: the network's rate, not the loader's).
2. Test photos per second at 1918x1280 through `zoo.runner.predict_maps` (decode, predict, write overlapped;
   real JPEGs, a real store), eager and compiled (`predict.compile`), with the GPU's utilisation sampled by
   nvidia-smi meanwhile.
3. `workbench fold-train` of configs/smoke.yaml on CUDA, then the same with `--engine ray` (one GPU per job).

Writes DIR/gpu_check.json and DIR/gpu_check.md (the section for bench/RESULTS.md, with the card's name);
each check is timed out on its own, so one failure leaves the others' figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train_rate(spec, precision: str, channels_last: bool, compiled: bool, batch: int, steps: int) -> float:
    """Training photos per second of `spec`'s network: `steps` optimizer steps on synthetic batches after warm-up."""
    import dataclasses

    import torch

    from zoo.geometry import padded_size
    from zoo.torch_losses import border_px, segmentation_loss
    from zoo.torch_models import build_torch_model
    from zoo.train_device import resolve_train_device

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = dataclasses.replace(spec.train, precision=precision, channels_last=channels_last, compile=compiled)
    run = resolve_train_device(train, device.type, precision)
    model = build_torch_model(spec).to(device)
    layout = torch.channels_last if run.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    stepped = torch.compile(model) if run.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=run.scaled)
    height, width = padded_size(spec.height, spec.width, spec.multiple)
    images = torch.randn(batch, 3, height, width, device=device).contiguous(memory_format=layout)
    masks = (torch.rand(batch, 1, height, width, device=device) > 0.5).float()
    autocast = {"dtype": getattr(torch, run.precision), "enabled": run.precision != "float32"}

    def step() -> None:
        with torch.autocast(device.type, **autocast):
            loss = segmentation_loss(stepped(images), masks, train, border_px(spec.height))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def predict_rate(spec, compiled: bool, paths: list[Path], work: Path) -> dict[str, float]:
    """Test photos per second of `paths` through `predict_maps` (one fold model, the member's TTA views), the
    stages' seconds per photo, and the GPU's mean and median utilisation meanwhile."""
    import dataclasses

    import cv2
    import numpy as np
    import torch

    from bench.bench_pipeline import predict_run
    from carvana.dataset import load_image
    from zoo.families import load_member
    from zoo.torch_models import build_torch_model

    spec = dataclasses.replace(spec, predict=dataclasses.replace(spec.predict, compile=compiled))
    checkpoint = work / f"{spec.name}.pt"
    torch.save({"model": build_torch_model(spec).state_dict()}, checkpoint)
    member = load_member(spec, [checkpoint])
    member.predict_proba(np.zeros((2, spec.height, spec.width, 3), np.uint8))  # warm-up (and compilation)

    def load(path: Path) -> np.ndarray:
        image = load_image(path)
        if image.shape[:2] == (spec.height, spec.width):
            return image
        return cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_AREA)

    with Utilisation() as busy:
        times = predict_run(paths, member, work / f"store-{compiled}", False, (spec.height, spec.width), load)
    return {"photos_per_second": 1 / times["wall"], **{f"{k}_s_per_photo": v for k, v in times.items()},
            **busy.summary()}


class Utilisation:
    """nvidia-smi's GPU utilisation sampled every 0.2 s while the block runs (nothing without nvidia-smi)."""

    def __enter__(self) -> Utilisation:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
        while not self.stop.is_set():
            try:
                self.samples.append(float(subprocess.run(query, capture_output=True, text=True, timeout=5).stdout))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self.stop.wait(0.2)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {"gpu_util_mean": statistics.mean(self.samples), "gpu_util_median": statistics.median(self.samples)}


def fold_train(work: Path, engine: str, timeout: int) -> dict[str, object]:
    """`workbench synth` then `fold-train` of configs/smoke.yaml (every member), locally or on Ray."""
    data, run = work / "smoke-data", work / f"smoke-run-{engine}"
    cli = [sys.executable, "-m", "workbench.cli"]
    if not data.exists():
        subprocess.run([*cli, "synth", "--out", str(data), "--cars", "6", "--test-cars", "2", "--size", "96x64"],
                       check=True, cwd=REPO, capture_output=True, timeout=timeout)
    start = time.perf_counter()
    done = subprocess.run(
        [*cli, "fold-train", "--config", "configs/smoke.yaml", "--data", str(data), "--run-dir", str(run),
         "--engine", engine], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return {"exit": done.returncode, "seconds": time.perf_counter() - start,
            "tail": (done.stdout + done.stderr).strip().splitlines()[-8:]}


def attempt(results: dict, key: str, check, *args) -> None:
    """results[key] = check(*args), or the error's last lines: one failed check leaves the others."""
    start = time.perf_counter()
    try:
        results[key] = check(*args)
    except Exception:  # noqa: BLE001 (a report of what failed, for the figures that did not)
        results[key] = {"error": traceback.format_exc().strip().splitlines()[-3:]}
    print(f"{key}: {results[key]} ({time.perf_counter() - start:.0f} s)", flush=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def card() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (CPU)"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}"


def markdown(results: dict, quick: bool, size: str) -> str:
    from bench.common import markdown_table

    train = [[key.removeprefix("train "), f"{value:.1f}" if isinstance(value, float) else str(value)]
             for key, value in results.items() if key.startswith("train ")]
    predict = [[key.removeprefix("predict "), *(f"{value.get(k, 0):.1f}" if "error" not in value else "-"
                                                for k in ("photos_per_second", "gpu_util_mean", "gpu_util_median"))]
               for key, value in results.items() if key.startswith("predict ")]
    runs = [[key, str(value.get("exit")), f"{value.get('seconds', 0):.0f}"] for key, value in results.items()
            if key.startswith("fold-train")]
    return "\n\n".join([
        f"`python -m bench.gpu_check{' --quick' if quick else ''}` on {results['card']} (torch {results['torch']}).",
        markdown_table([f"training, unet_resnet34_1280 at {size}", "photos/s"], train),
        markdown_table(["test prediction via predict_maps", "photos/s", "GPU util mean %", "median %"], predict),
        markdown_table(["smoke fold-train", "exit", "seconds"], runs),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/_scratch/gpu_check")))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps (checks the script)")
    args = parser.parse_args(argv)
    import dataclasses

    import torch

    from zoo.registry import MEMBERS

    args.out.mkdir(parents=True, exist_ok=True)
    spec = MEMBERS["unet_resnet34_1280"]
    if args.quick:
        spec = dataclasses.replace(spec, height=64, width=96)
    batch, steps, photos = (2, 2, 16) if args.quick else (4, 20, 256)
    results: dict = {"card": card(), "torch": torch.__version__}
    precisions = ("float16", "bfloat16") if torch.cuda.is_available() else ("float32",)
    for precision in precisions:
        for channels_last in (True, False):
            for compiled in (False, True):
                key = f"train {precision}, {'channels-last' if channels_last else 'NCHW'}, " + (
                    "compiled" if compiled else "eager")
                attempt(results, key, train_rate, spec, precision, channels_last, compiled, batch, steps)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        from bench.bench_pipeline import make_photos

        paths = make_photos(Path(tmp), photos)  # real JPEGs at 1918x1280
        for compiled in (False, True):
            attempt(results, f"predict {'compiled' if compiled else 'eager'}", predict_rate, spec, compiled, paths,
                    Path(tmp))
        for engine in ("local", "ray"):
            attempt(results, f"fold-train {engine}", fold_train, Path(tmp), engine, 240)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    text = markdown(results, args.quick, f"{spec.width}x{spec.height}")
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
