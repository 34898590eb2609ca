"""Simulate OpenStreetMap-like label noise on clean building footprints.

OSM footprints differ from the truth in a few typical ways: buildings are missing (not mapped
yet), outlines are offset (traced on older, differently orthorectified imagery; the offset is
shared by a whole mapping session, plus per-building jitter), outlines are too fat or too thin,
corners are cut, and occasionally something that is not a building is mapped. Each of these is
one knob of :class:`rscrisis.config.NoiseConfig`, expressed in metres so it means the same at
any resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rscrisis.config import NoiseConfig
from rscrisis.errors import InputError

if TYPE_CHECKING:  # geopandas stays off the `rscrisis --help` import path
    import geopandas as gpd


#: vector formats a noisy copy may be written as: one file each, so written atomically
SINGLE_FILE_DRIVERS = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
}


def apply_label_noise(frame: gpd.GeoDataFrame, noise: NoiseConfig) -> gpd.GeoDataFrame:
    """Return a noisy copy of ``frame`` (same CRS; a projected CRS in metres is required)."""
    import geopandas as gpd
    import numpy as np
    import shapely
    from shapely import affinity

    if frame.crs is None or frame.crs.is_geographic:
        raise InputError(
            "label noise is specified in metres and needs labels in a projected CRS",
            hint="reproject first, e.g. frame.to_crs(frame.estimate_utm_crs())",
        )
    rng = np.random.default_rng(noise.seed)
    geoms = list(frame.geometry.values)
    keep = rng.random(len(geoms)) >= noise.drop
    out = []
    gx, gy = noise.global_shift_m
    for geom, k in zip(geoms, keep, strict=True):
        if not k:
            continue
        dx, dy = rng.normal(0.0, noise.jitter_m, 2)
        g = affinity.translate(geom, gx + dx, gy + dy)
        b = rng.normal(0.0, noise.buffer_std_m)
        if b:
            g = g.buffer(b, join_style="mitre")
        if noise.simplify_m:
            g = g.simplify(noise.simplify_m, preserve_topology=True)
        if not g.is_empty and g.area > 1.0:
            out.append(g)
    n_false = round(noise.false_blobs * len(geoms))
    if n_false and len(geoms):
        xmin, ymin, xmax, ymax = frame.total_bounds
        for _ in range(n_false):
            cx, cy = rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)
            r = rng.uniform(2.0, 5.0)
            blob = shapely.Point(cx, cy).buffer(r, quad_segs=3)
            out.append(affinity.scale(blob, rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4)))
    return gpd.GeoDataFrame({"noisy": [True] * len(out)}, geometry=out, crs=frame.crs)


def write_noisy_labels(
    labels: str | Path, out: str | Path, noise: NoiseConfig, *, overwrite: bool = False
) -> dict:
    """``rscrisis noise``: a noisy copy of a footprint file, to measure robustness to noise.

    Geographic inputs are made noisy in their local UTM zone (the knobs are metres) and written
    back in their own CRS. Returns a summary (counts in and out, the noise settings).
    """
    from rscrisis.errors import OutputExistsError
    from rscrisis.io.outputs import atomic_path
    from rscrisis.io.vector import LabelStats, clean_polygons, read_vector

    labels, out = Path(labels), Path(out)
    driver = SINGLE_FILE_DRIVERS.get(out.suffix.lower())
    if driver is None:
        raise InputError(
            f"cannot write {out.suffix or 'a file without an extension'}: the noisy copy is "
            f"written atomically, as one file ({', '.join(SINGLE_FILE_DRIVERS)})",
            path=out,
            hint="choose --out noisy.gpkg (a Shapefile is several files, written non-atomically)",
        )
    if out.exists() and not overwrite:
        raise OutputExistsError("exists", path=out, hint="pass --overwrite or choose another --out")
    frame = read_vector(labels)
    stats = LabelStats()
    clean = clean_polygons(frame[[frame.geometry.name]], stats)
    if len(clean) == 0:
        raise InputError("holds no polygon", path=labels, hint="give building footprints")
    metric = clean.to_crs(clean.estimate_utm_crs()) if clean.crs.is_geographic else clean
    noisy = apply_label_noise(metric, noise).to_crs(clean.crs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        noisy.to_file(
            tmp, driver=driver, engine="pyogrio", layer="buildings" if driver == "GPKG" else None
        )
    return {
        "input": str(labels),
        "out": str(out),
        "buildings_in": len(clean),
        "polygons_out": len(noisy),
        "noise": noise.model_dump(mode="json"),
    }
