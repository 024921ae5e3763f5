"""The built-in synthetic studio: Carvana-like photos and masks in Kaggle's exact layout.

`generate(out_dir, n_cars, n_test_cars, size=, seed=)` writes `train/`, `train_masks/` (palette GIFs
with values 0/1), `train_masks.csv`, `metadata.csv`, `test/`, `sample_submission.csv` and, because
the truth is known, `test_masks.csv`. `save_preview(data_dir, out_png)` draws a contact sheet.

What it models
- Cars as 3-D polygon meshes of seven body types (sedan, coupe, hatchback, wagon, SUV, pickup, van)
  with randomised dimensions: a body extruded from a side profile (bonnet and boot slopes, wheel
  arches, chamfered corners, bevelled shoulder), a tapered greenhouse with glass (windshield, rear
  and side windows between pillars), mirrors, lamps, grille and plates.
- Wheels: dark tyres with lighter spoked rims; the wheels are hollow, so the background or the arch
  lining shows through the gaps between spokes. Ellipses from the side, thin from the front.
- Thin parts on some cars: whip antenna, boot or roof spoiler, roof rails.
- A fixed perspective camera at a slight elevation; the turntable turns the car through 16 yaw
  angles 22.5 degrees apart, angle 01 being the front view. Faces are rasterised with cv2.fillPoly
  behind an inverse-depth buffer (see `raster.py` for why not a plain painter's sort).
- Flat shading per face: Lambert from three studio lights, Blinn-Phong highlights, and the bright
  studio reflected in paint and glass (floor below the horizon, Fresnel at grazing angles).
- A bright studio: wall and floor gradients meeting at a horizon line, a soft shadow under the car
  and darker contact patches under the tyres, vignetting, slight lens softness, sensor noise and
  JPEG compression at a quality drawn from 85-95 per photo.
- Paint colours at fleet-like shares (catalog.PAINTS): white and silver, close to the background,
  are 44% of cars; then black, grey, red, blue and a few others.
- Per-car annotation habits (catalog.draw_annotation_policy), the same for train and test truth:
  P_INCLUDE_THIN_PARTS = 0.6 of cars have antenna/spoiler/rails in the mask, P_FILL_SPOKE_GAPS = 0.5
  have whole wheel discs (background seen through the spokes included), P_BOUNDARY_JITTER = 0.3 have
  an outline wobbling by 1-3 px at 1918 px width. The wobble scales with the width and is skipped
  below 0.35 px, so at 480 px it reaches only some of those cars and barely moves the outline.
- Metadata: year, one of 8 makes (each biased toward some body types), model, trim1, trim2.

What it does not model
- Curved surfaces, smooth shading within a face, textures, door seams, badges, wipers, interiors
  seen through the glass, tinted or open windows, reflections of the car in the floor.
- Real lighting: no cast shadows on the car itself, no ambient occlusion, no inter-reflection.
- Photographic variation beyond noise and JPEG: exposure, white balance, motion, depth of field.
- Real annotation errors (missed parts, polygonal outlines); the masks here are pixel-exact except
  for the per-car habits above.

Speed (one core, shared machine): ~30 ms to render a 480x320 photo, ~50 ms per photo end to end
(render, mask, JPEG, GIF, RLE); ~130 ms / ~200 ms at 1918x1280. Deterministic for a seed; car i of
a split is the same whatever the number of cars.
"""

from carvana.synth.catalog import (
    P_BOUNDARY_JITTER,
    P_FILL_SPOKE_GAPS,
    P_INCLUDE_THIN_PARTS,
    PAINTS,
    AnnotationPolicy,
    draw_annotation_policy,
)
from carvana.synth.preview import save_preview
from carvana.synth.writer import generate

__all__ = [
    "generate",
    "save_preview",
    "AnnotationPolicy",
    "draw_annotation_policy",
    "PAINTS",
    "P_INCLUDE_THIN_PARTS",
    "P_FILL_SPOKE_GAPS",
    "P_BOUNDARY_JITTER",
]
