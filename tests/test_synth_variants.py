"""Studio variants: the default draws what the studio always drew; each other variant moves its dial."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from carvana.dataset import N_ANGLES
from carvana.errors import WorkbenchError
from carvana.synth.car import build_car
from carvana.synth.catalog import WHITE_OR_SILVER, draw_annotation_policy, draw_car
from carvana.synth.render import render_view
from carvana.synth.variants import DEFAULT, VARIANTS, Variant, get_variant
from carvana.synth.writer import car_rng


def _cars(variant: Variant, n: int = 200) -> list:
    return [draw_car(car_rng(0, 0, i), variant) for i in range(n)]


def test_default_variant_is_the_plain_studio() -> None:
    for i in range(20):
        assert draw_car(car_rng(3, 0, i)) == draw_car(car_rng(3, 0, i), DEFAULT)


def test_every_variant_differs_from_the_default_and_draws_valid_cars() -> None:
    for variant in VARIANTS.values():
        cars = _cars(variant, 20)
        assert len({c.car_id for c in cars}) == 20
        if variant is not DEFAULT:
            assert variant != DEFAULT, variant.name


def test_paint_variants_move_the_share_of_pale_cars() -> None:
    def pale_share(name: str) -> float:
        return float(np.mean([c.paint_name in WHITE_OR_SILVER for c in _cars(VARIANTS[name])]))

    default = pale_share("default")
    assert pale_share("pale-fleet") > default + 0.2
    assert pale_share("dark-fleet") < default - 0.2


def test_sloppy_annotators_follow_their_rates() -> None:
    sloppy = VARIANTS["sloppy-annotators"]
    policies = [draw_annotation_policy(np.random.default_rng(i), sloppy) for i in range(3000)]
    assert abs(np.mean([p.fill_spoke_gaps for p in policies]) - sloppy.p_fill_spoke_gaps) < 0.03
    jitters = np.array([p.jitter_px for p in policies])
    assert abs(np.mean(jitters > 0) - sloppy.p_boundary_jitter) < 0.03
    assert jitters[jitters > 0].min() >= sloppy.jitter_px[0]


@pytest.mark.parametrize("name, smaller", [("small-cars", True), ("close-up", False)])
def test_zoom_changes_how_much_of_the_frame_a_car_fills(name: str, smaller: bool) -> None:
    def side_width(variant: Variant) -> float:
        spec = draw_car(car_rng(0, 0, 0), variant)
        _, layers = render_view(build_car(spec), spec, N_ANGLES // 4 + 1, (240, 160), np.random.default_rng(0),
                                variant.zoom)
        cols = np.flatnonzero(layers.solid.any(axis=0))
        return float(cols.max() - cols.min()) / 240

    default, other = side_width(DEFAULT), side_width(VARIANTS[name])
    assert (other < 0.8 * default) if smaller else (other > 1.1 * default)


def test_unknown_variant_is_a_user_error_listing_the_names(tmp_path) -> None:
    with pytest.raises(WorkbenchError, match="small-cars"):
        get_variant("tiny")
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "synth", "--out", str(tmp_path / "d"),
                          "--cars", "1", "--variant", "tiny"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "unknown studio variant" in out.stderr
    assert not (tmp_path / "d").exists()
