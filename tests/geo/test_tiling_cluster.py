"""``tile --scheduler`` (issue 17): one task per scene on a Dask LocalCluster of 2 worker
processes gives the same tile set as a run in this process, file for file."""

from __future__ import annotations

import hashlib

import geopandas as gpd
import pytest

pytestmark = pytest.mark.slow


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "images").glob("*.tif")) + sorted((root / "masks").glob("*.tif"))
    }


def test_tiling_on_two_workers_equals_tiling_here(invoke, tiny_tiles, tmp_path):
    sd = tiny_tiles.parent / "sd"
    scenes = [sd / "area_a" / "area_a.tif", sd / "area_b" / "area_b.tif"]
    labels = sd / "area_a" / "buildings.gpkg"
    common = ["--size", "64", "--overlap", "16", "-l", labels]
    here, there = tmp_path / "here", tmp_path / "there"
    assert invoke("tile", *scenes, "-o", here, *common).exit_code == 0
    r = invoke("tile", *scenes, "-o", there, *common, "--scheduler", "local:2")
    assert r.exit_code == 0, r.stderr
    assert _digest(here) == _digest(there) and len(_digest(here)) > 20
    a = gpd.read_file(here / "index.gpkg")
    b = gpd.read_file(there / "index.gpkg")
    assert list(a.tile_id) == list(b.tile_id)  # gathered in scene order
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals_exact(b.geometry, 0).all()
