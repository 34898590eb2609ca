"""Training data from tile sets: reading, normalisation, augmentation, spatial validation split.

Why a *spatially blocked* split: neighbouring tiles share buildings, roofs and lighting (and
overlapping tiles share pixels), so a random split leaks and flatters validation scores. Tiles
are grouped into square blocks of ``block_tiles`` x ``block_tiles`` tile footprints in map
coordinates; whole blocks go to validation, and training tiles that touch a validation tile are
dropped (a one-tile buffer), so neighbouring tiles never straddle the two sides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio

from rscrisis.errors import InputError
from rscrisis.io.raster import mask_non_finite, read_raster
from rscrisis.io.tileset import (
    MASK_BACKGROUND,
    MASK_BUILDING,
    MASK_IGNORE,
    TileSetLayout,
    read_index,
    read_manifest,
)

if TYPE_CHECKING:  # geopandas and torch stay off the import path until they are used
    import geopandas as gpd
    from torch.utils.data import Dataset as _DatasetBase
else:  # a TileDataset is a torch Dataset by duck typing: __len__ and __getitem__
    _DatasetBase = object

log = logging.getLogger(__name__)


@dataclass
class TileTable:
    """The tiles of one or more tile sets, with what training and prediction need."""

    frame: gpd.GeoDataFrame  # tile_id, root, image_path, mask_path, geometry, ...
    band_count: int
    dtype: str
    bands: list[int]
    colorinterp: list[str]
    gsd_m: float | None
    tile_size: int

    def __len__(self) -> int:
        return len(self.frame)


def load_tiles(roots: Sequence[str | Path], need_masks: bool) -> TileTable:
    """Read the index of each tile set and check they can be used together."""
    import geopandas as gpd
    import pandas as pd

    frames: list = []
    manifests = []
    for root in roots:
        root = Path(root)
        index = read_index(root)
        layout = TileSetLayout(root)
        manifest = read_manifest(root)
        manifests.append((root, manifest))
        if need_masks and (index.get("mask") is None or index["mask"].isna().all()):
            raise InputError(
                "has no masks (it was tiled without --labels)",
                path=root,
                hint="tile the labelled imagery with rscrisis tile --labels",
            )
        index = index.copy()
        index["root"] = str(root)
        # paths come from the (checked) tile ids, never from the index's own path columns,
        # which anyone could point anywhere
        index["image_path"] = [str(layout.image_path(t)) for t in index.tile_id]
        index["mask_path"] = [
            None if not isinstance(p, str) else str(layout.mask_path(t))
            for t, p in zip(index.tile_id, index.get("mask", [None] * len(index)), strict=True)
        ]
        if need_masks:
            index = index[index["mask_path"].notna()]
        frames.append(index.to_crs(frames[0].crs) if frames else index)
    if not frames or sum(len(f) for f in frames) == 0:
        raise InputError(
            "no tiles found",
            path=", ".join(str(r) for r in roots),
            hint="check the tile sets (index.gpkg lists their tiles)",
        )
    frame = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    scenes = [s for _, m in manifests for s in m.get("scenes", [])]
    with read_raster(frame.image_path.iloc[0]) as ds:
        count, dtype, size = ds.count, ds.dtypes[0], ds.width
        interp = [c.name for c in ds.colorinterp]
    for root, m in manifests:
        for s in m.get("scenes", []):
            if len(s["bands"]) != count:
                raise InputError(
                    f"has {len(s['bands'])} band(s) where other tiles have {count}",
                    path=root,
                    hint="train on tile sets with the same bands",
                )
    gsd = [s["gsd_m"][0] for s in scenes if s.get("gsd_m")]
    return TileTable(
        frame=frame,
        band_count=count,
        dtype=dtype,
        bands=scenes[0]["bands"] if scenes else list(range(1, count + 1)),
        colorinterp=interp,
        gsd_m=float(np.median(gsd)) if gsd else None,
        tile_size=size,
    )


def read_tile(
    image_path: str, mask_path: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image (C,H,W) native dtype, valid (H,W) bool, mask (H,W) uint8 with 255 = ignore)."""
    try:
        with rasterio.open(image_path) as ds:
            image = ds.read()
            valid = mask_non_finite(image, np.any(ds.read_masks() > 0, axis=0))
        mask = None
        if mask_path is not None:
            with rasterio.open(mask_path) as ds:
                mask = ds.read(1)
            odd = (mask != MASK_BACKGROUND) & (mask != MASK_BUILDING) & (mask != MASK_IGNORE)
            if odd.any():
                raise InputError(
                    f"mask holds values other than {MASK_BACKGROUND}, {MASK_BUILDING} and "
                    f"{MASK_IGNORE} (e.g. {int(mask[odd][0])} at {int(odd.sum())} pixels)",
                    path=mask_path,
                    hint="masks are 0 background, 1 building, 255 ignore: re-tile with "
                    "rscrisis tile --labels, or fix the mask (gdal_calc.py)",
                )
            mask = np.where(valid, mask, MASK_IGNORE).astype(np.uint8)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(
            f"tile cannot be read ({str(exc).splitlines()[0]})",
            path=image_path,
            hint="re-tile with rscrisis tile --resume",
        ) from exc
    return image, valid, mask


def band_statistics(
    paths: Sequence[str], max_tiles: int = 64, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-band mean and std over valid pixels of a seeded sample of tiles."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(max_tiles, len(paths)), replace=False)
    sums: np.ndarray | None = None
    sq: np.ndarray | None = None
    n = 0
    for i in sorted(chosen):
        image, valid, _ = read_tile(paths[i], None)
        px = image[:, valid].astype(np.float64)
        if sums is None:
            sums = np.zeros(image.shape[0])
            sq = np.zeros(image.shape[0])
        sums += px.sum(1)
        sq += (px**2).sum(1)
        n += px.shape[1]
    if not n or sums is None or sq is None:
        raise InputError("the sampled tiles hold no valid pixel", hint="check the tile set")
    mean = sums / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 1e-12))
    return [float(v) for v in mean], [float(max(v, 1e-6)) for v in std]


def spatial_split(
    frame,
    val_fraction: float,
    block_tiles: int,
    seed: int,
    hint: str = "lower --val-fraction or --block-tiles, or use --val-fraction 0",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, dropped) of a spatially blocked split with a one-tile buffer;
    ``hint`` names the calling command's own options for the too-few-tiles error."""
    import shapely

    n = len(frame)
    if val_fraction <= 0 or n < 2:
        return np.arange(n), np.array([], int), np.array([], int)
    geoms = frame.geometry.values
    bounds = shapely.bounds(geoms)
    tile_w = float(np.median(bounds[:, 2] - bounds[:, 0]))
    tile_h = float(np.median(bounds[:, 3] - bounds[:, 1]))
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    bx = np.floor(cx / (tile_w * block_tiles)).astype(np.int64)
    by = np.floor(cy / (tile_h * block_tiles)).astype(np.int64)
    blocks: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(bx.tolist(), by.tolist(), strict=True)):
        blocks.setdefault(key, []).append(i)
    keys = sorted(blocks)
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    target = max(1, round(val_fraction * n))
    val: list[int] = []
    for key in keys:
        if len(val) >= target:
            break
        val.extend(blocks[key])
    val_set = set(val)
    # buffer: drop training tiles touching a validation tile (shrunk slightly so tiles that
    # merely share a corner point with float noise are treated as touching too)
    tree = shapely.STRtree(geoms[sorted(val_set)])
    grown = shapely.buffer(geoms, min(tile_w, tile_h) * 0.01)
    touching = set(tree.query(grown, predicate="intersects")[0].tolist())
    dropped = sorted(touching - val_set)
    train = sorted(set(range(n)) - val_set - set(dropped))
    if not train:
        raise InputError(
            f"too few tiles ({n}) for a spatially blocked validation split",
            hint=hint,
        )
    return np.array(train, int), np.array(sorted(val_set), int), np.array(dropped, int)


def normalise(
    image: np.ndarray,
    valid: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Model input from raw pixels: (x - mean) / std per band, invalid pixels set to 0.

    The one definition shared by training, tile prediction and scene prediction, so a model
    always sees its inputs scaled the way it was trained. ``mean``/``std`` are (bands, 1, 1).
    ``out`` (float32, the image's shape) receives the result: scene strips are as wide as the
    scene, and computing in place saves their temporaries.
    """
    x = np.empty(image.shape, np.float32) if out is None else out
    x[...] = image
    x -= mean
    x /= std
    x[..., ~valid] = 0.0
    return x


def augmentation(seed: int):
    """Augmentations for overhead imagery (no 'up' in nadir views): applied on [0, 1] floats.

    ``D4`` draws one of the 8 flips/rotations uniformly. The pipeline shares one random stream
    across its transforms: albumentations' ``Compose(seed=...)`` gives every transform its own
    generator with the *same* seed, which makes their decisions identical (horizontal and
    vertical flips always together, so mirrored views were never seen).
    """
    import random

    import albumentations as A

    pipeline = A.Compose(
        [
            A.D4(p=1.0),
            A.Affine(scale=(0.8, 1.25), rotate=0, p=0.3, fill=0, fill_mask=MASK_IGNORE),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        ]
    )
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def random_state(pipeline) -> dict | None:
    """The random streams of an :func:`augmentation` pipeline, as JSON-able data (for a
    bit-identical ``train --resume``); None for no pipeline."""
    if pipeline is None:
        return None
    return {
        "numpy": pipeline.random_generator.bit_generator.state,
        "python": list(pipeline.py_random.getstate()[1]),
        "python_version": pipeline.py_random.getstate()[0],
    }


def restore_random_state(pipeline, state: dict | None) -> None:
    """Put the streams saved by :func:`random_state` back (in place: every transform of the
    pipeline shares the two generator objects)."""
    if pipeline is None or state is None:
        return
    pipeline.random_generator.bit_generator.state = state["numpy"]
    pipeline.py_random.setstate((state["python_version"], tuple(state["python"]), None))


class TileDataset(_DatasetBase):
    """A torch map-style dataset of (image, mask, valid) built from tile paths.

    Tiles are read once and kept in memory in their native dtype when the set is small
    (``cache``), which is what makes CPU epochs fast; otherwise read on every access.
    """

    def __init__(
        self,
        images: Sequence[str],
        masks: Sequence[str | None],
        mean: Sequence[float],
        std: Sequence[float],
        dtype: str,
        augment=None,
        cache: bool = True,
    ):
        self.images = list(images)
        self.masks = list(masks)
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.scale = 255.0 if dtype == "uint8" else float(np.max(self.mean + 4 * self.std))
        self.augment = augment
        self._cache: dict[int, tuple] | None = {} if cache else None
        #: per tile, whether it comes from the pretraining area (see replay_dataset)
        self.source_domain = np.zeros(len(self.images), bool)

    def __len__(self) -> int:
        return len(self.images)

    def set_masks(self, masks: Sequence[np.ndarray]) -> None:
        """Use these (H, W) uint8 masks (255 = ignore) instead of mask files, e.g. pseudo-labels
        made in memory; the images are read now and kept."""
        if len(masks) != len(self.images):
            raise ValueError(f"{len(masks)} masks for {len(self.images)} tiles")
        self._cache = {}
        for i, mask in enumerate(masks):
            image, valid, _ = read_tile(self.images[i], None)
            self._cache[i] = (image, valid, np.where(valid, mask, MASK_IGNORE).astype(np.uint8))

    def _load(self, i: int):
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        item = read_tile(self.images[i], self.masks[i])
        if self._cache is not None:
            self._cache[i] = item
        return item

    def __getitem__(self, i: int):
        import torch

        image, valid, mask = self._load(i)
        if mask is None:
            mask = np.where(valid, 0, MASK_IGNORE).astype(np.uint8)
        img = image.astype(np.float32)
        if self.augment is not None:
            hwc = np.ascontiguousarray((img / self.scale).transpose(1, 2, 0))
            out = self.augment(image=hwc, mask=mask)
            img = out["image"].transpose(2, 0, 1) * self.scale
            mask = out["mask"]
        valid_out = mask != MASK_IGNORE
        img = normalise(img, valid_out, self.mean, self.std)
        return (
            torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(mask)),
            torch.from_numpy(valid_out),
        )


def pretraining_tilesets(training: dict) -> list[str]:
    """The tile sets a model's lineage was (pre)trained on, before any fine-tuning."""
    if "pretraining_tilesets" in training:
        return list(training["pretraining_tilesets"])
    if "finetune" not in training:
        return [str(Path(t).resolve()) for t in training.get("tilesets", [])]
    return []


def present_pretraining_tilesets(training: dict) -> list[Path]:
    """The (pre)training tile sets of a model's lineage that are still on disk."""
    present = []
    for t in pretraining_tilesets(training):
        if (Path(t) / "index.gpkg").exists():
            present.append(Path(t))
        else:
            log.info("pretraining tile set %s is not on disk; not replayed", t)
    return present


def replay_dataset(
    sources: list[Path],
    meta,
    exclude: set[str],
    seed: int,
    augment: bool = True,
    source_domain: Sequence[Path] = (),
    targets: Mapping[Path, Path] | None = None,
):
    """The labelled tiles of ``sources`` other than the ``exclude`` ids, as a TileDataset with
    their own augmentation stream (``seed + 1``); None when there are none.

    ``targets`` maps a source to a folder of masks that replace its labels, named as its own
    (rscrisis.loop.finetune.model_targets: the starting model's map of it).

    Its ``source_domain`` (bool per tile) marks the tiles of the ``source_domain`` tile sets:
    the pretraining area's, which fine-tuning can normalise with the model's source batch-norm
    statistics (rscrisis.ml.training.fit_steps)."""
    from rscrisis.ml.model import check_bands

    if not sources:
        return None
    table = load_tiles(sources, need_masks=True)
    check_bands(meta, table.band_count, sources[0])
    frame = table.frame[~table.frame.tile_id.isin(exclude)]
    if not len(frame):
        return None
    if targets:
        folders = {str(Path(k)): Path(v) for k, v in targets.items()}
        frame = frame.assign(
            mask_path=[
                str(folders[root] / Path(m).name) if root in folders else m
                for root, m in zip(frame.root, frame.mask_path, strict=True)
            ]
        )
    dataset = TileDataset(
        frame.image_path,
        frame.mask_path,
        meta.mean,
        meta.std,
        table.dtype,
        augment=augmentation(seed + 1) if augment else None,
    )
    if source_domain:
        roots = [Path(s).resolve() for s in source_domain]
        dataset.source_domain = np.array(
            [any(Path(p).resolve().is_relative_to(r) for r in roots) for p in frame.image_path],
            dtype=bool,
        )
    return dataset
