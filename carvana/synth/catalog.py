"""What a synthetic car is: body type and dimensions, paint, parts, metadata, annotation policy.

Everything here is drawn from a numpy Generator, so one car's spec depends only on that Generator's
seed. All lengths are metres; colours are RGB 0..255.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from carvana.synth.variants import Variant

# Share of cars per paint colour. White and silver are close to the studio background and make up
# close to half of the real Carvana fleet, which is what makes the real task hard.
PAINTS: dict[str, tuple[float, tuple[int, int, int]]] = {
    "white": (0.26, (238, 238, 235)),
    "silver": (0.18, (188, 191, 195)),
    "black": (0.13, (22, 23, 26)),
    "grey": (0.11, (105, 108, 112)),
    "red": (0.09, (160, 22, 26)),
    "blue": (0.09, (28, 55, 120)),
    "dark_blue": (0.04, (20, 28, 55)),
    "green": (0.03, (30, 75, 50)),
    "beige": (0.04, (190, 170, 135)),
    "orange": (0.03, (215, 110, 25)),
}
WHITE_OR_SILVER = ("white", "silver")

# Annotation noise, drawn once per car (the real masks were drawn per car by people with habits).
P_INCLUDE_THIN_PARTS = 0.6  # the mask covers antenna, spoiler and roof rails
P_FILL_SPOKE_GAPS = 0.5  # the mask covers the whole wheel disc, background seen through spokes included
P_BOUNDARY_JITTER = 0.3  # the mask boundary wobbles smoothly around the true outline
JITTER_PX_AT_FULL_SIZE = (1.0, 3.0)  # wobble scale in pixels at 1918 px width (scaled with width)

# Thin parts, each drawn per car when its body type allows it.
P_WHIP_ANTENNA = 0.35
P_SPOILER = 0.3  # sedans, coupes and hatchbacks
P_ROOF_RAILS = 0.5  # SUVs, wagons and vans


@dataclass(frozen=True)
class BodyType:
    """Ranges (low, high) of a body type's dimensions; see `Dims` for what each means."""

    name: str
    length: tuple[float, float]
    width: tuple[float, float]
    height: tuple[float, float]
    wheel_radius: tuple[float, float]
    clearance: tuple[float, float]
    belt: tuple[float, float]  # belt line height as a fraction of the height
    hood: tuple[float, float]  # bonnet length as a fraction of the length
    cabin: tuple[float, float] | None  # cabin base length / length; None: the cabin runs to the rear
    rake: tuple[float, float]  # windshield run (m) per metre of cabin height
    rear_rake: tuple[float, float]  # rear window run (m) per metre of cabin height
    n_side_windows: int
    bed: bool = False  # pickup: an open bed behind the cab


BODY_TYPES: dict[str, BodyType] = {
    b.name: b
    for b in [
        BodyType(
            "sedan",
            (4.5, 5.0),
            (1.78, 1.88),
            (1.40, 1.50),
            (0.31, 0.34),
            (0.13, 0.16),
            (0.60, 0.66),
            (0.22, 0.27),
            (0.42, 0.48),
            (0.9, 1.3),
            (0.9, 1.4),
            2,
        ),
        BodyType(
            "coupe",
            (4.3, 4.8),
            (1.78, 1.88),
            (1.28, 1.38),
            (0.32, 0.35),
            (0.11, 0.14),
            (0.62, 0.68),
            (0.27, 0.32),
            (0.40, 0.46),
            (1.2, 1.6),
            (1.5, 2.2),
            1,
        ),
        BodyType(
            "hatchback",
            (3.9, 4.35),
            (1.70, 1.80),
            (1.42, 1.52),
            (0.29, 0.32),
            (0.13, 0.16),
            (0.58, 0.63),
            (0.20, 0.24),
            None,
            (0.9, 1.2),
            (0.4, 0.7),
            2,
        ),
        BodyType(
            "wagon",
            (4.6, 4.95),
            (1.78, 1.86),
            (1.45, 1.55),
            (0.31, 0.34),
            (0.14, 0.17),
            (0.58, 0.63),
            (0.20, 0.24),
            None,
            (0.9, 1.2),
            (0.15, 0.35),
            3,
        ),
        BodyType(
            "suv",
            (4.5, 5.1),
            (1.82, 1.98),
            (1.65, 1.85),
            (0.35, 0.40),
            (0.19, 0.24),
            (0.56, 0.62),
            (0.19, 0.23),
            None,
            (0.7, 1.0),
            (0.1, 0.3),
            3,
        ),
        BodyType(
            "pickup",
            (5.2, 5.9),
            (1.90, 2.02),
            (1.75, 1.92),
            (0.37, 0.41),
            (0.22, 0.27),
            (0.55, 0.60),
            (0.22, 0.26),
            (0.30, 0.42),
            (0.55, 0.8),
            (0.02, 0.08),
            2,
            bed=True,
        ),
        BodyType(
            "van",
            (4.8, 5.3),
            (1.90, 2.0),
            (1.72, 1.90),
            (0.32, 0.35),
            (0.14, 0.18),
            (0.48, 0.54),
            (0.12, 0.16),
            None,
            (0.7, 1.0),
            (0.05, 0.15),
            3,
        ),
    ]
}


@dataclass(frozen=True)
class Make:
    """A make, its models per body type with a weight (the make's bias toward that body), its trims."""

    name: str
    models: dict[str, tuple[int, tuple[str, ...]]]  # body type -> (weight, model names)
    trims: tuple[str, ...]


MAKES: dict[str, Make] = {
    m.name: m
    for m in [
        Make(
            "Toyota",
            {
                "sedan": (4, ("Camry", "Avalon")),
                "suv": (3, ("RAV4", "Highlander")),
                "hatchback": (2, ("Corolla iM", "Prius")),
                "pickup": (2, ("Tacoma", "Tundra")),
                "van": (1, ("Sienna",)),
            },
            ("LE", "SE", "XLE", "Limited"),
        ),
        Make(
            "Ford",
            {
                "pickup": (4, ("F-150", "Ranger")),
                "suv": (3, ("Explorer", "Escape")),
                "sedan": (2, ("Fusion", "Taurus")),
                "van": (1, ("Transit Connect",)),
                "coupe": (1, ("Mustang",)),
            },
            ("S", "SE", "XLT", "Titanium"),
        ),
        Make(
            "Honda",
            {
                "sedan": (4, ("Accord", "Civic")),
                "suv": (3, ("CR-V", "Pilot")),
                "hatchback": (2, ("Fit", "Civic Hatchback")),
                "van": (1, ("Odyssey",)),
            },
            ("LX", "EX", "EX-L", "Touring"),
        ),
        Make(
            "Chevrolet",
            {
                "pickup": (4, ("Silverado 1500", "Colorado")),
                "suv": (3, ("Equinox", "Tahoe")),
                "sedan": (2, ("Malibu", "Impala")),
                "van": (1, ("Express",)),
                "coupe": (1, ("Camaro",)),
            },
            ("LS", "LT", "LTZ", "Premier"),
        ),
        Make(
            "BMW",
            {
                "sedan": (4, ("3 Series", "5 Series")),
                "coupe": (2, ("4 Series",)),
                "suv": (2, ("X3", "X5")),
                "wagon": (1, ("3 Series Wagon",)),
            },
            ("328i", "335i", "xDrive28i", "M Sport"),
        ),
        Make(
            "Mercedes-Benz",
            {
                "sedan": (4, ("C-Class", "E-Class")),
                "coupe": (2, ("C-Class Coupe",)),
                "suv": (2, ("GLC", "GLE")),
                "van": (1, ("Metris",)),
                "wagon": (1, ("E-Class Wagon",)),
            },
            ("C300", "E350", "4MATIC", "AMG"),
        ),
        Make(
            "Nissan",
            {
                "sedan": (4, ("Altima", "Sentra")),
                "suv": (3, ("Rogue", "Pathfinder")),
                "hatchback": (1, ("Versa Note",)),
                "coupe": (1, ("370Z",)),
                "pickup": (1, ("Frontier",)),
            },
            ("S", "SV", "SL", "Platinum"),
        ),
        Make(
            "Volkswagen",
            {
                "hatchback": (4, ("Golf", "Beetle")),
                "sedan": (2, ("Jetta", "Passat")),
                "wagon": (2, ("Golf SportWagen",)),
                "suv": (2, ("Tiguan", "Touareg")),
            },
            ("S", "SE", "SEL", "TDI"),
        ),
    ]
}
assert all(body in BODY_TYPES for make in MAKES.values() for body in make.models)
DRIVETRAINS = ["FWD", "AWD", "4WD", "RWD"]
ENGINES = ["2.0L I4", "2.5L I4", "3.5L V6", "1.8L I4 Turbo", "5.3L V8"]


@dataclass(frozen=True)
class AnnotationPolicy:
    """How this car's masks were drawn: what the annotator included and how steady their hand was."""

    include_thin_parts: bool
    fill_spoke_gaps: bool
    jitter_px: float  # 0 = exact outline; otherwise the wobble scale in pixels at 1918 px width


@dataclass(frozen=True)
class Dims:
    """A car's dimensions (m). x runs rear -> front, y right -> left, z up; the car is centred at x=y=0."""

    length: float
    width: float
    height: float
    wheel_radius: float
    clearance: float
    z_belt: float  # height of the belt line (bottom of the side windows)
    x_cowl: float  # x of the windshield base
    x_cabin_rear: float  # x of the rear window base
    x_roof_front: float
    x_roof_rear: float
    x_wheels: tuple[float, float]  # rear and front axle x
    z_nose: float  # height of the bonnet's front edge
    z_tail: float  # height of the boot lid at the rear
    corner_front: tuple[float, float]  # plan-view chamfer of the front corners: (run along x, inset in y)
    corner_rear: tuple[float, float]
    shoulder: tuple[float, float]  # the flank's top bevel: (height below the belt, inset in y at the belt)


@dataclass(frozen=True)
class CarSpec:
    """Everything needed to render one car from any angle and write its metadata row."""

    car_id: str
    body: BodyType
    dims: Dims
    paint_name: str
    paint: tuple[int, int, int]
    rim: tuple[int, int, int]
    n_spokes: int
    spoke_fill: float  # fraction of the rim's annulus covered by spokes (the rest shows what is behind)
    antenna: bool
    spoiler: bool
    roof_rails: bool
    policy: AnnotationPolicy
    metadata: dict[str, object]
    placement: tuple[float, float] = (0.0, 0.0)  # m: where the car stands on the turntable (its x, y)

    @property
    def offset(self) -> np.ndarray:
        """(3,) the car-frame offset of the turntable's centre; rotates with the car."""
        return np.array([self.placement[0], self.placement[1], 0.0])


PLACEMENT_X_M = (-0.45, 0.45)  # along the car
PLACEMENT_Y_M = (-0.3, 0.3)  # across the car


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def draw_annotation_policy(rng: np.random.Generator, variant: Variant | None = None) -> AnnotationPolicy:
    """One car's annotation habits, at the variant's rates (by default P_INCLUDE_THIN_PARTS, P_FILL_SPOKE_GAPS,
    P_BOUNDARY_JITTER)."""
    variant = variant or _default_variant()
    include_thin = bool(rng.random() < variant.p_include_thin_parts)
    fill_gaps = bool(rng.random() < variant.p_fill_spoke_gaps)
    jitter = _uniform(rng, variant.jitter_px) if rng.random() < variant.p_boundary_jitter else 0.0
    return AnnotationPolicy(include_thin, fill_gaps, jitter)


def draw_paint(rng: np.random.Generator, variant: Variant | None = None) -> tuple[str, tuple[int, int, int]]:
    """A paint name and a slightly perturbed RGB colour, at the variant's shares (by default those in PAINTS)."""
    variant = variant or _default_variant()
    names = list(PAINTS)
    shares = np.array([variant.paint_shares.get(n, 0.0) for n in names])
    name = names[int(rng.choice(len(names), p=shares / shares.sum()))]
    base = np.array(PAINTS[name][1], dtype=np.float64)
    # Mostly a change of brightness; a little of hue, so greys stay grey.
    colour = np.clip(base * rng.uniform(0.94, 1.04) + rng.normal(0.0, 2.0, size=3), 0, 255)
    red, green, blue = (int(c) for c in colour.round())
    return name, (red, green, blue)


def draw_dims(rng: np.random.Generator, body: BodyType) -> Dims:
    """Dimensions of one car of `body`, inside the body type's ranges."""
    length, width, height = (_uniform(rng, r) for r in (body.length, body.width, body.height))
    radius, clearance = _uniform(rng, body.wheel_radius), _uniform(rng, body.clearance)
    z_belt = height * _uniform(rng, body.belt)
    cabin_h = height - z_belt
    x_front, x_rear = length / 2, -length / 2
    x_cowl = x_front - length * _uniform(rng, body.hood)
    if body.cabin is None:
        x_cabin_rear = x_rear + _uniform(rng, (0.04, 0.12))
    else:
        x_cabin_rear = max(x_cowl - length * _uniform(rng, body.cabin), x_rear + 0.3)
    x_roof_front = x_cowl - cabin_h * _uniform(rng, body.rake)
    x_roof_rear = min(x_cabin_rear + cabin_h * _uniform(rng, body.rear_rake), x_roof_front - 0.5)
    overhang_front = radius + length * rng.uniform(0.12, 0.17)
    overhang_rear = radius + length * rng.uniform(0.12, 0.19)
    x_wheels = (x_rear + overhang_rear, x_front - overhang_front)
    z_nose = z_belt - _uniform(rng, (0.08, 0.16))
    z_tail = z_belt + _uniform(rng, (-0.04, 0.04)) if x_cabin_rear > x_rear + 0.3 else z_belt
    arch_clear = radius + 0.05
    corner_front = (min(_uniform(rng, (0.35, 0.6)), overhang_front - arch_clear - 0.05), _uniform(rng, (0.10, 0.22)))
    corner_rear = (min(_uniform(rng, (0.25, 0.45)), overhang_rear - arch_clear - 0.05), _uniform(rng, (0.06, 0.16)))
    shoulder = (_uniform(rng, (0.10, 0.16)), _uniform(rng, (0.03, 0.07)))
    return Dims(
        length,
        width,
        height,
        radius,
        clearance,
        z_belt,
        x_cowl,
        x_cabin_rear,
        x_roof_front,
        x_roof_rear,
        x_wheels,
        z_nose,
        z_tail,
        corner_front,
        corner_rear,
        shoulder,
    )


def draw_metadata(rng: np.random.Generator, car_id: str) -> tuple[dict[str, object], BodyType]:
    """A metadata row (`id,year,make,model,trim1,trim2`) and the body type its make and model imply."""
    make = MAKES[list(MAKES)[int(rng.integers(len(MAKES)))]]
    bodies = list(make.models)
    weights = np.array([make.models[b][0] for b in bodies], dtype=np.float64)
    body = bodies[int(rng.choice(len(bodies), p=weights / weights.sum()))]
    names = make.models[body][1]
    model = names[int(rng.integers(len(names)))]
    trim1 = make.trims[int(rng.integers(len(make.trims)))]
    trim2 = f"{ENGINES[int(rng.integers(len(ENGINES)))]} {DRIVETRAINS[int(rng.integers(len(DRIVETRAINS)))]}"
    year = int(rng.integers(2007, 2017))
    row = {"id": car_id, "year": year, "make": make.name, "model": model, "trim1": trim1, "trim2": trim2}
    return row, BODY_TYPES[body]


def draw_car(rng: np.random.Generator, variant: Variant | None = None) -> CarSpec:
    """One car, entirely from `rng` (its id too), as the studio `variant` makes them (default: the default studio)."""
    variant = variant or _default_variant()
    car_id = f"{int(rng.integers(0, 2**48)):012x}"
    metadata, body = draw_metadata(rng, car_id)
    dims = draw_dims(rng, body)
    paint_name, paint = draw_paint(rng, variant)
    rim_kind = rng.random()
    rim = (200, 202, 206) if rim_kind < 0.6 else (120, 122, 126) if rim_kind < 0.85 else (45, 46, 50)
    n_spokes = int(rng.choice([5, 5, 6, 7, 10]))
    spoke_fill = _uniform(rng, (0.25, 0.65))
    antenna = bool(rng.random() < P_WHIP_ANTENNA)
    spoiler = body.name in ("sedan", "coupe", "hatchback") and bool(rng.random() < P_SPOILER)
    rails = body.name in ("suv", "wagon", "van") and bool(rng.random() < P_ROOF_RAILS)
    policy = draw_annotation_policy(rng, variant)
    # Drivers park a little off the turntable's centre, so the car drifts across the frame as it turns.
    placement = (_uniform(rng, variant.placement_x_m), _uniform(rng, variant.placement_y_m))
    return CarSpec(
        car_id,
        body,
        dims,
        paint_name,
        paint,
        rim,
        n_spokes,
        spoke_fill,
        antenna,
        spoiler,
        rails,
        policy,
        metadata,
        placement,
    )


def _default_variant() -> Variant:
    from carvana.synth.variants import DEFAULT  # variants.py builds on this module's constants

    return DEFAULT
