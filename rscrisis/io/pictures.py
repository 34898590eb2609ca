"""Pictures people look at instead of tables: quicklooks, batch overviews, calibration and
training curves (PNG, matplotlib's Agg backend: no screen needed).

Each picture is bounded whatever the input size: a scene quicklook is gathered decimated
(:class:`Thumbnail`) to at most :data:`QUICKLOOK_PX` on the long side while the scene is
mapped, and a batch overview draws at most :data:`MAX_CHIPS` chips. They are written
atomically like every output.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from rscrisis.io.outputs import atomic_path

#: long side of a scene quicklook, in pixels
QUICKLOOK_PX = 1400
#: a smaller scene's quicklook is enlarged by a whole factor to at least this long side
MIN_QUICKLOOK_PX = 800
#: opacity of the predicted-IoU shading over the imagery
HEAT_ALPHA = 0.3
#: chips drawn in a batch overview
MAX_CHIPS = 24
#: the model's building outlines: cyan stands out on red and orange roofs, soil and vegetation
OUTLINE = (0.0, 1.0, 1.0)
#: valid pixels per band from which a picture's contrast stretch is taken
STRETCH_SAMPLE = 1 << 18


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def _display(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from (C, H, W) imagery: the first three bands (or one band
    as grey), each stretched between its 2nd and 98th percentile over valid pixels (over an
    even sample of :data:`STRETCH_SAMPLE` of them in a larger picture: a 1,230 px quicklook's
    stretch took 0.1 s, most of it sorting 1.5 million values per band)."""
    bands = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    planes = np.empty(bands.shape, np.float32)
    for i, band in enumerate(bands):
        values = band[valid] if valid is not None and valid.any() else band.ravel()
        values = values[:: max(1, values.size // STRETCH_SAMPLE)]
        values = values[np.isfinite(values)]
        lo, hi = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
        plane = planes[i]
        np.subtract(band, lo, out=plane, casting="unsafe")
        plane *= np.float32(1 / max(hi - lo, 1e-6))
        np.clip(plane, 0, 1, out=plane)
    if valid is not None:
        planes[:, ~valid] = 1.0  # nodata as white paper
    np.nan_to_num(planes, copy=False, nan=1.0)
    return np.ascontiguousarray(planes.transpose(1, 2, 0))


def _outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of a boolean mask: inside, within ``width`` px of the outside."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, iterations=width, border_value=0)


class Thumbnail:
    """A decimated copy of a raster, built strip by strip as the raster streams past.

    Scene prediction reads every source row once and writes every map row once; a quicklook
    made from those strips never reads the scene again. Reading it again meant warping it again
    when the scene is resampled to the model's resolution: 10.8 s of a 45 s run on a 24 Mpx
    scene (issue 18). The factor ``k`` is a whole number, so a thumbnail pixel covers exactly
    ``k`` x ``k`` source pixels (the last row and column of blocks may hang over the edge), at
    most :data:`QUICKLOOK_PX` on the long side.

    :meth:`add_image` averages the valid pixels of each block (nodata stays out of the mean; a
    block with none is nodata); :meth:`add_mask` keeps each block's centre pixel (nearest).
    Strips may come in any order and size; rows outside the raster are ignored.
    """

    def __init__(self, width: int, height: int, transform, long_side: int = QUICKLOOK_PX):
        from affine import Affine

        self.width, self.height = width, height
        self.k = max(1, math.ceil(max(width, height) / long_side))
        self.shape = (math.ceil(height / self.k), math.ceil(width / self.k))
        #: the thumbnail's own grid
        self.transform = transform @ Affine.scale(self.k, self.k)
        self._sums: np.ndarray | None = None
        self._counts = np.zeros(self.shape, np.float64)
        self._mask = np.zeros(self.shape, bool)

    def _clip(self, first_row: int, rows: int) -> int:
        return max(0, min(rows, self.height - first_row))

    def add_image(self, first_row: int, data: np.ndarray, valid: np.ndarray) -> None:
        """``data`` (bands, rows, >= width) of scene rows ``first_row`` ...; its first three
        bands are kept (one band shows as grey). ``valid`` (rows, >= width) bool."""
        rows = self._clip(first_row, data.shape[-2])
        if rows == 0:
            return
        k, width = self.k, self.width
        bands = min(3, data.shape[0])
        if self._sums is None:
            self._sums = np.zeros((bands, *self.shape), np.float64)
        d, v = data[:bands, :rows, :width], valid[:rows, :width]
        out_rows = (first_row + np.arange(rows)) // k
        starts = np.flatnonzero(np.r_[True, out_rows[1:] != out_rows[:-1]])
        if v.all():
            xs = self._block_sums(d, starts)
            widths = np.diff(np.r_[np.arange(0, width, k), width])
            vs = np.diff(np.r_[starts, rows])[:, None] * widths[None, :]
        else:
            xs = self._block_sums(np.where(v, d, 0), starts)
            vs = self._block_sums(v.view(np.uint8)[None], starts)[0]
        self._sums[:, out_rows[starts]] += xs
        self._counts[out_rows[starts]] += vs

    def _block_sums(self, d: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Sums of ``d`` (bands, rows, width) over k columns, then over the row groups that
        begin at ``starts``. The columns are summed as k strided slices added in place: one
        pass over the strip, 2-3x faster than ``np.add.reduceat`` along the last axis."""
        k = self.k
        small_ints = d.dtype.kind in "ub" and d.dtype.itemsize == 1 and k <= 257
        acc = np.zeros((*d.shape[:2], self.shape[1]), np.uint16 if small_ints else np.float64)
        for j in range(k):
            part = d[:, :, j::k]
            acc[:, :, : part.shape[2]] += part
        return np.add.reduceat(acc, starts, axis=1, dtype=np.float64)

    def add_mask(self, first_row: int, mask: np.ndarray) -> None:
        """``mask`` (rows, >= width) bool of scene rows ``first_row`` ...: each block's centre."""
        rows = self._clip(first_row, mask.shape[0])
        k, c = self.k, self.k // 2
        picked = np.arange(rows)[(first_row + np.arange(rows)) % k == c]
        if picked.size:
            cols = mask[picked, c : self.width : k]
            self._mask[(first_row + picked) // k, : cols.shape[1]] = cols

    @property
    def valid(self) -> np.ndarray:
        return self._counts > 0

    @property
    def image(self) -> np.ndarray:
        """(bands, h, w) float32 block means, NaN where a block held no valid pixel."""
        if self._sums is None:
            return np.full((1, *self.shape), np.nan, np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self._sums / self._counts).astype(np.float32)

    @property
    def mask(self) -> np.ndarray:
        return self._mask


def scene_quicklook(picture: Thumbnail, windows, path: Path, title: str) -> None:
    """``quicklook.png`` of a mapped scene: the imagery with the buildings outlined in cyan,
    and each window shaded by its predicted IoU in the five classes and colours of the
    windows layer's QGIS style (red: poor), under a title and above a legend.

    ``picture`` holds the imagery (:meth:`Thumbnail.add_image`) and the building mask
    (:meth:`Thumbnail.add_mask`) gathered while the scene was mapped. Drawn with Pillow at the
    thumbnail's own resolution (small scenes are enlarged by a whole factor), not matplotlib:
    nothing is resampled, and it takes about 0.5 s where a figure took about 1 s, all of it
    after the model's last batch.
    """
    from PIL import Image, ImageDraw
    from rasterio.features import rasterize

    from rscrisis.io.styles import IOU_CLASSES, RED_TO_GREEN

    classes = [tuple(int(c) for c in colour.split(",")) for colour in RED_TO_GREEN]
    valid = picture.valid
    rgb = _display(picture.image, valid)
    if windows is not None and len(windows) and "pred_iou" in windows:
        heat = rasterize(
            zip(windows.geometry, windows.pred_iou.astype(float), strict=True),
            out_shape=picture.shape,
            transform=picture.transform,
            fill=np.nan,
            dtype="float32",
        )
        shaded = np.isfinite(heat) & valid
        colours = np.array(classes, np.float32) / 255
        cls = np.digitize(np.where(shaded, heat, 0), IOU_CLASSES[1:-1])
        alpha = np.where(shaded, np.float32(HEAT_ALPHA), np.float32(0))[..., None]
        # (1 - alpha) x imagery + alpha x class colour, as whole-picture passes
        rgb += alpha * (colours[np.clip(cls, 0, len(colours) - 1)] - rgb)
    zoom = max(1, math.ceil(MIN_QUICKLOOK_PX / max(picture.shape)))
    outline = _outline(picture.mask & valid, width=2 if max(picture.shape) >= 800 else 1)
    rgb[outline] = OUTLINE
    pixels = (rgb * 255).round().astype(np.uint8)
    if zoom > 1:
        pixels = pixels.repeat(zoom, 0).repeat(zoom, 1)
    h, w = pixels.shape[:2]
    font = _font()
    pad, line = 8, 20
    width = max(w + 2 * pad, 640)
    canvas = Image.new("RGB", (width, h + 2 * line + 4 * pad), "white")
    canvas.paste(Image.fromarray(pixels), (pad, line + 2 * pad))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="black", font=font)
    y = h + line + 3 * pad
    x = pad
    draw.text((x, y), "predicted IoU of the window:", fill="black", font=font)
    x += int(draw.textlength("predicted IoU of the window:", font=font)) + pad
    for k, fill in enumerate(classes):
        draw.rectangle((x, y + 2, x + 14, y + 14), fill=fill, outline="grey")
        label = f"{IOU_CLASSES[k]:.1f}-{min(IOU_CLASSES[k + 1], 1.0):.1f}"
        draw.text((x + 18, y), label, fill="black", font=font)
        x += 18 + int(draw.textlength(label, font=font)) + pad
    cyan = tuple(int(255 * c) for c in OUTLINE)
    draw.rectangle((x, y + 2, x + 14, y + 14), outline=cyan, width=2)
    draw.text((x + 18, y), "buildings", fill="black", font=font)
    with atomic_path(path) as tmp:
        # zlib's run-length strategy at level 1: 0.13 CPU-s and 3.1 MB for a 24 Mpx scene's
        # quicklook, against 0.18 s and 3.3 MB with the default strategy (level 6: 0.36 s)
        canvas.save(tmp, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the bitmap font, without a size
        return ImageFont.load_default()


def batch_overview(chips: list[dict[str, Any]], footprints, chosen, path: Path, title: str) -> None:
    """``overview.png`` of an annotation batch: numbered chips with the model's outlines, and a
    small map of where the tasks lie among the candidate tiles.

    ``chips``: one dict per task in rank order, with ``rank``, ``image`` (chip path) and
    ``buildings`` (a GeoDataFrame in the chip's CRS, possibly empty)."""
    import rasterio
    from rasterio.features import rasterize

    plt = _pyplot()
    shown = chips[:MAX_CHIPS]
    cols = min(6, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig = plt.figure(figsize=(2.2 * cols + 4.4, max(2.4 * rows, 4.4)), dpi=100)
    grid = fig.add_gridspec(rows, cols + 2)
    for i, chip in enumerate(shown):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        with rasterio.open(chip["image"]) as ds:
            image = ds.read(masked=True)
            transform, shape = ds.transform, (ds.height, ds.width)
        valid = np.asarray(~np.ma.getmaskarray(image).any(0))
        rgb = _display(np.ma.filled(image.astype(np.float32), np.nan), valid)
        frame = chip["buildings"]
        if frame is not None and len(frame):
            burnt = rasterize(
                ((g, 1) for g in frame.geometry if g is not None and not g.is_empty),
                out_shape=shape,
                transform=transform,
                fill=0,
                dtype="uint8",
            )
            rgb[_outline(burnt == 1)] = OUTLINE
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"#{chip['rank']}", fontsize=9, loc="left")
        ax.set_axis_off()
    ax = fig.add_subplot(grid[:, cols:])
    footprints.plot(ax=ax, facecolor="#dddddd", edgecolor="#aaaaaa", linewidth=0.3)
    chosen.plot(ax=ax, facecolor="#e31a1c", edgecolor="#800000", linewidth=0.5, alpha=0.8)
    for geom, rank in zip(chosen.geometry, chosen["rank"], strict=True):
        point = geom.representative_point()
        ax.annotate(str(rank), (point.x, point.y), fontsize=7, ha="center", va="center")
    ax.set_title("where the tasks lie (red) among the candidates", fontsize=9)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def calibration_plot(per_tile: list[dict], scores: dict[str, dict], path: Path, title: str) -> None:
    """``calibration.png``: predicted against true per-tile IoU, for the IoU head and for the
    training-free soft IoU, with the identity line; ``scores`` (per key: ``spearman``,
    ``mae``) are the figures evaluate reports, so picture and table agree."""
    plt = _pyplot()
    true = np.array([r.get("true_iou", np.nan) for r in per_tile], float)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), dpi=110, sharey=True)
    for ax, key, name in zip(axes, ("pred_iou", "soft_iou"), ("IoU head", "soft IoU"), strict=True):
        pred = np.array([r.get(key, np.nan) for r in per_tile], float)
        ok = np.isfinite(pred) & np.isfinite(true)
        has = np.array([bool(r.get("has_buildings", True)) for r in per_tile])
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.scatter(pred[ok & has], true[ok & has], s=14, alpha=0.7, label="tiles with buildings")
        ax.scatter(pred[ok & ~has], true[ok & ~has], s=14, alpha=0.7, marker="x",
                   label="tiles without buildings")  # fmt: skip
        rho, mae = scores[key]["spearman"], scores[key]["mae"]
        ax.set_title(f"{name}: Spearman {rho:.2f}, MAE {mae:.2f}", fontsize=10)
        ax.set_xlabel(f"{name} (predicted)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("true IoU of the tile")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def history_plot(history: list[dict], path: Path, title: str) -> None:
    """``MODEL.history.png``: the training losses and the validation scores per epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    left.plot(epochs, [r["seg_loss"] for r in history], marker="o", ms=3, label="segmentation")
    left.plot(epochs, [r["iou_loss"] for r in history], marker="o", ms=3, label="IoU head")
    left.set_yscale("log")  # both losses readable, whatever their scales
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (log)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for key, name in (("val_iou", "pixel IoU"), ("val_f1", "pixel F1"),
                      ("val_iou_spearman", "IoU head Spearman")):  # fmt: skip
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            right.plot(epochs, [np.nan if v is None else v for v in values], marker="o", ms=3,
                       label=name)  # fmt: skip
    best = max(history, key=lambda r: r.get("val_iou") or -1) if history else None
    if best is not None and best.get("val_iou") is not None:
        right.axvline(best["epoch"], color="grey", ls="--", lw=1)
        right.annotate("best", (best["epoch"], 0.02), fontsize=8, color="grey")
    right.set_xlabel("epoch")
    right.set_ylabel("validation")
    lowest = min((v for r in history for k, v in r.items() if k.startswith("val_") and
                  isinstance(v, float) and math.isfinite(v)), default=0.0)  # fmt: skip
    right.set_ylim(min(0.0, lowest - 0.05), 1)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)
