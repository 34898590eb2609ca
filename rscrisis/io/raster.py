"""Raster input: open messy GeoTIFFs, validate them once, and read windows safely.

Field imagery arrives in many shapes: georeferencing held only in ``.aux.xml`` sidecars (GDAL's
PAM, read transparently by ``rasterio.open``), geographic or projected CRSs, uint8 or uint16, an
alpha band instead of a nodata value, sizes that are not a multiple of anything. This module turns
all of that into one :class:`SceneInfo` (what the scene is) and :func:`open_grid` (a
:class:`GridReader` of windows: the file, a :class:`ScaledReader` resampling it, or a GDAL
``WarpedVRT``), so that the tiler and the whole-scene predictor read imagery the same way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from rscrisis.errors import BandError, NotGeoreferencedError, RasterReadError

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")

#: uint8 probability rasters (tile predictions, scene maps): probability = value / PROB_SCALE,
#: PROB_NODATA marks nodata (the GeoTIFF scale tag carries 1 / PROB_SCALE). The one definition.
PROB_SCALE = 254
PROB_NODATA = 255


#: GDAL block cache for streaming reads and writes (tile, scene predict): GDAL's default is 5 %
#: of RAM, which a long run fills with blocks; 64 MB holds the block rows one strip needs, and
#: keeps RSS bounded whatever the scene size.
#: In bytes: rasterio passes an int through, and GDAL took a bare 256 as 256 *bytes* (every
#: warped read then decompressed its source blocks again: 8x slower reads).
GDAL_CACHE_BYTES = 64 * 2**20

#: the most source pixels (as float32 bytes) that :class:`ScaledReader` resamples at once,
#: like GDAL's warp memory limit
SCALED_READ_BYTES = 64 * 2**20


@dataclass(frozen=True)
class SceneInfo:
    """What a scene is, checked once before any output is written."""

    path: Path
    name: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    bands: tuple[int, ...]
    colorinterp: tuple[str, ...]
    has_alpha: bool
    gsd_m: tuple[float, float]

    @property
    def band_count(self) -> int:
        return len(self.bands)


def expand_raster_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Turn files, folders and glob patterns into a sorted, de-duplicated list of rasters."""
    import glob

    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found.extend(p for p in sorted(path.iterdir()) if p.suffix.lower() in RASTER_SUFFIXES)
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            found.extend(m for m in matches if m.suffix.lower() in RASTER_SUFFIXES)
            if not matches:
                raise RasterReadError("the pattern matches no file", path=text)
        elif path.exists():
            found.append(path)
        else:
            raise RasterReadError("no such file or folder", path=path, hint="check the path")
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    if not unique:
        raise RasterReadError(
            "no raster found in the inputs",
            path=", ".join(str(i) for i in inputs),
            hint="give GeoTIFF files, folders holding them, or globs "
            f"({', '.join(RASTER_SUFFIXES)})",
        )
    return list(unique)


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """``rasterio.open`` with read failures turned into a one-line :class:`RasterReadError`."""
    try:
        with warnings.catch_warnings():
            # a missing georeference is reported by inspect_scene as a one-line error instead
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as exc:
        msg = str(exc).split("\n")[0]
        raise RasterReadError(
            f"cannot be read as a raster ({msg})",
            path=path,
            hint="check that the file is a complete GeoTIFF (gdalinfo shows what GDAL sees)",
        ) from exc
    try:
        yield ds
    finally:
        ds.close()


@contextlib.contextmanager
def read_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """:func:`open_raster` for a block that only reads: a read failure inside it (a truncated or
    replaced file) is a one-line :class:`RasterReadError` too. Not for blocks that also write,
    whose failures are the disk's, not the input's."""
    with open_raster(path) as ds:
        try:
            yield ds
        except RasterioIOError as exc:
            detail = str(exc.__cause__ or exc).splitlines()[0]
            raise RasterReadError(
                f"cannot be read ({detail})",
                path=path,
                hint="the file is truncated or corrupt; check it with gdalinfo -checksum",
            ) from exc


def crs_units_per_metre(crs: CRS, x: float, y: float) -> tuple[float, float]:
    """CRS units per *ground* metre along x and y at the point ``(x, y)`` (CRS coordinates).

    Geographic CRSs: degrees per metre from the ellipsoid's geodesic. Projected CRSs: a CRS
    unit is ``linear_units_factor`` projected metres, and a projected metre is ``1 / k`` ground
    metres, where ``k`` is the projection's scale factor at the point (pyproj's
    ``Proj.get_factors``): ``1 / cos(latitude)`` in Web Mercator (EPSG:3857, how XYZ/TMS
    mosaics such as OpenAerialMap's arrive: 13 % at Banepa, 41 % at 45°), 0.9996 to 1.001 in
    UTM. Taking CRS units as metres, as many tools do, makes every resolution, resampling and
    area in Web Mercator wrong by that much. A CRS pyproj cannot compute factors for falls back
    to the unit factor alone.
    """
    if not isinstance(crs, CRS):  # a pyproj CRS, e.g. from a GeoDataFrame
        crs = CRS.from_user_input(crs)
    import pyproj

    pcrs = pyproj.CRS.from_user_input(crs.to_wkt())
    if crs.is_geographic:
        geod = pcrs.get_geod()
        assert geod is not None  # a geographic CRS has an ellipsoid
        step = 1e-4
        _, _, mx = geod.inv(x, y, x + step, y)
        _, _, my = geod.inv(x, y, x, y + step)
        return step / mx, step / my
    _, factor = crs.linear_units_factor  # projected metres per CRS unit
    kx = ky = 1.0
    try:
        lon, lat = pyproj.Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True).transform(
            x, y
        )
        factors = pyproj.Proj(pcrs).get_factors(lon, lat)
        kx, ky = float(factors.parallel_scale), float(factors.meridional_scale)
    except (pyproj.exceptions.CRSError, pyproj.exceptions.ProjError, TypeError) as exc:
        log.debug("no scale factors for %s (%s): CRS units taken as metres", crs, exc)
    if not (math.isfinite(kx) and math.isfinite(ky) and kx > 0 and ky > 0):
        kx = ky = 1.0
    return kx / factor, ky / factor


def _ground_sampling(crs: CRS, transform: Affine, width: int, height: int) -> tuple[float, float]:
    cx, cy = transform @ (width / 2, height / 2)
    ux, uy = crs_units_per_metre(crs, cx, cy)
    px = math.hypot(transform.a, transform.d)
    py = math.hypot(transform.b, transform.e)
    return px / ux, py / uy


def inspect_scene(path: Path, bands: Sequence[int] | None = None) -> SceneInfo:
    """Open ``path``, check georeferencing and band selection, and describe it.

    Raises a :class:`~rscrisis.errors.InputError` subclass naming the file for anything that
    would make tiles wrong: no CRS, no geotransform (GCP-only rasters included), band indices out
    of range, or selecting the alpha band as imagery.
    """
    with open_raster(path) as ds, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if ds.crs is None or ds.transform == Affine.identity():
            extra = " (it has GCPs only)" if ds.gcps[0] else ""
            raise NotGeoreferencedError(
                f"has no georeferencing{extra}: no CRS or geotransform in the file or an "
                ".aux.xml sidecar",
                path=path,
                hint="georeference it first, e.g. gdalwarp -t_srs EPSG:XXXX in.tif out.tif",
            )
        interp = tuple(ci.name for ci in ds.colorinterp)
        alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
        if bands:
            bad = [b for b in bands if b < 1 or b > ds.count]
            if bad:
                raise BandError(
                    f"band {bad[0]} does not exist: the raster has {ds.count} band(s), "
                    f"numbered 1..{ds.count}",
                    path=path,
                    hint="fix --bands",
                )
            chosen = tuple(bands)
        else:
            chosen = tuple(b for b in range(1, ds.count + 1) if b not in alpha)
        if not chosen:
            raise BandError("has no image band besides alpha", path=path)
        dtypes = {ds.dtypes[b - 1] for b in chosen}
        if len(dtypes) > 1:
            raise BandError(
                f"selected bands have mixed data types {sorted(dtypes)}",
                path=path,
                hint="select bands of one data type with --bands",
            )
        return SceneInfo(
            path=path,
            name=path.stem,
            crs=ds.crs,
            transform=ds.transform,
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=dtypes.pop(),
            nodata=ds.nodata,
            bands=chosen,
            colorinterp=tuple(interp[b - 1] for b in chosen),
            has_alpha=bool(alpha),
            gsd_m=_ground_sampling(ds.crs, ds.transform, ds.width, ds.height),
        )


@dataclass(frozen=True)
class Grid:
    """The pixel grid tiles are cut from: the scene's own, or a resampled one."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    gsd_m: tuple[float, float]

    @property
    def resampled(self) -> bool:
        return False


@dataclass(frozen=True)
class ResampledGrid(Grid):
    resampling: str = "bilinear"

    @property
    def resampled(self) -> bool:
        return True


def target_grid(info: SceneInfo, resolution_m: float | None, resampling: str) -> Grid:
    """The grid to tile on: native, or north-up at ``resolution_m`` metres in the scene CRS.

    For a geographic CRS the metre resolution is converted to degrees at the scene centre, so
    tiles keep the source CRS (as docs/design.md requires) and have square ground pixels there.
    """
    if resolution_m is None:
        return Grid(info.crs, info.transform, info.width, info.height, info.gsd_m)
    corners = [
        info.transform @ xy
        for xy in ((0, 0), (info.width, 0), (0, info.height), (info.width, info.height))
    ]
    xs, ys = zip(*corners, strict=True)
    left, right, bottom, top = min(xs), max(xs), min(ys), max(ys)
    ux, uy = crs_units_per_metre(info.crs, (left + right) / 2, (bottom + top) / 2)
    rx, ry = resolution_m * ux, resolution_m * uy
    # a grid that would overshoot the scene by under 1 % of a pixel (UTM's 0.9996 turns 6 m
    # into 20.003 px of 0.3 m) is not given a column of padding for it
    width = max(1, math.ceil((right - left) / rx - 0.01))
    height = max(1, math.ceil((top - bottom) / ry - 0.01))
    transform = Affine(rx, 0.0, left, 0.0, -ry, top)
    return ResampledGrid(
        info.crs, transform, width, height, (resolution_m, resolution_m), resampling
    )


class GridReader:
    """Windows of a :class:`Grid`, read as ``(data, valid)``: data shaped (bands, h, w) in the
    source dtype, ``valid`` a boolean (h, w) array, False for nodata, masked pixels and the
    padding outside the grid (see :func:`read_padded`). Made by :func:`open_grid`."""

    def __init__(self, grid: Grid, ds: rasterio.io.DatasetReaderBase) -> None:
        self.grid = grid
        self.dataset = ds  # the file itself, or the WarpedVRT reading it

    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def height(self) -> int:
        return self.grid.height

    @property
    def crs(self) -> CRS:
        return self.grid.crs

    def read(self, bands: Sequence[int], window: Window, fill: float = 0):
        return read_padded(self.dataset, bands, window, fill)


class ScaledReader(GridReader):
    """Bilinear resampling of a north-up scene onto a north-up grid in its own CRS, as two
    separable 1-D passes over the window's native pixels.

    This is GDAL's warp kernel computed the cheap way: a pure change of scale needs no
    per-pixel coordinate transform, and a separable kernel costs 2 x taps per output pixel
    instead of taps^2. Measured on a 4096^2 scene at 0.3 m read in strips (machine busy): 1.5
    CPU-s through a WarpedVRT and 1.0 here at 0.25 m, 0.75 and 0.33 at 0.75 m, with the same
    values to within one grey level; the copies between layouts are most of what is left.
    The kernel is GDAL's: the triangle ``1 - |d|`` over source pixel centres,
    stretched by the scale when downsampling (anti-aliasing: every source pixel under the output
    pixel counts), weights renormalised over the valid source pixels (edges, nodata, alpha,
    masks). An output pixel is valid where the source pixel under its centre is, as in GDAL's
    warper. Integers are rounded half up.
    """

    def __init__(self, grid: Grid, src: rasterio.io.DatasetReaderBase) -> None:
        super().__init__(grid, src)
        st, gt = src.transform, grid.transform
        # continuous source pixel coordinates of the output pixel centres: u = a * (j + 0.5) + b
        self._cols = (gt.a / st.a, (gt.c - st.c) / st.a)
        self._rows = (gt.e / st.e, (gt.f - st.f) / st.e)

    @staticmethod
    def eligible(info: SceneInfo, grid: Grid) -> bool:
        """Whether this reader gives the warper's result: bilinear, no rotation or shear, and
        the grid in the scene's own CRS (target_grid's grids always are)."""
        t = info.transform
        return (
            isinstance(grid, ResampledGrid)
            and grid.resampling == "bilinear"
            and grid.crs == info.crs
            and t.b == 0
            and t.d == 0
            and grid.transform.b == 0
            and grid.transform.d == 0
        )

    def read(self, bands: Sequence[int], window: Window, fill: float = 0):
        h, w = int(window.height), int(window.width)
        r0, c0 = int(window.row_off), int(window.col_off)
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + h, self.grid.height), min(c0 + w, self.grid.width)
        src = self.dataset
        dtype = np.dtype(src.dtypes[bands[0] - 1])
        data = np.full((len(bands), h, w), fill, dtype=dtype)
        valid = np.zeros((h, w), dtype=bool)
        if rr1 <= rr0 or cc1 <= cc0:
            return data, valid
        rows = _bilinear_taps(*self._rows, rr0, rr1, src.height)
        cols = _bilinear_taps(*self._cols, cc0, cc1, src.width)
        # blocks of output pixels whose source pixels, as float32, stay within
        # SCALED_READ_BYTES (a strip downsampled 5x reads 25x its pixels): whole rows when
        # they fit, at least 64 columns wide
        budget = SCALED_READ_BYTES / (len(bands) * 4)
        per_px = (max(1.0, abs(self._rows[0])) + 2) * (max(1.0, abs(self._cols[0])) + 2)
        row_step = max(1, min(rr1 - rr0, int(budget / (per_px * 64))))
        col_step = max(64, int(budget / (per_px * row_step)))
        for i0 in range(0, rr1 - rr0, row_step):
            rpart = tuple(a[i0 : i0 + row_step] for a in rows)
            for j0 in range(0, cc1 - cc0, col_step):
                cpart = tuple(a[j0 : j0 + col_step] for a in cols)
                out, ok = self._resample(bands, rpart, cpart, dtype)
                top, left = rr0 - r0 + i0, cc0 - c0 + j0
                sl = (slice(top, top + len(rpart[0])), slice(left, left + len(cpart[0])))
                target, values = data[:, sl[0], sl[1]], out.transpose(2, 1, 0)
                if ok.all():
                    target[:] = values
                else:
                    np.copyto(target, values, casting="unsafe", where=ok)
                valid[sl] = ok
        return data, valid

    def _resample(self, bands, rows, cols, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(values (cols, rows, bands) float32, rounded for integer dtypes; validity) of the
        output pixels whose taps are ``rows`` and ``cols`` (see :func:`_bilinear_taps`)."""
        (ri, rw, rnear), (ci, cw, cnear) = rows, cols
        s_r0, s_c0 = int(ri.min()), int(ci.min())
        swin = Window(s_c0, s_r0, int(ci.max()) + 1 - s_c0, int(ri.max()) + 1 - s_r0)
        block, block_valid = read_padded(self.dataset, bands, swin, fill=0)  # inside the source
        ri, ci = ri - s_r0, ci - s_c0
        all_valid = bool(block_valid.all())
        out = _separable(block if all_valid else block * block_valid, ri, rw, ci, cw)
        ok = block_valid[np.ix_(np.clip(rnear - s_r0, 0, None), np.clip(cnear - s_c0, 0, None))]
        ok &= (rnear >= 0)[:, None] & (cnear >= 0)[None, :]
        if not all_valid:  # renormalise over the valid taps
            den = _separable(block_valid[None], ri, rw, ci, cw)  # (cols, rows, 1)
            ok &= (den[..., 0] > 0).T
            np.divide(out, den, out=out, where=den > 0)
        if dtype.kind in "ui":  # GDAL rounds half up; a convex combination needs no clip
            out += 0.5
            np.floor(out, out=out)
        return out, ok


def _bilinear_taps(
    scale: float, offset: float, start: int, stop: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axis of :class:`ScaledReader`'s kernel for output pixels ``start..stop-1``:
    (source indices (n, taps), their weights (n, taps), each output pixel's nearest source
    index or -1 where its centre falls outside the source). Taps outside the source get weight
    0; each row's weights sum to 1 where any tap is inside."""
    u = scale * (np.arange(start, stop, dtype=np.float64) + 0.5) + offset
    radius = max(abs(scale), 1.0)  # the triangle is stretched when downsampling
    taps = math.ceil(2 * radius) + 1
    first = np.floor(u - radius - 0.5).astype(np.int64)
    idx = first[:, None] + np.arange(taps)[None, :]
    weight = np.clip(1.0 - np.abs(idx + 0.5 - u[:, None]) / radius, 0.0, None)
    inside = (idx >= 0) & (idx < size)
    weight[~inside] = 0.0
    total = weight.sum(axis=1, keepdims=True)
    np.divide(weight, total, out=weight, where=total > 0)
    near = np.floor(u).astype(np.int64)
    near[(near < 0) | (near >= size)] = -1
    return np.clip(idx, 0, size - 1), weight.astype(np.float32), near


def _separable(
    x: np.ndarray, ri: np.ndarray, rw: np.ndarray, ci: np.ndarray, cw: np.ndarray
) -> np.ndarray:
    """(cols, rows, bands) float32 of ``x`` (bands, source rows, source cols): the rows pass,
    then the columns pass, each one sparse matrix product (scipy.sparse: 2 x taps
    multiply-adds per output pixel; numpy gathers took 5x longer)."""
    import scipy.sparse as sp

    def matrix(idx: np.ndarray, weight: np.ndarray, size: int):
        n, taps = idx.shape
        m = sp.csr_matrix(
            (weight.ravel().copy(), idx.ravel().copy(), np.arange(0, n * taps + 1, taps)),
            shape=(n, size),
        )
        m.eliminate_zeros()  # in place: hence the copies, the taps are reused
        return m

    bands, h, w = x.shape
    by_row = np.ascontiguousarray(x.transpose(1, 0, 2), dtype=np.float32).reshape(h, bands * w)
    rows = matrix(ri, rw, h) @ by_row  # (out rows, bands x source cols)
    by_col = np.ascontiguousarray(rows.reshape(-1, w).T)  # (source cols, out rows x bands)
    out = matrix(ci, cw, w) @ by_col
    return out.reshape(ci.shape[0], ri.shape[0], bands)


@contextlib.contextmanager
def open_grid(info: SceneInfo, grid: Grid, gdal: bool = False) -> Iterator[GridReader]:
    """A reader of ``grid`` windows: the file itself, a :class:`ScaledReader` when the grid is a
    bilinear change of scale (unless ``gdal``), or else a resampling WarpedVRT.

    Validity comes from GDAL's mask machinery either way (nodata value, alpha band, internal
    mask); a resampling VRT over a source without nodata gets an alpha band so pixels outside
    the source stay invalid.
    """
    with open_raster(info.path) as src:
        if not grid.resampled:
            yield GridReader(grid, src)
            return
        if not gdal and ScaledReader.eligible(info, grid):
            yield ScaledReader(grid, src)
            return
        assert isinstance(grid, ResampledGrid)
        vrt_opts: dict = {
            "crs": grid.crs,
            "transform": grid.transform,
            "width": grid.width,
            "height": grid.height,
            "resampling": Resampling[grid.resampling],
        }
        if info.nodata is None and not info.has_alpha:  # GDAL refuses a second alpha band
            vrt_opts["add_alpha"] = True
        with WarpedVRT(src, **vrt_opts) as vrt:
            yield GridReader(grid, vrt)


def read_padded(
    ds: rasterio.io.DatasetReaderBase,
    bands: Sequence[int],
    window: Window,
    fill: float = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` even where it runs past the raster edge.

    Returns ``(data, valid)`` with data shaped (bands, h, w) in the source dtype, and ``valid`` a
    boolean (h, w) array: False for nodata/alpha-masked pixels and for the padding outside the
    raster. Only the part inside the raster is read (no boundless VRT), so memory is the window.
    """
    h, w = int(window.height), int(window.width)
    r0, c0 = int(window.row_off), int(window.col_off)
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
    inside = (rr0, cc0, rr1, cc1) == (r0, c0, r0 + h, c0 + w)
    inner = window
    try:
        if inside:  # the common case: no padding, no extra copy
            data, valid = _read_valid(ds, bands, window)
            return data, mask_non_finite(data, valid, fill)
        data = np.full((len(bands), h, w), fill, dtype=ds.dtypes[bands[0] - 1])
        valid = np.zeros((h, w), dtype=bool)
        if rr1 <= rr0 or cc1 <= cc0:
            return data, valid
        inner = Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
        sl = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
        block, block_valid = _read_valid(ds, bands, inner)
        data[:, sl[0], sl[1]] = block
        valid[sl] = block_valid
    except RasterioIOError as exc:
        detail = str(exc.__cause__ or exc).splitlines()[0]  # GDAL's own reason, when chained
        raise RasterReadError(
            f"read failed in window (col {int(inner.col_off)}, row {int(inner.row_off)}, "
            f"{int(inner.width)} x {int(inner.height)} px) ({detail})",
            path=getattr(ds, "name", None),
            hint="the file is truncated or corrupt; check it with gdalinfo -checksum and get a "
            "complete copy",
        ) from exc
    return data, mask_non_finite(data, valid, fill)


def mask_non_finite(data: np.ndarray, valid: np.ndarray, fill: float = 0) -> np.ndarray:
    """Treat NaN and ±inf pixels of float imagery as nodata: they are set to ``fill`` in
    ``data`` (in place) and the returned validity is False there. The one rule for every
    reader (tiles, scene windows, training), so a float scene with holes never feeds NaN to a
    model. Integer imagery is returned untouched, at no cost."""
    if data.dtype.kind != "f":
        return valid
    bad = ~np.isfinite(data)
    if not bad.any():
        return valid
    bad_px = bad.any(axis=0)
    data[:, bad_px] = fill if np.isfinite(fill) else 0
    return valid & ~bad_px


def _alpha_band(ds, bands: Sequence[int]) -> int | None:
    """The alpha band masking ``bands`` (e.g. the one a WarpedVRT adds), if any."""
    flags = ds.mask_flag_enums[bands[0] - 1]
    if MaskFlags.alpha not in flags:
        return None
    interp = list(ds.colorinterp)
    return interp.index(ColorInterp.alpha) + 1 if ColorInterp.alpha in interp else None


def _read_valid(ds, bands: Sequence[int], window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(data, valid) of a window inside the raster. An alpha band is read in the same call as
    the data: through a WarpedVRT, a separate mask read would warp the window a second time."""
    alpha = _alpha_band(ds, bands)
    if alpha is not None:
        both = ds.read([*bands, alpha], window=window)
        return both[:-1], both[-1] > 0
    data = ds.read(list(bands), window=window)
    return data, _valid_pixels(ds, bands, window, data)


def _valid_pixels(ds, bands: Sequence[int], window: Window, block: np.ndarray) -> np.ndarray:
    """Validity of ``block`` following GDAL's dataset-mask rule, without needless mask reads.

    All-valid rasters need no mask read; an alpha band or internal mask is shared by all
    bands, so one band's mask is read; nodata masks are computed from the pixels already read
    (a pixel is valid when any band differs from nodata, as ``dataset_mask()`` does).
    """
    flags = [ds.mask_flag_enums[b - 1] for b in bands]
    if all(MaskFlags.all_valid in f for f in flags):
        return np.ones(block.shape[1:], bool)
    if any(MaskFlags.per_dataset in f for f in flags):
        return ds.read_masks(bands[0], window=window) > 0
    if all(MaskFlags.nodata in f for f in flags):
        nodata = [ds.nodatavals[b - 1] for b in bands]
        invalid = np.ones(block.shape[1:], bool)
        for band, nd in zip(block, nodata, strict=True):
            invalid &= np.isnan(band) if (nd is not None and np.isnan(nd)) else band == nd
        return ~invalid
    return np.any(ds.read_masks(list(bands), window=window) > 0, axis=0)


def gtiff_profile(
    width: int,
    height: int,
    count: int,
    dtype: str,
    crs,
    transform: Affine,
    *,
    nodata: float | None = None,
    block: int | tuple[int, int] | None = None,
    **options,
) -> dict:
    """The one builder of GeoTIFF write profiles (tiles, masks, probabilities, scene
    intermediates, sample data): grid, bands and nodata, internal tiling of ``block`` px
    (square, or (x, y)) when given, and any creation ``options`` (compress, predictor, ...)."""
    profile: dict = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if block is not None:
        bx, by = (block, block) if isinstance(block, int) else block
        profile.update(tiled=True, blockxsize=bx, blockysize=by)
    profile.update(options)
    return profile


def one_band_profile(ds, nodata: float, dtype: str = "uint8") -> dict:
    """GeoTIFF profile of a one-band product on ``ds``'s grid (deflate, 256 px blocks when the
    raster is wide enough): predicted probabilities and rasterised masks of a tile."""
    tiled = ds.width % 16 == 0 and ds.height % 16 == 0
    return gtiff_profile(
        ds.width,
        ds.height,
        1,
        dtype,
        ds.crs,
        ds.transform,
        nodata=nodata,
        block=(min(256, ds.width), min(256, ds.height)) if tiled else None,
        compress="deflate",
    )
