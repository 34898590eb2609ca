"""The tile-set folder layout (docs/design.md), shared by every stage that reads or writes tiles.

::

    tiles/
      images/<tile_id>.tif   GeoTIFF in the source CRS; transform = scene grid shifted by window
      masks/<tile_id>.tif    uint8: 1 building, 0 background, 255 ignore (nodata / padding)
      index.gpkg             layer "tiles": one row per tile, footprint in the scene CRS
      tileset.json           resolved config, inputs, band layout; status "complete" when done

A tile set is complete when ``index.gpkg`` exists (it is written last, atomically).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from affine import Affine
from shapely.geometry import Polygon

from rscrisis.errors import InputError

if TYPE_CHECKING:  # geopandas stays off the import path until it is used
    import geopandas as gpd

IMAGES = "images"
MASKS = "masks"
INDEX = "index.gpkg"
INDEX_LAYER = "tiles"
MANIFEST = "tileset.json"
PRODUCTS = (IMAGES, MASKS, INDEX, MANIFEST)

MASK_BACKGROUND = 0
MASK_BUILDING = 1
MASK_IGNORE = 255
#: how QGIS draws a mask (its colour table): buildings red on white; nodata is the band's nodata
#: value, so it stays transparent (a TIFF palette holds no alpha)
MASK_COLOURS = {0: (255, 255, 255, 255), 1: (227, 26, 28, 255), 255: (0, 0, 0, 255)}
MASK_DESCRIPTION = "building mask: 1 = building, 0 = background, 255 = nodata"


@dataclass(frozen=True)
class TileSetLayout:
    root: Path

    @property
    def images(self) -> Path:
        return self.root / IMAGES

    @property
    def masks(self) -> Path:
        return self.root / MASKS

    @property
    def index(self) -> Path:
        return self.root / INDEX

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def image_path(self, tile_id: str) -> Path:
        from rscrisis.io.names import child

        return child(self.images, tile_id, ".tif")

    def mask_path(self, tile_id: str) -> Path:
        from rscrisis.io.names import child

        return child(self.masks, tile_id, ".tif")


def scene_key(scene_name: str) -> str:
    """The part of a scene's tile ids that names it: the scene name mapped into the safe name
    set (rscrisis.io.names; ids become file names), short enough for the grid suffix to fit."""
    from rscrisis.io.names import safe_name

    return safe_name(scene_name)[:180]


def tile_id(scene_name: str, grid_row: int, grid_col: int) -> str:
    """Stable, deterministic id: scene name + grid position (row, column of the tile grid)."""
    return f"{scene_key(scene_name)}_r{grid_row:04d}_c{grid_col:04d}"


def footprint(transform: Affine, width: int, height: int) -> Polygon:
    """The four corners of a ``width`` x ``height`` pixel block, exact for rotated transforms."""
    corners = [transform @ xy for xy in ((0, 0), (width, 0), (width, height), (0, height))]
    return Polygon(corners)


def read_manifest(root: Path) -> dict:
    """A tile set's ``tileset.json`` (empty when absent), checked as hostile input."""
    from rscrisis.io.inputs import TileSetManifest, read_json

    layout = TileSetLayout(Path(root))
    if not layout.manifest.exists():
        return {}
    return read_json(
        layout.manifest,
        hint="restore the tile set's tileset.json, or re-tile with rscrisis tile --overwrite",
        schema=TileSetManifest,
    )


def read_index(root: Path) -> gpd.GeoDataFrame:
    """Open a tile set's index as a GeoDataFrame, with a clear error if it is not a tile set."""
    layout = TileSetLayout(Path(root))
    if not layout.index.exists():
        hint = (
            "it looks interrupted: rerun rscrisis tile with --resume"
            if layout.manifest.exists()
            else "make one with rscrisis tile"
        )
        raise InputError(f"is not a complete tile set (no {INDEX})", path=root, hint=hint)
    from rscrisis.io.inputs import read_layer
    from rscrisis.io.names import check_names

    index = read_layer(
        layout.index,
        INDEX_LAYER,
        required=("tile_id",),
        hint="restore the tile set's index.gpkg, or re-tile with rscrisis tile --overwrite",
    )
    check_names(index.tile_id, "tile id", layout.index)
    if index.tile_id.duplicated().any():
        raise InputError(
            f"lists tile {index.tile_id[index.tile_id.duplicated()].iloc[0]!r} twice",
            path=layout.index,
            hint="restore the tile set's index.gpkg, or re-tile with rscrisis tile --overwrite",
        )
    return index


def write_subset(root: Path, out: Path, tile_ids, *, overwrite: bool = False) -> Path:
    """A new tile set at ``out`` holding only ``tile_ids`` of ``root``.

    Image and mask files are hard-linked when possible (no extra disk), copied otherwise; the
    index keeps its rows and the manifest records where the subset came from.
    """

    from rscrisis.io.outputs import atomic_path, guard_output_dir, link_or_copy, write_json_atomic

    root, out = Path(root), Path(out)
    index = read_index(root)
    wanted = set(tile_ids)
    missing = wanted - set(index.tile_id)
    if missing:
        raise InputError(f"has no tile {sorted(missing)[0]!r}", path=root)
    guard_output_dir(out, PRODUCTS, overwrite=overwrite, resume=False)
    sub = index[index.tile_id.isin(wanted)].reset_index(drop=True)
    src, dst = TileSetLayout(root), TileSetLayout(out)
    dst.images.mkdir(parents=True, exist_ok=True)
    has_masks = "mask" in sub and sub["mask"].notna().any()
    if has_masks:
        dst.masks.mkdir(parents=True, exist_ok=True)
    for tid in sub.tile_id:
        pairs = [(src.image_path(tid), dst.image_path(tid))]
        if has_masks:
            pairs.append((src.mask_path(tid), dst.mask_path(tid)))
        for a, b in pairs:
            link_or_copy(a, b)
    with atomic_path(dst.index) as tmp:
        sub.to_file(tmp, layer=INDEX_LAYER, driver="GPKG", engine="pyogrio")
    manifest = read_manifest(root)
    manifest.update({"subset_of": str(root), "tiles": len(sub)})
    write_json_atomic(dst.manifest, manifest)
    return out
