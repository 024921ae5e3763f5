"""The synthetic studio: Kaggle layout, determinism, masks, colour shares and annotation habits."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from carvana.errors import WorkbenchError
from carvana.rle import rle_decode, rle_problem
from carvana.synth import generate, save_preview
from carvana.synth.annotate import annotate, jitter_outline
from carvana.synth.camera import Camera, yaw_matrix
from carvana.synth.car import build_car
from carvana.synth.catalog import (
    JITTER_PX_AT_FULL_SIZE,
    P_BOUNDARY_JITTER,
    P_FILL_SPOKE_GAPS,
    P_INCLUDE_THIN_PARTS,
    PAINTS,
    WHITE_OR_SILVER,
    AnnotationPolicy,
    draw_annotation_policy,
    draw_car,
    draw_paint,
)
from carvana.synth.geometry import Mesh, clip_half_plane, extrude, pack
from carvana.synth.raster import Canvas, face_planes
from carvana.synth.render import Layers, render_view
from carvana.synth.writer import car_rng, write_mask_gif

SIZE = (96, 64)
N_TRAIN, N_TEST = 2, 1


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, N_TRAIN, N_TEST, size=SIZE, seed=7, progress=False)
    return out


def test_layout_has_every_file_and_nothing_half_written(data_dir: Path) -> None:
    names = {p.name for p in data_dir.iterdir()}
    assert names == {"train", "train_masks", "test", "train_masks.csv", "metadata.csv",
                     "sample_submission.csv", "test_masks.csv"}
    assert not list(data_dir.parent.glob(".data.tmp-*"))
    train = sorted(p.name for p in (data_dir / "train").iterdir())
    test = sorted(p.name for p in (data_dir / "test").iterdir())
    assert len(train) == 16 * N_TRAIN and len(test) == 16 * N_TEST
    for name in train + test:
        assert re.fullmatch(r"[0-9a-f]{12}_(0[1-9]|1[0-6])\.jpg", name)
    for folder, names_in in (("train", train), ("test", test)):
        cars = {n[:12] for n in names_in}
        for car in cars:
            assert [f"{car}_{a:02d}.jpg" in names_in for a in range(1, 17)] == [True] * 16
        with Image.open(data_dir / folder / names_in[0]) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == SIZE


def test_gif_masks_are_palette_0_1_and_match_the_csv(data_dir: Path) -> None:
    rows = _read_csv(data_dir / "train_masks.csv")
    imgs = [r["img"] for r in rows]
    assert imgs == sorted(imgs) == sorted(p.name for p in (data_dir / "train").iterdir())
    for row in rows:
        with Image.open(data_dir / "train_masks" / row["img"].replace(".jpg", "_mask.gif")) as im:
            assert im.mode == "P"
            gif = np.array(im)
        assert set(np.unique(gif)) <= {0, 1}
        assert gif.shape == SIZE[::-1]
        np.testing.assert_array_equal(rle_decode(row["rle_mask"], gif.shape), gif)
        assert 0.02 < gif.mean() < 0.5, row["img"]  # a car, not an empty or full frame


def test_submission_and_test_truth_cover_exactly_the_test_photos(data_dir: Path) -> None:
    test = sorted(p.name for p in (data_dir / "test").iterdir())
    sample = _read_csv(data_dir / "sample_submission.csv")
    truth = _read_csv(data_dir / "test_masks.csv")
    assert [r["img"] for r in sample] == test
    assert [r["img"] for r in truth] == test
    n_pixels = SIZE[0] * SIZE[1]
    for row in sample + truth:
        assert row["rle_mask"] and rle_problem(row["rle_mask"], n_pixels) is None
    areas = [rle_decode(r["rle_mask"], SIZE[::-1]).mean() for r in truth]
    assert min(areas) > 0.02 and max(areas) < 0.5


def test_metadata_has_every_car_once(data_dir: Path) -> None:
    rows = _read_csv(data_dir / "metadata.csv")
    assert list(rows[0]) == ["id", "year", "make", "model", "trim1", "trim2"]
    cars = {p.name[:12] for folder in ("train", "test") for p in (data_dir / folder).iterdir()}
    assert sorted(r["id"] for r in rows) == [r["id"] for r in rows] == sorted(cars)
    for row in rows:
        assert 2000 <= int(row["year"]) <= 2020 and row["make"] and row["model"] and row["trim1"] and row["trim2"]


def test_same_seed_same_bytes_other_seed_differs_car_i_stable(tmp_path: Path, data_dir: Path) -> None:
    again = tmp_path / "again"
    generate(again, N_TRAIN, N_TEST, size=SIZE, seed=7, progress=False)
    assert _files(again) == _files(data_dir)
    fewer = tmp_path / "fewer"
    generate(fewer, 1, 0, size=SIZE, seed=7, progress=False)
    first_car = sorted(_read_csv(fewer / "metadata.csv"), key=lambda r: r["id"])[0]["id"]
    for name in (p.name for p in (fewer / "train").iterdir()):
        assert name.startswith(first_car)
        assert (fewer / "train" / name).read_bytes() == (data_dir / "train" / name).read_bytes()
    other = tmp_path / "other"
    generate(other, N_TRAIN, N_TEST, size=SIZE, seed=8, progress=False)
    assert set(_files(other)) != set(_files(data_dir))  # other car ids


def test_refuses_a_non_empty_out_dir_and_accepts_an_empty_one(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(WorkbenchError, match="not an empty folder"):
        generate(full, 1, 0, size=SIZE, progress=False)
    assert (full / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, 1, 0, size=(64, 48), progress=False)
    assert len(list((empty / "train").iterdir())) == 16
    with pytest.raises(WorkbenchError, match="size"):
        generate(tmp_path / "tiny", 1, 0, size=(8, 8), progress=False)


def test_mask_gif_of_an_empty_mask_stays_palette_0(tmp_path: Path) -> None:
    path = tmp_path / "m.gif"
    write_mask_gif(np.zeros((5, 7), np.uint8), path)
    with Image.open(path) as im:
        assert im.mode == "P" and np.array(im).max() == 0 and im.size == (7, 5)


def test_preview_is_a_grid_of_cars_by_16_angles(tmp_path: Path, data_dir: Path) -> None:
    out = save_preview(data_dir, tmp_path / "p" / "preview.png", n_cars=5)
    with Image.open(out) as im:
        assert im.size == (16 * (SIZE[0] + 2) - 2, N_TRAIN * (SIZE[1] + 2) - 2)
    with pytest.raises(WorkbenchError, match="no train photos"):
        save_preview(tmp_path, tmp_path / "x.png")


def test_front_views_are_narrower_than_side_views() -> None:
    spec = draw_car(car_rng(0, 0, 0))
    packed = build_car(spec)
    widths = {}
    for angle in (1, 5, 9, 13):
        _, layers = render_view(packed, spec, angle, (240, 160), np.random.default_rng(0))
        cols = np.flatnonzero(layers.solid.any(axis=0))
        widths[angle] = cols.max() - cols.min()
    assert max(widths[1], widths[9]) < 0.6 * min(widths[5], widths[13])
    assert 0.55 < widths[5] / 240 < 0.95  # roughly the share of the frame a real side view takes


def test_full_size_frame_renders() -> None:
    spec = draw_car(car_rng(0, 0, 1))
    image, layers = render_view(build_car(spec), spec, 3, (1918, 1280), np.random.default_rng(0))
    assert image.shape == (1280, 1918, 3) and image.dtype == np.uint8
    assert 0.05 < layers.solid.mean() < 0.4


def test_white_and_silver_are_a_sizeable_share() -> None:
    names = [draw_paint(np.random.default_rng(i))[0] for i in range(3000)]
    share = np.mean([n in WHITE_OR_SILVER for n in names])
    expected = sum(PAINTS[n][0] for n in WHITE_OR_SILVER) / sum(p[0] for p in PAINTS.values())
    assert abs(share - expected) < 0.03 and share > 0.35
    cars = [draw_car(car_rng(0, 0, i)) for i in range(150)]
    assert np.mean([c.paint_name in WHITE_OR_SILVER for c in cars]) > 0.3
    assert len({c.body.name for c in cars}) == 7 and len({c.metadata["make"] for c in cars}) == 8


def test_annotation_policy_rates_match_the_documented_constants() -> None:
    policies = [draw_annotation_policy(np.random.default_rng(i)) for i in range(4000)]
    assert abs(np.mean([p.include_thin_parts for p in policies]) - P_INCLUDE_THIN_PARTS) < 0.03
    assert abs(np.mean([p.fill_spoke_gaps for p in policies]) - P_FILL_SPOKE_GAPS) < 0.03
    jitters = np.array([p.jitter_px for p in policies])
    assert abs(np.mean(jitters > 0) - P_BOUNDARY_JITTER) < 0.03
    assert jitters[jitters > 0].min() >= JITTER_PX_AT_FULL_SIZE[0] and jitters.max() <= JITTER_PX_AT_FULL_SIZE[1]


def test_annotate_follows_the_policy() -> None:
    solid = np.zeros((40, 60), bool)
    solid[10:30, 10:50] = True
    thin = np.zeros_like(solid)
    thin[2:10, 30] = True  # an antenna
    discs = np.zeros_like(solid)
    discs[28:36, 14:22] = True  # a wheel disc reaching below the body
    layers = Layers(solid, thin, discs)
    exact = annotate(layers, AnnotationPolicy(False, False, 0.0), np.random.default_rng(0))
    np.testing.assert_array_equal(exact, solid)
    with_thin = annotate(layers, AnnotationPolicy(True, False, 0.0), np.random.default_rng(0))
    np.testing.assert_array_equal(with_thin, solid | thin)
    filled = annotate(layers, AnnotationPolicy(True, True, 0.0), np.random.default_rng(0))
    np.testing.assert_array_equal(filled, solid | thin | discs)
    assert exact.dtype == np.uint8 and set(np.unique(filled)) == {0, 1}


def test_jitter_moves_the_outline_a_little_and_only_the_outline() -> None:
    mask = np.zeros((200, 300), bool)
    mask[50:150, 60:240] = True
    wobbly = jitter_outline(mask, 2.0, np.random.default_rng(3))
    changed = wobbly != mask
    assert changed.any()
    assert abs(int(wobbly.sum()) - int(mask.sum())) < 0.05 * mask.sum()
    rows, cols = np.mgrid[0:200, 0:300]
    edge_distance = np.minimum.reduce([np.abs(rows - 50), np.abs(rows - 150), np.abs(cols - 60), np.abs(cols - 240)])
    assert edge_distance[changed].max() <= 8  # within a few sigma of the outline
    assert jitter_outline(mask, 0.1, np.random.default_rng(3)) is mask  # too small to move a pixel


def test_policy_noise_shows_up_in_rendered_layers() -> None:
    """Cars with thin parts have a thin layer outside the solid one; wheels show gaps a filler covers."""
    found_thin = found_gaps = 0
    for i in range(12):
        spec = draw_car(car_rng(0, 0, i))
        _, layers = render_view(build_car(spec), spec, 4, (240, 160), np.random.default_rng(0))
        if spec.antenna or spec.spoiler or spec.roof_rails:
            found_thin += int((layers.thin & ~layers.solid).any())
        found_gaps += int((layers.wheel_discs & ~layers.solid).any())
    assert found_thin >= 3 and found_gaps >= 8


def test_face_planes_match_ray_plane_intersection() -> None:
    """The vectorised 1/depth planes against a slow per-pixel ray cast onto the triangle's plane."""
    camera = Camera((120, 80))
    rng = np.random.default_rng(5)
    for _ in range(5):
        tri = rng.uniform(-1, 1, size=(3, 3)) + np.array([0.0, 0.0, 0.8])
        world = tri @ yaw_matrix(3).T
        cam = camera.to_camera(world)
        normal = np.cross(cam[1] - cam[0], cam[2] - cam[0])
        normal /= np.linalg.norm(normal)
        plane = face_planes(normal[None], cam.mean(axis=0)[None], 1 / cam[:, 2], np.array([0]),
                            camera.focal, (60.0, 40.0))[0]
        for u, v in rng.uniform(0, 80, size=(10, 2)):
            ray = np.array([(u - 60) / camera.focal, -(v - 40) / camera.focal, 1.0])
            depth = normal @ cam[0] / (normal @ ray)
            assert plane[0] * u + plane[1] * v + plane[2] == pytest.approx(1 / depth, rel=1e-9)
        assert plane[3] == pytest.approx(1 / cam[:, 2].max()) and plane[4] == pytest.approx(1 / cam[:, 2].min())


def test_extrude_winds_every_face_outward() -> None:
    mesh = Mesh()
    square = np.array([(0.0, 0.0), (2.0, 0.0), (2.0, 1.0), (0.0, 1.0)])  # counter-clockwise in (x, z)
    quads, cap_hi, cap_lo = extrude(mesh, square, 0.5, -0.5, ["paint"] * 4, "paint")
    packed = pack(mesh)
    centre = np.array([1.0, 0.0, 0.5])
    for f in [*quads, cap_hi, cap_lo]:
        outward = packed.centroids[f] - centre
        assert packed.normals[f] @ outward / np.linalg.norm(outward) > 0.99


def test_clip_half_plane_matches_pixel_test_on_a_concave_polygon() -> None:
    """Clip a star against a slanted half-plane; compare with rasterising the star and testing pixels."""
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    radius = np.where(np.arange(10) % 2 == 0, 180.0, 70.0)
    star = np.column_stack([200 + radius * np.cos(t), 200 + radius * np.sin(t)])
    normal, value = np.array([0.6, 0.8]), 0.6 * 200 + 0.8 * 230
    clipped = clip_half_plane(star, normal, value)

    def raster(poly: np.ndarray) -> np.ndarray:
        canvas = np.zeros((400, 400), np.uint8)
        cv2.fillPoly(canvas, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        return canvas.astype(bool)

    rows, cols = np.mgrid[0:400, 0:400]
    expected = raster(star) & (cols * normal[0] + rows * normal[1] >= value)
    got = raster(clipped)
    assert (got ^ expected).sum() < 0.01 * expected.sum()


def test_canvas_keeps_the_nearest_face_and_decals_fill_parent_holes() -> None:
    canvas = Canvas(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.float32))

    def square(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32) * 16

    box = np.array([0, 0, 20, 20])
    near, far = np.array([0, 0, 0.5, 0.5, 0.5]), np.array([0, 0, 0.2, 0.2, 0.2])  # 1/depth planes
    red, blue, green = (np.array(c, np.uint8) for c in ([255, 0, 0], [0, 0, 255], [0, 255, 0]))
    canvas.polygon([square(2, 2, 12, 12)], box, near, red, decal=False)
    canvas.polygon([square(6, 6, 16, 16)], box, far, blue, decal=False)  # drawn later, but behind
    assert tuple(canvas.image[8, 8]) == (255, 0, 0) and tuple(canvas.image[14, 14]) == (0, 0, 255)
    ring = [square(0, 0, 20, 20), square(5, 5, 15, 15)]  # a face with a hole, nearer than everything
    canvas.polygon(ring, box, np.array([0, 0, 0.9, 0.9, 0.9]), green, decal=False)
    assert tuple(canvas.image[1, 1]) == (0, 255, 0) and tuple(canvas.image[8, 8]) == (255, 0, 0)
    canvas.polygon([square(7, 7, 9, 9)], box, np.array([0, 0, 0.9, 0.9, 0.9]), blue, decal=True)  # in the hole
    assert tuple(canvas.image[8, 8]) == (0, 0, 255)
