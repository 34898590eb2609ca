"""``rscrisis tile``: cut GeoTIFF scenes into a georeferenced tile set with building masks.

Design choices, and why:

* **Validate everything first.** All scenes are opened, their georeferencing and bands checked,
  labels read and checked for overlap *before* the output folder is touched, so bad input exits
  with code 2 and leaves nothing behind.
* **Stream by strips.** Tiles are produced one grid row at a time, reading a chunk of the row in
  one windowed read (cheap for striped *and* tiled GeoTIFFs) and rasterising labels once per
  chunk. Memory is bounded by the chunk size, never by the scene size.
* **Overlap I/O with encoding.** Reading happens on the calling thread; compressing and writing
  tiles happens on a small thread pool (GDAL releases the GIL), bounded so queued tiles cannot
  pile up in memory.
* **Exact georeferencing.** A tile's transform is the grid transform shifted by its window, and
  edge tiles are padded to full size (padding is nodata in the image, 255 in the mask), so every
  tile has the same shape and reads back at exactly its place.
* **Atomic, resumable.** Each tile file is renamed into place when complete; ``index.gpkg`` is
  written last. ``resume`` skips tiles whose files exist and rebuilds the index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rscrisis import __version__
from rscrisis.config import TileConfig
from rscrisis.errors import BandError, InputError, NoOverlapError, ProcessingError
from rscrisis.io.outputs import (
    atomic_path,
    claim_output_dir,
    remove_partials,
    write_json_atomic,
)
from rscrisis.io.raster import (
    GDAL_CACHE_BYTES,
    Grid,
    SceneInfo,
    expand_raster_inputs,
    gtiff_profile,
    inspect_scene,
    open_grid,
    read_raster,
    target_grid,
)
from rscrisis.io.tileset import (
    INDEX_LAYER,
    MASK_BUILDING,
    MASK_IGNORE,
    PRODUCTS,
    TileSetLayout,
    footprint,
    scene_key,
    tile_id,
)
from rscrisis.io.vector import Labels, read_labels
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)

#: Upper bound on the bytes of imagery read in one chunk of a tile row.
CHUNK_BYTES = 64 * 2**20
#: Upper bound on the bytes of tiles queued for the writer threads.
QUEUE_BYTES = 128 * 2**20


@dataclass(frozen=True)
class TileSpec:
    """One tile of a scene's grid."""

    tile_id: str
    grid_row: int
    grid_col: int
    window: Window
    transform: Affine


@dataclass
class ScenePlan:
    """A scene's tile grid, planned lazily: offsets only, one row of :class:`TileSpec` at a time
    (:meth:`rows`), so memory stays flat for any grid, even one a damaged header makes huge."""

    info: SceneInfo
    grid: Grid
    row_offsets: range
    col_offsets: range
    size: int

    @property
    def n_tiles(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_offsets), len(self.col_offsets)

    def rows(self) -> Iterator[list[TileSpec]]:
        for gr, r in enumerate(self.row_offsets):
            row = []
            for gc, c in enumerate(self.col_offsets):
                win = Window(c, r, self.size, self.size)
                row.append(
                    TileSpec(
                        tile_id(self.info.name, gr, gc),
                        gr,
                        gc,
                        win,
                        window_transform(win, self.grid.transform),
                    )
                )
            yield row


@dataclass
class TileResult:
    """Summary of a tiling run (what ``--json`` prints)."""

    out: str
    tiles: int = 0
    written: int = 0
    resumed: int = 0
    skipped_low_valid: int = 0
    scenes: list[dict] = field(default_factory=list)
    labels: dict | None = None
    megapixels: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def grid_positions(length: int, size: int, stride: int) -> range:
    """Offsets of tiles along one axis so the whole ``length`` is covered.

    The last tile may run past the end (it is padded): ``n = ceil((length - size) / stride) + 1``
    tiles, at least one. A ``range``: nothing is materialised, whatever ``length`` is.
    """
    if length <= size:
        return range(0, 1)
    n = -(-(length - size) // stride) + 1
    return range(0, n * stride, stride)


def plan_scene(info: SceneInfo, grid: Grid, config: TileConfig) -> ScenePlan:
    return ScenePlan(
        info,
        grid,
        grid_positions(grid.height, config.size, config.stride),
        grid_positions(grid.width, config.size, config.stride),
        config.size,
    )


def check_output_size(plans: Sequence[ScenePlan], config: TileConfig, labelled: bool) -> None:
    """Refuse, before anything is written, a run whose tiles would exceed ``max_output_gb``.

    The estimate is uncompressed (every tile at full size, mask included), an upper bound of
    what lands on disk; compression and skipped nodata tiles only make it smaller. It is what
    stops a header claiming 10^6 x 10^6 px, or ``--resolution 0.0001``, from filling a disk.
    """
    total = 0
    for plan in plans:
        per_px = plan.info.band_count * np.dtype(plan.info.dtype).itemsize + (1 if labelled else 0)
        total += plan.n_tiles * config.size * config.size * per_px
    gb = total / 1e9
    if gb > config.max_output_gb:
        biggest = max(plans, key=lambda p: p.n_tiles)
        raise InputError(
            f"tiling would write about {gb:,.0f} GB ({sum(p.n_tiles for p in plans):,} tiles; "
            f"{biggest.info.name} alone is a {biggest.grid.width:,} x {biggest.grid.height:,} px "
            f"grid), over the {config.max_output_gb:g} GB limit",
            hint="check --resolution and the scene's size (gdalinfo), or raise --max-output-gb",
        )


def _check_consistent(scenes: Sequence[SceneInfo]) -> None:
    names: dict[str, Path] = {}
    for s in scenes:
        key = scene_key(s.name)  # what the scene's tile ids are made of
        if key in names:
            raise InputError(
                f"two input scenes share the name {key!r} in tile ids ({names[key]} and "
                f"{s.path}), so their tile ids would collide",
                hint="rename one of them or tile them into separate tile sets",
            )
        names[key] = s.path
    first = scenes[0]
    for s in scenes[1:]:
        if s.band_count != first.band_count or s.dtype != first.dtype:
            raise BandError(
                f"has {s.band_count} band(s) of {s.dtype}, but {first.path.name} has "
                f"{first.band_count} of {first.dtype}; one tile set feeds one model",
                path=s.path,
                hint="select matching bands with --bands or tile the scenes separately",
            )


def _check_overlap(plans: Sequence[ScenePlan], labels: Labels) -> list[str]:
    """Names of scenes no label touches; raises if that is every scene."""
    missing = []
    for plan in plans:
        frame = labels.in_crs(plan.info.crs)
        area = footprint(plan.grid.transform, plan.grid.width, plan.grid.height)
        if len(frame.sindex.query(area, predicate="intersects")) == 0:
            missing.append(plan.info.name)
    if len(missing) == len(plans):
        files = ", ".join(labels.stats.files)
        raise NoOverlapError(
            f"no label polygon overlaps any of the {len(plans)} scene(s)",
            path=files,
            hint="check that the labels cover the imagery (a wrong CRS on either side is the "
            "usual cause)",
        )
    for name in missing:
        log.warning("no label overlaps scene %s: its masks will be all background", name)
    return missing


def _block_size(size: int) -> int:
    """GeoTIFF block side for a tile: 256, or the largest multiple of 16 in a smaller tile."""
    return 256 if size >= 256 else max(16, size // 16 * 16)


def _image_profile(info: SceneInfo, config: TileConfig, transform: Affine) -> dict:
    size = config.size
    block = _block_size(size)
    profile = gtiff_profile(
        size,
        size,
        info.band_count,
        info.dtype,
        info.crs,
        transform,
        nodata=info.nodata,
        block=block,
        interleave="pixel",
    )
    if config.compress != "none":
        profile["compress"] = config.compress
    if config.compress in ("deflate", "lzw", "zstd"):
        profile["predictor"] = 3 if np.dtype(info.dtype).kind == "f" else 2
    rgb = info.colorinterp == ("red", "green", "blue")
    if config.compress == "jpeg":
        profile["quality"] = 92
        if rgb:
            profile["photometric"] = "ycbcr"
    elif rgb and info.dtype == "uint8":
        profile["photometric"] = "rgb"
    return profile


def _mask_profile(info: SceneInfo, config: TileConfig, transform: Affine) -> dict:
    return gtiff_profile(
        config.size,
        config.size,
        1,
        "uint8",
        info.crs,
        transform,
        nodata=MASK_IGNORE,
        block=_block_size(config.size),
        compress="deflate",
    )


def _write_tile(
    layout: TileSetLayout,
    spec: TileSpec,
    image: np.ndarray,
    valid: np.ndarray | None,
    mask: np.ndarray | None,
    image_profile: dict,
    mask_profile: dict,
) -> None:
    """Write mask then image, each atomically; the image's presence marks the tile complete.

    ``valid`` is None when every pixel is valid (no internal mask is needed then).
    """
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        if mask is not None:
            with (
                atomic_path(layout.mask_path(spec.tile_id)) as tmp,
                rasterio.open(tmp, "w", **mask_profile) as dst,
            ):
                dst.write(mask, 1)
        with (
            atomic_path(layout.image_path(spec.tile_id)) as tmp,
            rasterio.open(tmp, "w", **image_profile) as dst,
        ):
            dst.write(image)
            if image_profile["nodata"] is None and valid is not None:
                dst.write_mask(valid.astype(np.uint8) * 255)


def _tile_record(
    plan: ScenePlan,
    spec: TileSpec,
    valid_fraction: float,
    building_fraction: float | None,
    layout: TileSetLayout,
) -> dict:
    return {
        "tile_id": spec.tile_id,
        "scene": plan.info.name,
        "scene_path": str(plan.info.path),
        "grid_row": spec.grid_row,
        "grid_col": spec.grid_col,
        "col_off": int(spec.window.col_off),
        "row_off": int(spec.window.row_off),
        "width": int(spec.window.width),
        "height": int(spec.window.height),
        "nodata_fraction": round(1.0 - valid_fraction, 6),
        "building_fraction": (None if building_fraction is None else round(building_fraction, 6)),
        "image": f"{layout.images.name}/{spec.tile_id}.tif",
        "mask": None if building_fraction is None else f"{layout.masks.name}/{spec.tile_id}.tif",
        "crs": plan.info.crs.to_string(),
        "geometry": footprint(spec.transform, int(spec.window.width), int(spec.window.height)),
    }


def _stats_from_files(
    layout: TileSetLayout, spec: TileSpec, has_labels: bool
) -> tuple[float, float | None]:
    """Valid and building fractions of a tile already on disk (for ``resume``)."""
    with read_raster(layout.image_path(spec.tile_id)) as ds:
        valid = np.all(ds.read_masks() > 0, axis=0)
    building = None
    if has_labels:
        with read_raster(layout.mask_path(spec.tile_id)) as ds:
            m = ds.read(1)
        building = float((m == MASK_BUILDING).sum() / max(1, valid.sum()))
    return float(valid.mean()), building


class _BoundedPool:
    """A thread pool that blocks submitters once ``limit`` jobs are pending (bounded memory).

    The first failure is recorded by a done-callback and re-raised on the next ``submit``, so a
    full disk stops the run at once instead of after reading the whole scene.
    """

    def __init__(self, workers: int, limit: int):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rscrisis-tile")
        self._slots = threading.Semaphore(limit)
        self._error: BaseException | None = None

    def _done(self, fut: Future) -> None:
        # a write cancelled by abandon() has no exception to ask for (asking raises)
        if not fut.cancelled() and self._error is None and fut.exception() is not None:
            self._error = fut.exception()
        self._slots.release()

    def submit(self, fn, *args) -> None:
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        self._pool.submit(fn, *args).add_done_callback(self._done)

    def drain(self) -> None:
        """Wait for all writes; raise the first failure."""
        self._pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Stop after an error elsewhere: drop queued writes, finish running ones, raise nothing."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class _SceneTiler:
    """Cuts one scene's tiles in chunks of a row: read the chunk's pixels once
    (:meth:`read_chunk`), then cut, check and queue each tile for the writer threads
    (:meth:`cut`). The queue is bounded by bytes, so memory stays flat whatever the scene."""

    def __init__(
        self,
        plan: ScenePlan,
        layout: TileSetLayout,
        labels: Labels | None,
        config: TileConfig,
        result: TileResult,
        records: list[dict],
    ):
        self.plan, self.layout, self.labels, self.config = plan, layout, labels, config
        self.result, self.records = result, records
        info = plan.info
        self.fill = info.nodata if info.nodata is not None else 0
        itemsize = np.dtype(info.dtype).itemsize
        self.tile_bytes = config.size * config.stride * info.band_count * itemsize
        self.per_chunk = max(1, CHUNK_BYTES // self.tile_bytes)
        gdf = labels.in_crs(info.crs) if labels is not None else None
        self.geoms = gdf.geometry.values if gdf is not None else None
        self.sindex = gdf.sindex if gdf is not None else None

    def chunks(self):
        """Runs of up to ``per_chunk`` neighbouring tiles of one row, read as one window."""
        for row in self.plan.rows():
            for start in range(0, len(row), self.per_chunk):
                yield row[start : start + self.per_chunk]

    def keep(self, spec) -> None:
        """A tile a resumed run found complete: recorded from its files, not rewritten."""
        vf, bf = _stats_from_files(self.layout, spec, self.labels is not None)
        self.records.append(_tile_record(self.plan, spec, vf, bf, self.layout))
        self.result.resumed += 1

    def is_complete(self, spec, resume: bool) -> bool:
        """A tile a resumed run keeps: its image (and mask, with labels) are on disk."""
        return (
            resume
            and self.layout.image_path(spec.tile_id).exists()
            and (self.labels is None or self.layout.mask_path(spec.tile_id).exists())
        )

    def read_chunk(self, ds, chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(pixels, valid, burnt labels or None) of the window spanning ``chunk``'s tiles."""
        config, info = self.config, self.plan.info
        c0, r0 = int(chunk[0].window.col_off), int(chunk[0].window.row_off)
        cwin = Window(c0, r0, int(chunk[-1].window.col_off) + config.size - c0, config.size)
        data, valid = ds.read(info.bands, cwin, fill=self.fill)
        if info.nodata is not None:
            data[:, ~valid] = info.nodata
        if self.geoms is None or self.sindex is None:
            return data, valid, None
        ctrans = window_transform(cwin, self.plan.grid.transform)
        area = footprint(ctrans, int(cwin.width), int(cwin.height))
        hits = self.sindex.query(area, predicate="intersects")
        burnt = np.zeros((int(cwin.height), int(cwin.width)), np.uint8)
        if len(hits):
            burnt = rasterize(
                ((g, MASK_BUILDING) for g in self.geoms[hits]),
                out_shape=burnt.shape,
                transform=ctrans,
                fill=0,
                dtype="uint8",
                all_touched=config.all_touched,
            )
        return data, valid, burnt

    def cut(self, pool, spec, c0: int, data, valid, burnt) -> None:
        """One tile out of its chunk: skipped when mostly nodata, else queued for writing."""
        config, info = self.config, self.plan.info
        x = int(spec.window.col_off) - c0
        cols = slice(x, x + config.size)
        tvalid = valid[:, cols]
        n_valid = int(np.count_nonzero(tvalid))
        vf = n_valid / tvalid.size
        if vf == 0.0 or vf < config.min_valid:
            self.result.skipped_low_valid += 1
            return
        timage = data[:, :, cols]  # a view: writer threads copy it
        tmask = None
        bf = None
        if burnt is not None:
            tmask = burnt[:, cols].copy()
            tmask[~tvalid] = MASK_IGNORE
            bf = int(np.count_nonzero(tmask == MASK_BUILDING)) / n_valid
        pool.submit(
            _write_tile,
            self.layout,
            spec,
            timage,
            None if n_valid == tvalid.size else tvalid.copy(),
            tmask,
            _image_profile(info, config, spec.transform),
            _mask_profile(info, config, spec.transform),
        )
        self.records.append(_tile_record(self.plan, spec, vf, bf, self.layout))
        self.result.written += 1
        self.result.megapixels += config.size * config.size / 1e6

    def run(self, resume: bool, progress: Progress, done: int, total: int) -> int:
        """Tile the scene; the running count of tiles handled (for ``progress``)."""
        config, name = self.config, self.plan.info.name
        # Queue up to ~two chunks of tiles so writers keep busy while the next chunk is read
        queue_limit = max(
            2 * config.workers + 2, min(2 * self.per_chunk, QUEUE_BYTES // self.tile_bytes)
        )
        pool = _BoundedPool(config.workers, limit=queue_limit)
        try:
            with open_grid(self.plan.info, self.plan.grid) as ds:
                for chunk in self.chunks():
                    complete = [self.is_complete(t, resume) for t in chunk]
                    pixels = None if all(complete) else self.read_chunk(ds, chunk)
                    c0 = int(chunk[0].window.col_off)
                    for spec, is_complete in zip(chunk, complete, strict=True):
                        done += 1
                        if is_complete:
                            self.keep(spec)
                        else:
                            assert pixels is not None
                            self.cut(pool, spec, c0, *pixels)
                        progress(done, total, name)
        except BaseException:
            pool.abandon()
            raise
        pool.drain()
        return done


def tile_scene(
    plan: ScenePlan,
    out: str,
    labels: Labels | None,
    config: TileConfig,
    resume: bool,
    progress: Progress = no_progress,
    done: int = 0,
    total: int = 0,
) -> dict:
    """One scene's tiles into the tile set at ``out``: a task, here or on a Dask worker.
    Returns its index records and counters."""
    result = TileResult(out=str(out))
    records: list[dict] = []
    tiler = _SceneTiler(plan, TileSetLayout(Path(out)), labels, config, result, records)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        done = tiler.run(resume, progress, done, total)
    return {
        "records": records,
        "written": result.written,
        "resumed": result.resumed,
        "skipped_low_valid": result.skipped_low_valid,
        "megapixels": result.megapixels,
        "done": done,
    }


def _tile_all(plans, out, labels, config, resume, scheduler, progress, total) -> list[dict]:
    """Every scene's part, in scene order: here with per-tile progress, or one task per scene
    on a Dask cluster with per-scene progress (the labels travel with each task)."""
    from rscrisis import cluster

    if not scheduler:
        parts, done = [], 0
        for plan in plans:
            part = tile_scene(plan, str(out), labels, config, resume, progress, done, total)
            done = part["done"]
            parts.append(part)
        return parts
    place = cluster.executor(scheduler)
    try:
        jobs = [(k, (plan, str(out), labels, config, resume)) for k, plan in enumerate(plans)]
        found: dict[int, dict] = {}
        tiles = 0
        for k, part in place.run(tile_scene, jobs):
            found[k] = part
            tiles += plans[k].n_tiles
            progress(tiles, total, plans[k].info.name)
        return [found[k] for k in range(len(plans))]
    finally:
        place.close()


def _write_index(layout: TileSetLayout, records: list[dict], plans: Sequence[ScenePlan]) -> None:
    import geopandas as gpd
    import shapely

    crs = plans[0].info.crs
    if records and any(p.info.crs != crs for p in plans):
        # One layer has one CRS: footprints of other scenes are reprojected into the first
        # scene's CRS; each row's own CRS stays in the "crs" column.
        log.warning("scenes have different CRSs; index.gpkg uses %s", crs.to_string())
        by_crs: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_crs.setdefault(r["crs"], []).append(i)
        for key, idx in by_crs.items():
            if key == crs.to_string():
                continue
            geo = gpd.GeoSeries(
                [shapely.segmentize(records[i]["geometry"], 1e9) for i in idx], crs=key
            ).to_crs(crs.to_wkt())
            for i, g in zip(idx, geo, strict=True):
                records[i]["geometry"] = g
    frame = gpd.GeoDataFrame(records, geometry="geometry", crs=crs.to_wkt())
    if not records:
        frame = gpd.GeoDataFrame(
            {k: [] for k in ("tile_id", "scene", "nodata_fraction")},
            geometry=gpd.GeoSeries([], crs=crs.to_wkt()),
        )
    frame = frame.sort_values("tile_id", kind="stable").reset_index(drop=True)
    with atomic_path(layout.index) as tmp:
        frame.to_file(tmp, layer=INDEX_LAYER, driver="GPKG", engine="pyogrio")


def _manifest(
    config: TileConfig,
    plans: Sequence[ScenePlan],
    labels: Labels | None,
    status: str,
    result: TileResult | None = None,
) -> dict:
    return {
        "kind": "rscrisis.tileset",
        "rscrisis_version": __version__,
        "status": status,
        "config": config.model_dump(mode="json"),
        "labels": None if labels is None else labels.stats.files,
        "scenes": [
            {
                "name": p.info.name,
                "path": str(p.info.path),
                "crs": p.info.crs.to_string(),
                "bands": list(p.info.bands),
                "colorinterp": list(p.info.colorinterp),
                "dtype": p.info.dtype,
                "nodata": p.info.nodata,
                "native_gsd_m": [round(v, 6) for v in p.info.gsd_m],
                "gsd_m": [round(v, 6) for v in p.grid.gsd_m],
                "grid_transform": list(p.grid.transform)[:6],
                "grid_size": [p.grid.width, p.grid.height],
                "resampled": p.grid.resampled,
            }
            for p in plans
        ],
        "summary": None if result is None else result.to_dict(),
    }


def _check_resume(layout: TileSetLayout, manifest: dict) -> None:
    from rscrisis.io.inputs import read_json

    if not layout.manifest.exists():
        return
    old = read_json(layout.manifest, hint="rerun with --overwrite to start again")
    for key in ("config", "labels"):
        if old.get(key) != manifest[key]:
            raise InputError(
                f"--resume with different settings: {key} was {old.get(key)} and is now "
                f"{manifest[key]}",
                path=layout.root,
                hint="rerun with the original options, or use --overwrite to start again",
            )
    if [s["path"] for s in old.get("scenes", [])] != [s["path"] for s in manifest["scenes"]]:
        raise InputError(
            "--resume with different input scenes",
            path=layout.root,
            hint="rerun with the original inputs, or use --overwrite",
        )


def tile(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    labels: Sequence[str | Path] | None = None,
    config: TileConfig | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress = no_progress,
    scheduler: str | None = None,
) -> TileResult:
    """Cut ``inputs`` (files, folders, globs) into a tile set at ``out``.

    ``scheduler`` (rscrisis.cluster): each scene is one task on a Dask cluster; the tiles and
    the index are the same as a run in this process (records are gathered in scene order).

    Raises :class:`~rscrisis.errors.InputError` for bad input, before writing anything where
    it can be seen up front; bad input found mid-run (a truncated scene) removes this run's
    outputs again (:func:`~rscrisis.io.outputs.claim_output_dir`).
    """
    config = config or TileConfig()
    t0 = time.perf_counter()
    out = Path(out)
    layout = TileSetLayout(out)
    scenes = [inspect_scene(p, config.bands) for p in expand_raster_inputs(inputs)]
    _check_consistent(scenes)
    if config.compress == "jpeg" and scenes[0].dtype != "uint8":
        raise InputError(
            f"--compress jpeg needs uint8 imagery, not {scenes[0].dtype}",
            hint="use --compress deflate",
        )
    label_set = read_labels([Path(p) for p in labels]) if labels else None
    plans = [
        plan_scene(s, target_grid(s, config.resolution, config.resampling), config) for s in scenes
    ]
    check_output_size(plans, config, label_set is not None)
    if label_set is not None:
        _check_overlap(plans, label_set)
    manifest = _manifest(config, plans, label_set, "incomplete")

    with claim_output_dir(out, PRODUCTS, overwrite=overwrite, resume=resume, resumable=True):
        if resume:
            _check_resume(layout, manifest)
            stale = remove_partials(out)
            if stale:
                log.info("removed %d partial file(s) of the interrupted run", stale)
        layout.images.mkdir(parents=True, exist_ok=True)
        if label_set is not None:
            layout.masks.mkdir(parents=True, exist_ok=True)
        write_json_atomic(layout.manifest, manifest)

        result = TileResult(out=str(out))
        result.labels = None if label_set is None else asdict(label_set.stats)
        records: list[dict] = []
        total = sum(p.n_tiles for p in plans)
        try:
            parts = _tile_all(plans, out, label_set, config, resume, scheduler, progress, total)
            for plan, part in zip(plans, parts, strict=True):  # in scene order, however run
                records += part["records"]
                for counter in ("written", "resumed", "skipped_low_valid", "megapixels"):
                    setattr(result, counter, getattr(result, counter) + part[counter])
                result.scenes.append(
                    {"name": plan.info.name, "tiles": plan.n_tiles, "grid": list(plan.shape)}
                )
        except (rasterio.errors.RasterioIOError, OSError) as exc:
            raise ProcessingError(
                f"tiling failed while writing ({exc})",
                path=out,
                hint="free disk space or fix permissions, then rerun with --resume",
            ) from exc
        if not records:
            raise InputError(
                f"no tile has valid pixels: all {total:,} tiles are nodata"
                + (f" or below --min-valid {config.min_valid:g}" if config.min_valid else ""),
                path=", ".join(str(p.info.path) for p in plans),
                hint="check the scene's nodata value (gdalinfo) or lower --min-valid",
            )
        result.tiles = len(records)
        result.megapixels = round(result.megapixels, 3)
        _write_index(layout, records, plans)
        result.seconds = round(time.perf_counter() - t0, 3)
        write_json_atomic(layout.manifest, _manifest(config, plans, label_set, "complete", result))
    return result
