"""Shared fixtures: tiny GeoTIFFs and vector files with real CRSs, built in tmp_path."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
BANEPA = REPO.parent / "shared" / "data" / "banepa"

UTM = "EPSG:32645"
ORIGIN = (354_000.0, 3_057_000.0)


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory):
    """The user cache (rscrisis.io.cache) of the whole run in a temporary folder, never the
    tester's ``~/.cache``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RSCRISIS_CACHE_DIR", str(tmp_path_factory.mktemp("user-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _fresh_loggers():
    """Each test starts with the library's loggers as a fresh process has them.

    A command run through CliRunner calls ``configure_logging``, which binds a handler to the
    runner's stderr (closed once the command returns) and stops propagation; left in place, a
    later test's warnings would go to a closed file instead of to ``caplog``.
    """
    yield
    for name in ("rscrisis", "rasterio"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def utm_transform(res: float = 0.5, origin: tuple[float, float] = ORIGIN) -> Affine:
    return Affine(res, 0.0, origin[0], 0.0, -res, origin[1])


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM,
    transform: Affine | None = None,
    nodata: float | None = None,
    alpha: np.ndarray | None = None,
    **extra,
) -> Path:
    """Write ``data`` (bands, h, w) as a GeoTIFF; ``alpha`` adds an alpha band."""
    count = data.shape[0] + (alpha is not None)
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": count,
        "dtype": data.dtype.name,
        "nodata": nodata,
        **extra,
    }
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or utm_transform()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, list(range(1, data.shape[0] + 1)))
        if alpha is not None:
            dst.write(alpha.astype(data.dtype), count)
            interp = [ColorInterp.gray] * (count - 1) + [ColorInterp.alpha]
            if count == 4:
                interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            dst.colorinterp = interp
    return path


def gradient(bands: int, h: int, w: int, dtype: str = "uint8") -> np.ndarray:
    """Unique-ish pixel values so a misplaced window is detected by value comparison."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (yy * 7 + xx * 3).astype(np.int64)
    out = np.stack([(base + 50 * b) for b in range(bands)])
    top = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1e6
    return (out % top).astype(dtype)


def write_vector(path: Path, geoms: list, crs: str, driver: str | None = None) -> Path:
    frame = gpd.GeoDataFrame({"building": ["yes"] * len(geoms)}, geometry=geoms, crs=crs)
    frame.to_file(path, driver=driver, engine="pyogrio")
    return path


def mark_all_done(batch: Path) -> None:
    """Mark every task of an exported batch done, as an annotator would in status.csv."""
    import csv

    with open(batch / "status.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["status"] = "done"
    with open(batch / "status.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner) -> Callable:
    """Run the CLI in-process: ``invoke("tile", ...)`` returns the click Result."""
    from rscrisis.cli.main import app

    def _invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return _invoke


@pytest.fixture
def banepa() -> Path:
    if not (BANEPA / "train" / "scene.tif").exists():
        pytest.skip("../shared/data/banepa is not available")
    return BANEPA


@pytest.fixture(scope="session")
def tiny_tiles(tmp_path_factory) -> Path:
    """A small labelled tile set (16 tiles of 64 px) cut from a generated scene."""
    from rscrisis.config import SyntheticConfig, TileConfig
    from rscrisis.geo.tiling import tile
    from rscrisis.synth.scenes import generate_sample_data

    root = tmp_path_factory.mktemp("tiny")
    generate_sample_data(root / "sd", SyntheticConfig(size_a=256, size_b=256, seed=1))
    tile(
        [root / "sd" / "area_a" / "area_a.tif"],
        root / "tiles",
        labels=[root / "sd" / "area_a" / "buildings.gpkg"],
        config=TileConfig(size=64),
    )
    return root / "tiles"


@pytest.fixture(scope="session")
def tiny_model(tiny_tiles, tmp_path_factory) -> Path:
    """A model trained for two short epochs on ``tiny_tiles`` (real training, tiny scale)."""
    from rscrisis.config import TrainConfig
    from rscrisis.ml.training import train

    out = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    train(
        [tiny_tiles],
        out,
        config=TrainConfig(epochs=2, batch_size=4, val_fraction=0.25, block_tiles=1, threads=1),
    )
    return out


@pytest.fixture(scope="session")
def tiny_pred(tiny_model, tiny_tiles, tmp_path_factory) -> Path:
    """A prediction set of ``tiny_model`` on ``tiny_tiles``."""
    from rscrisis.config import PredictConfig
    from rscrisis.predict.tiles import predict_tiles

    out = tmp_path_factory.mktemp("pred") / "pred"
    predict_tiles(tiny_model, [tiny_tiles], out, config=PredictConfig(batch_size=8, threads=1))
    return out
