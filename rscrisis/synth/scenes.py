"""Seeded generator of aerial-like scenes with known building footprints (``sample_data/``).

Why synthetic: the README quickstart and the test suite need imagery with *exact* truth, a noisy
OSM-like copy of it, and a second area that looks different (the "new crisis area"), small enough
to ship in the repository and regenerate bit for bit. The scenes are drawn in map coordinates
(a projected CRS) and rasterised with the same code path as real labels, so the footprints match
the pixels exactly.

A scene is composed bottom-up: bare ground with low-frequency colour variation, vegetation
patches with texture, tree crowns with shadows, a jittered road network, buildings (rectangles,
L-shapes and courtyards of varied size, rotated to the nearest road) with cast shadows and
two-tone pitched roofs, optional haze, a slight optical blur and sensor noise. Scene B also has a
no-data collar (an internal mask, as orthophoto mosaics have), to exercise nodata handling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely import affinity
from shapely.geometry import LineString, Polygon, box

from rscrisis import __version__
from rscrisis.config import NoiseConfig, SyntheticConfig
from rscrisis.errors import InputError
from rscrisis.geo.label_noise import apply_label_noise
from rscrisis.io.outputs import atomic_path, claim_output_dir, write_json_atomic
from rscrisis.io.raster import gtiff_profile


@dataclass(frozen=True)
class AreaStyle:
    """The look of one area: what makes area B a domain shift from area A."""

    name: str
    origin: tuple[float, float]  # upper-left corner in the CRS (metres)
    ground: tuple[int, int, int]
    vegetation: tuple[int, int, int]
    vegetation_cover: float
    roofs: tuple[tuple[int, int, int], ...]
    building_attempts: int
    size_m: tuple[float, float]  # min/max building side
    road_spacing_m: float
    sun_azimuth_deg: float
    shadow_m: tuple[float, float]
    haze: float
    collar: bool


AREA_A = AreaStyle(
    name="area_a",
    origin=(353_900.0, 3_057_500.0),
    ground=(150, 128, 102),
    vegetation=(78, 104, 52),
    vegetation_cover=0.25,
    roofs=(
        (176, 92, 68),
        (158, 152, 146),
        (84, 110, 150),
        (196, 188, 170),
        (120, 74, 58),
        (100, 120, 90),
    ),
    building_attempts=2600,
    size_m=(6.0, 18.0),
    road_spacing_m=85.0,
    sun_azimuth_deg=135.0,
    shadow_m=(1.5, 3.5),
    haze=0.0,
    collar=False,
)
AREA_B = AreaStyle(
    name="area_b",
    origin=(332_300.0, 3_065_200.0),
    ground=(172, 160, 140),
    vegetation=(96, 112, 70),
    vegetation_cover=0.15,
    roofs=((222, 222, 216), (150, 60, 48), (70, 72, 78), (182, 196, 206), (212, 168, 96)),
    building_attempts=1400,
    size_m=(5.0, 14.0),
    road_spacing_m=60.0,
    sun_azimuth_deg=215.0,
    shadow_m=(1.0, 2.5),
    haze=0.22,
    collar=True,
)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of ``cell``-pixel spacing, bilinearly upsampled."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.random((gh, gw)).astype(np.float32)
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy + d * fx * fy


def _fractal(rng: np.random.Generator, h: int, w: int, cells: tuple[int, ...]) -> np.ndarray:
    acc = np.zeros((h, w), np.float32)
    total = 0.0
    for i, cell in enumerate(cells):
        weight = 0.5**i
        acc += weight * smooth_noise(rng, h, w, cell)
        total += weight
    return acc / total


def _burn(geoms, shape: tuple[int, int], transform: Affine) -> np.ndarray:
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros(shape, bool)
    return rasterize(
        ((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0, dtype="uint8"
    ).astype(bool)


def _roads(
    rng: np.random.Generator, bounds: tuple[float, float, float, float], spacing: float
) -> list[tuple[LineString, float]]:
    """A jittered grid of roads (line, width in metres), rotated as a whole."""
    xmin, ymin, xmax, ymax = bounds
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    angle = rng.uniform(-35, 35)
    half = max(xmax - xmin, ymax - ymin)
    roads = []
    for axis in (0, 1):
        pos = -half + rng.uniform(0, spacing)
        while pos < half:
            width = rng.choice([4.0, 5.5, 8.0], p=[0.5, 0.35, 0.15])
            pts = []
            for t in np.linspace(-half, half, 9):
                wobble = rng.normal(0, spacing * 0.04)
                pts.append((t, pos + wobble) if axis == 0 else (pos + wobble, t))
            line = affinity.translate(
                affinity.rotate(LineString(pts), angle, origin=(0, 0)), cx, cy
            )
            roads.append((line, float(width)))
            pos += spacing * rng.uniform(0.7, 1.3)
    return roads


def _building_shape(rng: np.random.Generator, style: AreaStyle) -> Polygon:
    lo, hi = style.size_m
    w, h = rng.uniform(lo, hi), rng.uniform(lo, hi) * rng.uniform(0.6, 1.0)
    kind = rng.choice(["rect", "L", "court"], p=[0.7, 0.22, 0.08])
    base = box(-w / 2, -h / 2, w / 2, h / 2)
    if kind == "L":
        cut = box(rng.uniform(0, w / 3), rng.uniform(0, h / 3), w / 2 + 1, h / 2 + 1)
        shape = base.difference(cut)
    elif kind == "court" and min(w, h) > 11:
        shape = base.difference(box(-w / 5, -h / 5, w / 5, h / 5))
    else:
        shape = base
    return shape


def _place_buildings(
    rng: np.random.Generator,
    style: AreaStyle,
    bounds: tuple[float, float, float, float],
    roads: list[tuple[LineString, float]],
) -> list[Polygon]:
    xmin, ymin, xmax, ymax = bounds
    road_geoms = [line.buffer(width / 2 + 1.5) for line, width in roads]
    road_tree = shapely.STRtree(road_geoms)
    road_lines = [line for line, _ in roads]
    placed: list[Polygon] = []
    cell = 25.0
    buckets: dict[tuple[int, int], list[int]] = {}
    for _ in range(style.building_attempts):
        cx, cy = rng.uniform(xmin - 5, xmax + 5), rng.uniform(ymin - 5, ymax + 5)
        nearest = road_lines[int(road_tree.nearest(shapely.Point(cx, cy)))]
        # orient along the nearest road, with a little jitter
        p = nearest.project(shapely.Point(cx, cy))
        a = nearest.interpolate(max(0.0, p - 1.0))
        b = nearest.interpolate(p + 1.0)
        angle = math.degrees(math.atan2(b.y - a.y, b.x - a.x)) + rng.normal(0, 4)
        shape = affinity.translate(
            affinity.rotate(_building_shape(rng, style), angle, origin=(0, 0)), cx, cy
        )
        if len(road_tree.query(shape, predicate="intersects")):
            continue
        key = (int(cx // cell), int(cy // cell))
        gap = shape.buffer(1.2)
        clash = False
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in buckets.get((key[0] + dx, key[1] + dy), []):
                    if gap.intersects(placed[j]):
                        clash = True
                        break
                if clash:
                    break
            if clash:
                break
        if clash:
            continue
        buckets.setdefault(key, []).append(len(placed))
        placed.append(shape)
    return placed


def render_scene(
    style: AreaStyle, size: int, gsd: float, seed: int
) -> tuple[np.ndarray, np.ndarray, Affine, list[Polygon]]:
    """Draw one scene: (image uint8 (3, H, W), valid mask (H, W), transform, footprints)."""
    rng = np.random.default_rng(seed)
    h = w = size
    x0, y0 = style.origin
    transform = Affine(gsd, 0, x0, 0, -gsd, y0)
    bounds = (x0, y0 - h * gsd, x0 + w * gsd, y0)
    img: np.ndarray = np.empty((h, w, 3), np.float32)
    ground = _fractal(rng, h, w, (160, 48, 12))
    tint = _fractal(rng, h, w, (220, 70))
    for k in range(3):
        img[..., k] = style.ground[k] * (0.78 + 0.4 * ground) * (0.92 + 0.16 * tint)
    # vegetation patches with texture
    veg_field = _fractal(rng, h, w, (130, 40, 10))
    veg = veg_field > np.quantile(veg_field, 1 - style.vegetation_cover)
    texture = _fractal(rng, h, w, (6, 3))[..., None]
    veg_col = np.asarray(style.vegetation, np.float32) * (0.75 + 0.5 * texture)
    img[veg] = img[veg] * 0.2 + veg_col[veg] * 0.8

    roads = _roads(rng, bounds, style.road_spacing_m)
    road_mask = _burn([line.buffer(wd / 2) for line, wd in roads], (h, w), transform)
    asphalt = 96 + 30 * _fractal(rng, h, w, (24, 4))
    img[road_mask] = np.stack([asphalt[road_mask] * f for f in (1.0, 1.0, 1.03)], -1)

    buildings = _place_buildings(rng, style, bounds, roads)
    az = math.radians(style.sun_azimuth_deg)
    # shadows fall away from the sun (azimuth clockwise from north)
    sx, sy = -math.sin(az), -math.cos(az)
    shadows = []
    for b in buildings:
        length = rng.uniform(*style.shadow_m)
        shadows.append(affinity.translate(b, sx * length, sy * length))
    # trees: small crowns with shadows, not on roads or buildings
    n_trees = int(40 * (w * h * gsd * gsd) / 1e5 * (0.5 + style.vegetation_cover))
    trees = []
    for _ in range(n_trees):
        tx, ty = rng.uniform(bounds[0], bounds[2]), rng.uniform(bounds[1], bounds[3])
        trees.append(shapely.Point(tx, ty).buffer(rng.uniform(1.5, 4.0), quad_segs=4))
    tree_shadow = _burn(
        [affinity.translate(t, sx * 2.5, sy * 2.5) for t in trees], (h, w), transform
    )
    shadow_mask = _burn(shadows, (h, w), transform) | tree_shadow
    img[shadow_mask] *= 0.45
    tree_mask = _burn(trees, (h, w), transform) & ~road_mask
    tree_col = np.asarray(style.vegetation, np.float32) * 0.7
    img[tree_mask] = tree_col * (0.7 + 0.6 * texture[tree_mask])

    # roofs: base colour with variation, two-tone pitch split along the long axis
    roof_noise = _fractal(rng, h, w, (8, 3))
    for b in buildings:
        colour = np.asarray(style.roofs[rng.integers(len(style.roofs))], np.float32)
        colour = np.clip(colour * rng.uniform(0.85, 1.15), 0, 255)
        roof = _burn([b], (h, w), transform)
        if not roof.any():
            continue
        rect = b.minimum_rotated_rectangle
        coords = list(rect.exterior.coords)
        e1 = np.subtract(coords[1], coords[0])
        e2 = np.subtract(coords[2], coords[1])
        long_axis = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
        c = b.centroid
        half = affinity.translate(box(-100, 0, 100, 100), c.x, c.y)
        half = affinity.rotate(
            half, math.degrees(math.atan2(long_axis[1], long_axis[0])), origin=(c.x, c.y)
        )
        lit = _burn([b.intersection(half)], (h, w), transform)
        shade = np.where(lit, 1.08, 0.88)[roof]
        img[roof] = colour * (shade * (0.9 + 0.2 * roof_noise[roof]))[:, None]
    tree_over = tree_mask & _burn(buildings, (h, w), transform)
    img[tree_over] = tree_col * (0.7 + 0.6 * texture[tree_over])

    if style.haze:
        haze = style.haze * (0.7 + 0.6 * _fractal(rng, h, w, (300, 120)))[..., None]
        img = img * (1 - haze) + np.asarray((205, 208, 212), np.float32) * haze
    # optical blur (3x3 binomial) and sensor noise
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    kern = np.array([1, 2, 1], np.float32) / 4
    img = kern[0] * pad[0:h, 1:-1] + kern[1] * pad[1 : 1 + h, 1:-1] + kern[2] * pad[2 : 2 + h, 1:-1]
    pad = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    img = kern[0] * pad[:, 0:w] + kern[1] * pad[:, 1 : 1 + w] + kern[2] * pad[:, 2 : 2 + w]
    img = img + rng.normal(0, 3.5, img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)

    valid = np.ones((h, w), bool)
    if style.collar:
        # a mosaic edge: the lower-left corner is outside the flight's footprint
        yy, xx = np.mgrid[0:h, 0:w]
        valid = (yy - xx) < int(0.62 * h)
        image[:, ~valid] = 0
    visible = [b for b in buildings if not b.intersection(box(*bounds)).is_empty]
    return image, valid, transform, visible


def _write_scene(
    path: Path, image: np.ndarray, valid: np.ndarray, transform: Affine, crs: CRS, quality: int
) -> None:
    profile = gtiff_profile(
        image.shape[2],
        image.shape[1],
        3,
        "uint8",
        crs,
        transform,
        block=256,
        compress="jpeg",
        photometric="ycbcr",
        quality=quality,
    )
    del profile["nodata"]  # validity is the internal mask
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        atomic_path(path) as tmp,
        rasterio.open(tmp, "w", **profile) as dst,
    ):
        dst.write(image)
        if not valid.all():
            dst.write_mask(valid.astype(np.uint8) * 255)


def _write_vector(path: Path, geoms: list, crs: CRS, **columns) -> None:
    frame = gpd.GeoDataFrame(
        {"building": ["yes"] * len(geoms), **columns}, geometry=geoms, crs=crs.to_wkt()
    )
    with atomic_path(path) as tmp:
        frame.to_file(tmp, driver="GPKG", layer="buildings", engine="pyogrio")


SAMPLE_PRODUCTS = ("area_a", "area_b", "sample_data.json", "README.md")


def generate_sample_data(
    out: str | Path, config: SyntheticConfig | None = None, *, overwrite: bool = False
) -> dict:
    """Write the two synthetic areas to ``out`` and return a summary.

    Layout: ``area_a/area_a.tif`` with ``buildings.gpkg`` (truth) and ``buildings_osm.gpkg``
    (OSM-like noisy copy, for pretraining); ``area_b/area_b.tif`` with ``buildings.gpkg``
    (the new area: truth for evaluation and simulation, not for training).
    """
    config = config or SyntheticConfig()
    out = Path(out)
    try:
        crs = CRS.from_epsg(config.epsg)
    except Exception as exc:  # rasterio's CRSError
        raise InputError(f"invalid epsg: EPSG:{config.epsg} is not a known CRS") from exc
    if not crs.is_projected or abs(crs.linear_units_factor[1] - 1) > 1e-9:
        raise InputError(
            f"invalid epsg: EPSG:{config.epsg} is not a projected CRS in metres",
            hint="use a UTM zone, e.g. 32645",
        )
    with claim_output_dir(out, SAMPLE_PRODUCTS, overwrite=overwrite):
        summary: dict = {
            "kind": "rscrisis.sample_data",
            "rscrisis_version": __version__,
            "config": config.model_dump(mode="json"),
            "areas": {},
        }
        for style, size, offset in ((AREA_A, config.size_a, 0), (AREA_B, config.size_b, 1)):
            folder = out / style.name
            folder.mkdir(parents=True, exist_ok=True)
            image, valid, transform, buildings = render_scene(
                style, size, config.gsd, config.seed * 1000 + offset
            )
            _write_scene(
                folder / f"{style.name}.tif", image, valid, transform, crs, config.jpeg_quality
            )
            truth = gpd.GeoDataFrame(geometry=buildings, crs=crs.to_wkt())
            _write_vector(folder / "buildings.gpkg", buildings, crs)
            area = {
                "scene": f"{style.name}/{style.name}.tif",
                "buildings": len(buildings),
                "size_px": size,
                "gsd_m": config.gsd,
            }
            if style is AREA_A:
                noise = NoiseConfig(seed=config.seed)
                noisy = apply_label_noise(truth, noise)
                _write_vector(folder / "buildings_osm.gpkg", list(noisy.geometry), crs)
                area["noisy_buildings"] = len(noisy)
                area["noise"] = noise.model_dump(mode="json")
            summary["areas"][style.name] = area
        write_json_atomic(out / "sample_data.json", summary)
        (out / "README.md").write_text(
            SAMPLE_README.format(
                **{
                    "a": summary["areas"]["area_a"],
                    "b": summary["areas"]["area_b"],
                    "seed": config.seed,
                }
            )
        )
    return summary


SAMPLE_README = """# sample_data (generated)

Made by `rscrisis sample-data --out sample_data --seed {seed}`; rerun it to regenerate the same
files. Synthetic aerial-like scenes in EPSG:32645 (UTM 45N) at 0.3 m, RGB uint8, JPEG-compressed
GeoTIFF. Nothing here is real imagery.

| path | what |
| --- | --- |
| area_a/area_a.tif | {a[size_px]} x {a[size_px]} px "pretraining area": dense, warm roofs |
| area_a/buildings.gpkg | the exact footprints ({a[buildings]} buildings) |
| area_a/buildings_osm.gpkg | an OSM-like noisy copy ({a[noisy_buildings]} polygons: some \
missing, shifted, eroded/dilated, simplified, a few false blobs) |
| area_b/area_b.tif | {b[size_px]} x {b[size_px]} px "new crisis area": other roof palette, \
sparser, hazy, with a no-data collar (internal mask) in the lower-left corner |
| area_b/buildings.gpkg | the exact footprints ({b[buildings]} buildings), for evaluation and \
simulation |
"""
