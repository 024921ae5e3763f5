"""Test prediction at 1918x1280: the overlapped pipeline (zoo.pipeline) against the synchronous loop, with
a stand-in network whose time per chunk is fixed (a GPU at a chosen photos-per-second), real JPEG decoding
and real map encoding and writing into a store, through `zoo.runner.predict_maps`; then decode and write
throughput per core, and the cores one GPU needs to be fed at 50, 100 and 200 photos per second.

    nice -n 10 .venv/bin/python -m bench.bench_pipeline [--photos 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import machine_description, markdown_table, replace_results_section
from carvana.dataset import load_image
from oof import Store
from oof.format import encode_map, to_uint8
from zoo.runner import PREDICT_CHUNK, predict_maps

TITLE = "Test prediction: overlapped pipeline vs synchronous loop (1918x1280)"
SIZE = (1918, 1280)  # (W, H)
GPU_RATES = (50, 100, 200)  # photos per second one GPU could predict: the cores needed to keep up


class StandIn:
    """A member that 'predicts' a chunk in a fixed time (sleeping, as a GPU leaves the CPU free) and returns
    a smooth car-like map, so encoding costs what a real map's does."""

    def __init__(self, photos_per_second: float, height: int, width: int) -> None:
        self.seconds_per_photo = 1.0 / photos_per_second
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ellipse = ((yy - height * 0.55) / (height * 0.3)) ** 2 + ((xx - width / 2) / (width * 0.4)) ** 2
        self.map = cv2.GaussianBlur((ellipse < 1).astype(np.float32), (0, 0), 3)

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        time.sleep(self.seconds_per_photo * len(images))
        return np.broadcast_to(self.map, (len(images), *self.map.shape))


def make_photos(tmp: Path, n_photos: int) -> list[Path]:
    """`n_photos` JPEGs at 1918x1280: one rendered test car, hard-linked under new names."""
    from carvana.synth import generate

    generate(tmp / "data", 1, 1, size=SIZE, seed=0, progress=False)
    rendered = sorted((tmp / "data" / "test").glob("*.jpg"))
    out = tmp / "photos"
    out.mkdir()
    paths = []
    for i in range(n_photos):
        path = out / f"{i // 16:012x}_{i % 16 + 1:02d}.jpg"
        os.link(rendered[i % len(rendered)], path)
        paths.append(path)
    return paths


def predict_run(
    paths: list[Path], member, store_dir: Path, in_line: bool, resolution=(SIZE[1], SIZE[0]), load=load_image
) -> dict[str, float]:
    """One test prediction of `paths` into a fresh store; seconds per photo of each stage and the wall."""
    os.environ["WORKBENCH_PREDICT_IN_LINE"] = "1" if in_line else "0"
    by_id = {p.stem: p for p in paths}
    with Store(store_dir).open_member("bench", {"bench": 1}, "0" * 64, resolution) as writer:
        times = predict_maps(
            writer, member, list(by_id), lambda img: load(by_id[img]), "test", resolution, None, "b", False
        )
    return times.per_photo()


def demo_rows(tmp: Path, repeats: int) -> list[list[str]]:
    """`make demo`'s size: 32 test photos at 480x320 through a real (untrained) PyTorch member, the stages
    then competing with PyTorch's own threads for the cores: the pipeline must be no slower."""
    import torch

    from carvana.synth import generate
    from zoo.families import load_member
    from zoo.registry import MEMBERS
    from zoo.torch_models import build_torch_model

    generate(tmp / "demo", 1, 2, size=(480, 320), seed=0, progress=False)
    paths = sorted((tmp / "demo" / "test").glob("*.jpg"))
    rows = []
    for name in ("unet_resnet18_64", "linknet_mobilenetv3_small_050_128"):
        spec = MEMBERS[name]
        torch.save({"model": build_torch_model(spec).state_dict()}, tmp / f"{name}.pt")
        member = load_member(spec, [tmp / f"{name}.pt"] * 3)  # 3 fold models, as the demo's test maps
        member.predict_proba(np.zeros((2, spec.height, spec.width, 3), np.uint8))  # PyTorch's first-call costs

        def load(path: Path, spec=spec) -> np.ndarray:
            return cv2.resize(load_image(path), (spec.width, spec.height), interpolation=cv2.INTER_AREA)

        walls: dict[str, list[float]] = {"sync": [], "pipe": []}
        for r in range(repeats):
            for mode in walls:
                run = predict_run(paths, member, tmp / f"demo-{name}-{mode}-{r}", mode == "sync", (320, 480), load)
                walls[mode].append(run["wall"])
        sync, pipe = statistics.median(walls["sync"]), statistics.median(walls["pipe"])
        rows.append([name, f"{1000 * sync:.1f}", f"{1000 * pipe:.1f}", f"{sync / pipe:.2f}x"])
    return rows


def per_core_rates(paths: list[Path], tmp: Path, proba: np.ndarray) -> dict[str, float]:
    """Photos per second on one thread: JPEG decode, the file read alone (what GPU decoding leaves on the
    CPU), and a map's write (rounded to uint8, zstd-encoded, written atomically)."""
    start = time.perf_counter()
    for path in paths:
        load_image(path)
    decode = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    for path in paths:
        np.fromfile(path, dtype=np.uint8)
    read = len(paths) / (time.perf_counter() - start)
    store = Store(tmp / "rates")
    writer = store.open_member("rates", {"bench": 1}, "0" * 64, proba.shape)
    start = time.perf_counter()
    for path in paths:
        writer.write("test", path.stem, proba)
    write = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in paths:
        encode_map(to_uint8(proba, "bench"))
    encode = len(paths) / (time.perf_counter() - start)
    return {"decode": decode, "read": read, "write": write, "encode": encode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="+", default=[8.0, 30.0], help="stand-in photos per second")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        paths = make_photos(tmp, args.photos)
        rows = []
        for rate in args.rates:
            member = StandIn(rate, SIZE[1], SIZE[0])
            runs: dict[str, list[dict[str, float]]] = {"sync": [], "pipe": []}
            for r in range(args.repeats):  # interleaved, so a busy spell hits both alike
                for mode in ("sync", "pipe"):
                    runs[mode].append(predict_run(paths, member, tmp / f"{rate}-{mode}-{r}", mode == "sync"))
            med = {mode: {k: statistics.median(run[k] for run in runs[mode]) for k in runs[mode][0]} for mode in runs}
            sync, pipe = med["sync"], med["pipe"]
            rows.append(
                [
                    f"{rate:g}",
                    *(f"{1000 * sync[k]:.0f}" for k in ("decode", "predict", "write")),
                    f"{1000 * sync['sum']:.0f}",
                    f"{1000 * sync['wall']:.0f}",
                    f"{1000 * pipe['slowest']:.0f}",
                    f"{1000 * pipe['wall']:.0f}",
                    f"{pipe['wall'] / pipe['slowest']:.2f}",
                    f"{pipe['wall'] / sync['sum']:.2f}",
                    f"{sync['wall'] / pipe['wall']:.2f}x",
                ]
            )
        demo = demo_rows(tmp, args.repeats)
        rates = [per_core_rates(paths, tmp, StandIn(1, SIZE[1], SIZE[0]).map) for _ in range(args.repeats)]
        rate = {k: statistics.median(r[k] for r in rates) for k in rates[0]}
    load_after = os.getloadavg()
    header = [
        "stand-in GPU (photos/s)",
        "sync decode ms/photo",
        "predict",
        "write",
        "sum of stages",
        "sync wall",
        "pipeline slowest stage",
        "pipeline wall",
        "wall / slowest",
        "pipeline wall / sum",
        "speed-up",
    ]
    cpu_per_photo = 1 / rate["decode"] + 1 / rate["write"]
    gpu_decoded = 1 / rate["read"] + 1 / rate["write"]
    cores = [[f"{g}", f"{g * cpu_per_photo:.1f}", f"{g * gpu_decoded:.1f}"] for g in GPU_RATES]
    body = "\n\n".join(
        [
            f"Machine: {machine_description()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
            f"(shared with other jobs). {args.photos} photos at {SIZE[0]}x{SIZE[1]}, chunks of {PREDICT_CHUNK}, "
            f"{os.cpu_count()} decode and write workers; medians of {args.repeats} interleaved runs; "
            "`nice -n 10 .venv/bin/python -m bench.bench_pipeline`. Stage times are each stage's busy time over its "
            "workers, per photo (ms), measured inside the runs (decode and write threads contend for the same cores).",
            markdown_table(header, rows),
            f"One thread at {SIZE[0]}x{SIZE[1]}: JPEG decode {rate['decode']:.1f} photos/s, the file read alone "
            f"{rate['read']:.0f}/s, a map's write (uint8, zstd, atomic file) {rate['write']:.1f}/s "
            f"(of which rounding and zstd encoding {rate['encode']:.1f}/s).",
            "Cores to feed one GPU (estimates: no GPU measured; CPU decode + write per photo from the single-thread "
            "rates above, times the GPU's photos/s; GPU decoding leaves the file read and the write):",
            markdown_table(["GPU photos/s", "cores, CPU decoding", "cores, GPU decoding (nvJPEG)"], cores),
            "`make demo`'s size (32 test photos at 480x320, decoded and resized to the member's size, 3 untrained "
            "fold models averaged with hflip TTA, maps written at 480x320), wall ms per photo:",
            markdown_table(["member", "sync", "pipeline", "speed-up"], demo),
        ]
    )
    print(body)
    replace_results_section(TITLE, body)
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()
