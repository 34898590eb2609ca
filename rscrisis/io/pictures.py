"""Pictures people look at instead of tables: quicklooks, batch overviews, calibration and
training curves (PNG, matplotlib's Agg backend: no screen needed).

Each picture is bounded whatever the input size: rasters are read decimated (from their
overviews when they have them) to at most :data:`QUICKLOOK_PX` on the long side, and a batch
overview draws at most :data:`MAX_CHIPS` chips. They are written atomically like every output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rscrisis.io.outputs import atomic_path

#: long side of a scene quicklook, in pixels
QUICKLOOK_PX = 1400
#: chips drawn in a batch overview
MAX_CHIPS = 24
#: the model's building outlines: cyan stands out on red and orange roofs, soil and vegetation
OUTLINE = (0.0, 1.0, 1.0)


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
    """(H, W, 3) float in [0, 1] from (C, H, W) imagery: the first three bands (or one band as
    grey), each stretched between its 2nd and 98th percentile over valid pixels."""
    bands = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    out = np.zeros((*bands.shape[1:], 3), np.float32)
    for i, band in enumerate(bands.astype(np.float32)):
        values = band[valid] if valid is not None and valid.any() else band.ravel()
        values = values[np.isfinite(values)]
        lo, hi = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    if valid is not None:
        out[~valid] = 1.0  # nodata as white paper
    return np.nan_to_num(out, nan=1.0)


def _outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of a boolean mask: inside, within ``width`` px of the outside."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, iterations=width, border_value=0)


def scene_quicklook(
    image, bands: Sequence[int], mask: Path, windows, path: Path, title: str
) -> None:
    """``quicklook.png`` of a mapped scene: the imagery with the buildings outlined in cyan,
    and each window's predicted IoU as a semi-transparent heat layer (red: poor).

    ``image`` is an open dataset on the mask's grid (the scene itself, or the resampling VRT
    the prediction read)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.features import rasterize

    plt = _pyplot()
    with rasterio.open(mask) as ds:
        scale = max(ds.width, ds.height) / QUICKLOOK_PX
        shape = (max(1, round(ds.height / max(scale, 1))), max(1, round(ds.width / max(scale, 1))))
        buildings = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        from affine import Affine

        transform = ds.transform @ Affine.scale(ds.width / shape[1], ds.height / shape[0])
    pixels = image.read(
        list(bands)[:3],
        out_shape=(min(3, len(bands)), *shape),
        resampling=Resampling.average,
        masked=True,
    )
    valid = np.asarray(~np.ma.getmaskarray(pixels).any(0))
    rgb = _display(np.ma.filled(pixels.astype(np.float32), np.nan), valid)
    rgb[_outline(buildings == 1, width=2 if max(shape) >= 800 else 1)] = OUTLINE
    fig, ax = plt.subplots(figsize=(9, 9 * shape[0] / shape[1] + 0.8), dpi=110)
    ax.imshow(rgb, interpolation="nearest")
    if windows is not None and len(windows) and "pred_iou" in windows:
        heat = rasterize(
            zip(windows.geometry, windows.pred_iou.astype(float), strict=True),
            out_shape=shape,
            transform=transform,
            fill=np.nan,
            dtype="float32",
        )
        heat[~valid] = np.nan  # nodata stays white
        layer = ax.imshow(heat, cmap="RdYlGn", vmin=0, vmax=1, alpha=0.3, interpolation="nearest")
        fig.colorbar(layer, ax=ax, fraction=0.035, pad=0.01, label="predicted IoU of the window")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    _save(fig, path)


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
