"""``rscrisis predict MODEL SCENES... --out DIR``: many scenes, one seamless product.

After a large disaster imagery arrives as hundreds of overlapping scenes. Each scene is one
task, run in this process or on a Dask cluster (``--scheduler local[:N]`` or ``tcp://host:port``;
Dask's own scheduler, retries and dashboard, no home-made one). Per scene the outputs are
exactly what a single-scene run writes (rscrisis.predict.scene), under
``DIR/scenes/<scene_id>/``; over all scenes::

    DIR/
      scenes/<scene_id>/  probability.tif, mask.tif, buildings.gpkg, windows.gpkg, ...
      probability.vrt     mosaic of the scenes' probability COGs (GDAL VRT)
      mask.vrt            mosaic of their masks
      scenes.gpkg         one row per scene: footprint (EPSG:4326), status, its one-line reason
                          when it failed, timings, worker, mean pred_iou of its windows
      buildings.gpkg      every building once, in the mosaic's CRS
      predict.json        model, config, scenes, timings

Decisions, and why:

- **A scene is never split into row bands.** Scene prediction already streams one strip of
  windows at a time, so a worker's memory does not grow with the scene's height (a 20,000²
  scene needs the same few hundred MB as a small one). Splitting would add a second stitching
  step across tasks for no memory gain; parallelism comes from the number of scenes.
- **Workers load the model once** (a per-process cache keyed by the file and its mtime), and a
  worker with a GPU uses it (``--device auto``). Each local worker gets ``cores / N`` torch
  threads unless ``--threads`` says otherwise, so N workers do not oversubscribe the CPU.
- **Faults.** Scene outputs are written atomically, so a retry is safe: a task whose worker
  dies is retried by Dask (up to ``allowed-failures``); a scene that fails on bad input is
  recorded as failed with its one-line reason and does not stop the others. ``--resume``
  never recomputes a scene whose ``predict.json`` (written last) exists.
- **Overlaps.** Where scenes overlap, a building found in both is kept once: the copy that lies
  farther from its own scene's edge. A building cut by one scene's edge is truncated there and
  lies at distance 0 from that edge, so its whole copy from the other scene wins. Two copies
  are the same building when their intersection covers at least ``SAME_BUILDING`` of the
  smaller one.
- **Mosaics** are GDAL VRTs written here (the GDAL Python bindings are not a dependency) over
  the scenes that share the first finished scene's CRS, at the finest resolution among them;
  nodata is transparent, so an overlap shows whichever scene has data. A scene in another CRS
  is left out of the VRTs (``in_mosaic`` in scenes.gpkg says so); its outputs are complete.
"""

from __future__ import annotations

import glob as globmod
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from rscrisis import __version__, cluster
from rscrisis.config import SceneConfig
from rscrisis.errors import InputError, ResumeMismatchError
from rscrisis.io.names import safe_name
from rscrisis.io.outputs import atomic_path, claim_output_dir, write_json_atomic
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)

SCENES = "scenes"
SCENES_GPKG = "scenes.gpkg"
BUILDINGS = "buildings.gpkg"
PROBABILITY_VRT = "probability.vrt"
MASK_VRT = "mask.vrt"
MANIFEST = "predict.json"
PRODUCTS = (SCENES, SCENES_GPKG, BUILDINGS, PROBABILITY_VRT, MASK_VRT, MANIFEST)
#: raster files taken from a folder given as input
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2")
#: two copies are one building when they share this much of the smaller one
SAME_BUILDING = 0.3


@dataclass(frozen=True)
class SceneTask:
    scene_id: str
    path: str


@dataclass
class ManyResult:
    out: str
    scenes: int
    done: int
    failed: int
    resumed: int
    buildings: int
    seconds: float
    scheduler: str
    dashboard: str | None = None
    records: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def expand_scenes(inputs: list[str]) -> list[str]:
    """Scene paths from the command line: files, folders (their rasters), quoted globs, and
    ``.txt`` files listing one path or GDAL URL (``/vsicurl/...``) per line (``#`` comments)."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if item.startswith("/vsi"):
            found.append(item)
        elif path.suffix.lower() == ".txt" and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    found.append(line if line.startswith("/vsi") else str(path.parent / line))
        elif path.is_dir():
            found += sorted(str(p) for p in path.iterdir() if p.suffix.lower() in SCENE_SUFFIXES)
        elif any(c in item for c in "*?["):
            found += sorted(globmod.glob(item))
        else:
            found.append(item)
    if not found:
        raise InputError("no scene found in the inputs", hint="give GeoTIFF files or folders")
    return list(dict.fromkeys(found))


def scene_tasks(paths: list[str]) -> list[SceneTask]:
    """One task per scene with a unique safe id (its file name; ``_2``, ``_3`` on a clash)."""
    tasks, used = [], set()
    for path in paths:
        base = safe_name(Path(path).stem or "scene")
        scene_id, n = base, 1
        while scene_id in used:
            n += 1
            scene_id = f"{base}_{n}"
        used.add(scene_id)
        tasks.append(SceneTask(scene_id, path))
    return tasks


# --------------------------------------------------------------------------------------------
# The task a worker runs
# --------------------------------------------------------------------------------------------


def run_scene(model_path: str, scene: str, out: str, config: dict) -> dict:
    """Map one scene into ``out``; bad input is a result (``failed``), not an exception, so it
    is recorded and never retried. Runs in a Dask worker or in this process."""
    import socket

    from rscrisis.predict.scene import predict_scene

    t0 = time.perf_counter()
    where = f"{socket.gethostname()}:{os.getpid()}"
    try:
        settings = SceneConfig(**config)
        from rscrisis.ml.model import load_model_cached

        loaded = load_model_cached(model_path, settings.device)
        result = predict_scene(
            model_path, scene, out, config=settings, overwrite=True, loaded=loaded
        )
    except InputError as exc:
        return {"status": "failed", "reason": str(exc), "bad_input": True, "seconds": _s(t0),
                "worker": where}  # fmt: skip
    return {"status": "done", "reason": "", "seconds": _s(t0), "worker": where, **result.to_dict()}


def _s(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


def predict_scenes(
    model_path: str | Path,
    scenes: list[str],
    out: str | Path,
    *,
    config: SceneConfig | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress = no_progress,
) -> ManyResult:
    """Map every scene of ``scenes`` (see the module docstring) into ``out``."""
    from rscrisis.ml.model import read_meta

    config = config or SceneConfig()
    out = Path(out)
    read_meta(model_path)  # a bad model is one line before anything starts
    tasks = scene_tasks(scenes)
    fingerprint = {
        "model": str(Path(model_path).resolve()),
        "config": config.model_dump(mode="json"),
    }
    t0 = time.perf_counter()
    with claim_output_dir(out, PRODUCTS, overwrite=overwrite, resume=resume, resumable=True):
        _check_resume(out, fingerprint, resume)
        (out / SCENES).mkdir(exist_ok=True)
        place = cluster.executor(scheduler)
        try:
            settings = config.model_copy(update={"threads": place.torch_threads(config.threads)})
            if place.dashboard:  # into a log too, through the progress lines
                progress(0, len(tasks), f"dashboard {place.dashboard}")
            records: dict[str, dict] = {}
            jobs = []
            for task in tasks:
                scene_out = out / SCENES / task.scene_id
                finished = _finished(scene_out, task) if resume else None
                if finished is not None:
                    records[task.scene_id] = finished
                else:
                    args = (str(model_path), task.path, str(scene_out), settings.model_dump())
                    jobs.append((task, args))
            done = len(records)
            for task, record in place.run(run_scene, jobs, catch=True):
                records[task.scene_id] = record
                done += 1
                progress(done, len(tasks), f"{task.scene_id} {record['status']}")
        finally:
            place.close()
        rows = [{"scene_id": t.scene_id, "path": t.path, **records[t.scene_id]} for t in tasks]
        grids = scene_grids(out, [r["scene_id"] for r in rows if r["status"] == "done"])
        in_mosaic = write_mosaics(out, grids)
        for r in rows:
            r["in_mosaic"] = r["scene_id"] in in_mosaic
        kept = merge_buildings(out, {k: g for k, g in grids.items() if k in in_mosaic})
        _write_scenes_layer(out, rows, grids)
        result = ManyResult(
            out=str(out),
            scenes=len(tasks),
            done=sum(r["status"] == "done" for r in rows),
            failed=sum(r["status"] == "failed" for r in rows),
            resumed=sum(bool(r.get("resumed")) for r in rows),
            buildings=kept,
            seconds=_s(t0),
            scheduler=place.label,
            dashboard=place.dashboard,
            records=[_plain(r) for r in rows],
        )
        write_json_atomic(
            out / MANIFEST,
            {
                "kind": "rscrisis.scenes_prediction",
                "rscrisis_version": __version__,
                **fingerprint,
                "result": result.to_dict(),
            },
        )
        return result


def _plain(record: dict) -> dict:
    return {k: v for k, v in record.items() if k in (
        "scene_id", "path", "status", "reason", "bad_input", "seconds", "worker", "buildings",
        "mean_pred_iou", "windows", "resumed", "in_mosaic")}  # fmt: skip


def _check_resume(out: Path, fingerprint: dict, resume: bool) -> None:
    if not resume or not (out / MANIFEST).exists():
        return
    from rscrisis.io.inputs import read_json

    before = read_json(out / MANIFEST, hint="rerun with --overwrite to start over")
    if {k: before.get(k) for k in fingerprint} != fingerprint:
        raise ResumeMismatchError(
            "holds a run with another model or other settings",
            path=out,
            hint="resume with the same model and options, or --overwrite",
        )


def _finished(scene_out: Path, task: SceneTask) -> dict | None:
    """The record of a scene a previous run finished (its predict.json exists), or None."""
    manifest = scene_out / "predict.json"
    if not manifest.exists():
        return None
    from rscrisis.io.inputs import read_json

    data = read_json(manifest, hint="remove the scene's folder to map it again")
    return {"status": "done", "reason": "", "resumed": True, "worker": "",
            **data.get("result", {})}  # fmt: skip


# --------------------------------------------------------------------------------------------
# The products over all scenes
# --------------------------------------------------------------------------------------------


_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}


@dataclass(frozen=True)
class _SceneGrid:
    """Where a finished scene's maps lie (read once from its mask's header)."""

    folder: Path
    crs: Any
    transform: Any
    width: int
    height: int
    bounds: tuple[float, float, float, float]


def scene_grids(out: Path, scene_ids: list[str]) -> dict[str, _SceneGrid]:
    import rasterio

    grids = {}
    for scene_id in scene_ids:
        folder = out / SCENES / scene_id
        with rasterio.open(folder / "mask.tif") as ds:
            grids[scene_id] = _SceneGrid(
                folder, ds.crs, ds.transform, ds.width, ds.height, tuple(ds.bounds)
            )
    return grids


def write_mosaics(out: Path, grids: dict[str, _SceneGrid]) -> set[str]:
    """``probability.vrt`` and ``mask.vrt`` over the finished scenes sharing the first one's
    CRS; returns the ids of the scenes they cover."""
    import rasterio

    sources = [(k, g.folder, g.crs, g.transform, g.width, g.height) for k, g in grids.items()]
    if not sources:
        for name in (PROBABILITY_VRT, MASK_VRT):
            (out / name).unlink(missing_ok=True)
        return set()
    crs = sources[0][2]
    same = [s for s in sources if s[2] == crs]
    for s in sources:
        if s[2] != crs:
            log.warning("scene %s is in %s, not %s: left out of the mosaics", s[0], s[2], crs)
    res_x = min(abs(s[3].a) for s in same)
    res_y = min(abs(s[3].e) for s in same)
    lefts = [s[3].c for s in same]
    tops = [s[3].f for s in same]
    rights = [s[3].c + s[4] * s[3].a for s in same]
    bottoms = [s[3].f + s[5] * s[3].e for s in same]
    x0, y0 = min(lefts), max(tops)
    width = math.ceil((max(rights) - x0) / res_x - 1e-6)
    height = math.ceil((y0 - min(bottoms)) / res_y - 1e-6)
    for name, raster in ((MASK_VRT, "mask.tif"), (PROBABILITY_VRT, "probability.tif")):
        with rasterio.open(same[0][1] / raster) as ds:
            dtype, nodata = ds.dtypes[0], ds.nodata
            scale = ds.scales[0] if ds.scales else 1.0
            description = ds.descriptions[0] or ""
        nd = "nan" if nodata is not None and math.isnan(nodata) else (
            "" if nodata is None else f"{nodata:g}")  # fmt: skip
        parts = [
            f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
            f"  <SRS>{escape(crs.to_wkt())}</SRS>",
            f"  <GeoTransform>{x0!r}, {res_x!r}, 0, {y0!r}, 0, {-res_y!r}</GeoTransform>",
            f'  <VRTRasterBand dataType="{_GDAL_TYPES.get(dtype, "Float32")}" band="1">',
            f"    <Description>{escape(description)}</Description>",
        ]
        if nd:
            parts.append(f"    <NoDataValue>{nd}</NoDataValue>")
        if scale != 1.0:
            parts += [f"    <Scale>{scale!r}</Scale>", "    <Offset>0</Offset>"]
        for _, folder, _, t, w, h in same:
            dx, dy = (t.c - x0) / res_x, (y0 - t.f) / res_y
            dw, dh = w * abs(t.a) / res_x, h * abs(t.e) / res_y
            rel = (folder / raster).relative_to(out).as_posix()
            parts += [
                "    <ComplexSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
                "      <SourceBand>1</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                f'      <DstRect xOff="{dx!r}" yOff="{dy!r}" xSize="{dw!r}" ySize="{dh!r}"/>',
            ]
            if nd:
                parts.append(f"      <NODATA>{nd}</NODATA>")
            parts.append("    </ComplexSource>")
        parts += ["  </VRTRasterBand>", "</VRTDataset>"]
        with atomic_path(out / name) as tmp:
            tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return {s[0] for s in same}


def merge_buildings(out: Path, grids: dict[str, _SceneGrid]) -> int:
    """``buildings.gpkg``: every scene's buildings in the mosaic's CRS, each building once
    (module docstring: the copy farther from its own scene's edge). Returns the count."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    from rscrisis.io.styles import add_style, outlines

    frames = []
    footprints = {k: shapely.box(*g.bounds) for k, g in grids.items()}
    crs = next(iter(grids.values())).crs if grids else None
    for scene_id, grid in grids.items():
        path = grid.folder / "buildings.gpkg"
        frame = gpd.read_file(path, layer="buildings", engine="pyogrio")
        frame = frame.to_crs(crs) if frame.crs != crs else frame
        frame = frame.rename(columns={"building_id": "scene_building_id"})
        frame.insert(0, "scene_id", scene_id)
        frames.append(frame)
    if not frames:
        (out / BUILDINGS).unlink(missing_ok=True)
        return 0
    merged = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)
    geoms = merged.geometry.values
    boundaries = [footprints[s].boundary for s in merged.scene_id]
    edge = np.asarray(shapely.distance(geoms, boundaries), float)
    merged["edge_distance_m"] = np.round(edge, 3)
    keep = _one_copy(geoms, merged.scene_id.to_numpy(), edge, footprints)
    merged = merged[keep].reset_index(drop=True)
    merged.insert(0, "building_id", np.arange(1, len(merged) + 1))
    with atomic_path(out / BUILDINGS) as tmp:
        merged.to_file(tmp, layer="buildings", driver="GPKG", engine="pyogrio")
        add_style(tmp, "buildings", outlines(), "outlines", "buildings as red outlines")
    return len(merged)


def _one_copy(geoms, scene_ids: np.ndarray, edge: np.ndarray, footprints: dict) -> np.ndarray:
    """Which buildings to keep: outside every overlap all of them; inside one, greedily from
    the farthest from its own edge, dropping any copy of a building already kept from
    another scene."""
    import shapely

    keep = np.ones(len(geoms), bool)
    # a building is in an overlap when it touches another scene's footprint
    names = list(footprints)
    building, scene = shapely.STRtree([footprints[n] for n in names]).query(
        geoms, predicate="intersects"
    )
    other = np.asarray(names, dtype=object)[scene] != scene_ids[building]
    in_overlap = np.zeros(len(geoms), bool)
    in_overlap[building[other]] = True
    idx = np.flatnonzero(in_overlap)
    if len(idx) == 0:
        return keep
    tree = shapely.STRtree(geoms[idx])
    areas = shapely.area(geoms[idx])
    kept = np.zeros(len(idx), bool)
    for k in np.argsort(-edge[idx], kind="stable"):
        g = geoms[idx[k]]
        clash = False
        for j in tree.query(g, predicate="intersects"):
            if not kept[j] or scene_ids[idx[j]] == scene_ids[idx[k]]:
                continue
            shared = shapely.area(shapely.intersection(g, geoms[idx[j]]))
            if shared >= SAME_BUILDING * min(areas[k], areas[j]):
                clash = True
                break
        kept[k] = not clash
    keep[idx] = kept
    return keep


def _write_scenes_layer(out: Path, rows: list[dict], grids: dict[str, _SceneGrid]) -> None:
    """``scenes.gpkg``: one row per scene, its footprint in EPSG:4326 (scenes' CRSs differ);
    a failed scene's from its own header when it can be opened."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.warp import transform_geom

    def footprint(crs, bounds):
        box = shapely.geometry.mapping(shapely.box(*bounds))
        return shapely.geometry.shape(transform_geom(crs, "EPSG:4326", box))

    geoms = []
    for r in rows:
        grid = grids.get(r["scene_id"])
        if grid is not None:
            geoms.append(footprint(grid.crs, grid.bounds))
            continue
        try:
            with rasterio.open(r["path"]) as ds:
                geoms.append(footprint(ds.crs, ds.bounds) if ds.crs is not None else None)
        except (rasterio.errors.RasterioError, OSError):
            geoms.append(None)  # a scene that cannot be opened has no footprint
    frame = gpd.GeoDataFrame([_plain(r) for r in rows], geometry=geoms, crs="EPSG:4326")
    with atomic_path(out / SCENES_GPKG) as tmp:
        frame.to_file(tmp, layer="scenes", driver="GPKG", engine="pyogrio")
