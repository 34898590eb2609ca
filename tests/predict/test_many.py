"""Many scenes into one product (issue 17): in this process and on a Dask LocalCluster of 2
worker processes, with overlaps, a killed worker, a corrupt scene and --resume."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.windows import Window

from rscrisis.config import SceneConfig
from rscrisis.predict.many import SAME_BUILDING, predict_scenes
from rscrisis.predict.scene import predict_scene

CONFIG = SceneConfig(window=64, threads=1)
#: 4 scenes of 160 px cut from one 256 px scene, overlapping by 64 px both ways
OFFSETS = [(0, 0), (0, 96), (96, 0), (96, 96)]


@pytest.fixture(scope="module")
def scenes(tiny_tiles, tmp_path_factory):
    source = tiny_tiles.parent / "sd" / "area_b" / "area_b.tif"
    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    with rasterio.open(source) as ds:
        for k, (row, col) in enumerate(OFFSETS):
            window = Window(col, row, 160, 160)
            profile = {**ds.profile, "width": 160, "height": 160, "tiled": False,
                       "transform": ds.window_transform(window)}  # fmt: skip
            profile.pop("blockxsize", None)
            profile.pop("blockysize", None)
            path = folder / f"part{k}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(ds.read(window=window))
            paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def sequential(tiny_model, scenes, tmp_path_factory):
    """Each scene mapped alone, the single-scene way."""
    root = tmp_path_factory.mktemp("seq")
    for path in scenes:
        predict_scene(tiny_model, path, root / os.path.basename(path)[:-4], config=CONFIG)
    return root


def _same_as_sequential(out, sequential, scenes):
    for path in scenes:
        scene_id = os.path.basename(path)[:-4]
        mine, alone = out / "scenes" / scene_id, sequential / scene_id
        for raster in ("probability.tif", "mask.tif"):
            with rasterio.open(mine / raster) as a, rasterio.open(alone / raster) as b:
                assert a.transform == b.transform and a.crs == b.crs
                assert np.array_equal(a.read(), b.read()), (scene_id, raster)
        a = gpd.read_file(mine / "buildings.gpkg", layer="buildings")
        b = gpd.read_file(alone / "buildings.gpkg", layer="buildings")
        assert len(a) == len(b) and a.geometry.geom_equals_exact(b.geometry, 0).all(), scene_id


def _one_product(out, scenes):
    """The VRTs cover every scene; scenes.gpkg lists them; buildings in overlaps appear once."""
    with rasterio.open(out / "mask.vrt") as vrt:
        mosaic = vrt.read(1)
        for path in scenes:
            with rasterio.open(path) as ds:
                left, bottom, right, top = ds.bounds
            assert vrt.bounds.left <= left and vrt.bounds.right >= right
            assert vrt.bounds.bottom <= bottom and vrt.bounds.top >= top
        assert (mosaic != vrt.nodata).mean() > 0.9  # every scene's data shows through
    with rasterio.open(out / "probability.vrt") as vrt:
        assert vrt.scales[0] == pytest.approx(1 / 254) and vrt.read(1).max() <= 255
    table = gpd.read_file(out / "scenes.gpkg", layer="scenes")
    assert len(table) == len(scenes) and table.geometry.notna().all()
    merged = gpd.read_file(out / "buildings.gpkg", layer="buildings")
    per_scene = sum(
        len(gpd.read_file(out / "scenes" / s / "buildings.gpkg", layer="buildings"))
        for s in table.scene_id[table.status == "done"]
    )
    assert 0 < len(merged) <= per_scene
    tree = shapely.STRtree(merged.geometry.values)
    for i, j in zip(*tree.query(merged.geometry.values, predicate="intersects"), strict=True):
        if i < j and merged.scene_id[i] != merged.scene_id[j]:
            a, b = merged.geometry[i], merged.geometry[j]
            shared = a.intersection(b).area
            assert shared < SAME_BUILDING * min(a.area, b.area), "a building kept twice"
    return table


def test_in_process_run_equals_each_scene_alone(tiny_model, scenes, sequential, tmp_path):
    result = predict_scenes(tiny_model, scenes, tmp_path / "out", config=CONFIG)
    assert (result.done, result.failed) == (4, 0)
    _same_as_sequential(tmp_path / "out", sequential, scenes)
    table = _one_product(tmp_path / "out", scenes)
    assert table.mean_pred_iou.between(0, 1).all()


def test_a_corrupt_scene_fails_alone_and_resume_recomputes_nothing(
    invoke, tiny_model, scenes, tmp_path
):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(Path(scenes[0]).read_bytes()[:3000])  # a truncated GeoTIFF
    listing = tmp_path / "scenes.txt"
    listing.write_text("\n".join([*scenes, str(broken), "# a comment"]) + "\n")
    out = tmp_path / "out"
    r = invoke("predict", tiny_model, listing, "-o", out, "--window", "64", "--threads", "1")
    assert r.exit_code == 2, r.stderr  # the only failure was bad input
    assert "1 of 5 scenes failed" in r.stderr and "broken" in r.stderr
    table = gpd.read_file(out / "scenes.gpkg", layer="scenes")
    failed = table[table.status == "failed"]
    assert list(failed.scene_id) == ["broken"] and failed.reason.iloc[0]
    assert (table.status == "done").sum() == 4
    stamps = {p: p.stat().st_mtime_ns for p in (out / "scenes").rglob("*.tif")}
    listing.write_text("\n".join(scenes) + "\n")
    r = invoke("predict", tiny_model, listing, "-o", out, "--window", "64", "--threads", "1",
               "--resume", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert '"resumed": 4' in r.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing recomputed
    # another model or other settings are refused, not mixed in
    r = invoke("predict", tiny_model, listing, "-o", out, "--window", "96", "--resume")
    assert r.exit_code == 2 and "other settings" in r.stderr


@pytest.mark.slow
def test_a_local_cluster_survives_a_killed_worker(tiny_model, scenes, sequential, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        killed: list[int] = []

        def kill_a_busy_worker():
            pids = client.run(os.getpid)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                for address, keys in client.processing().items():
                    if keys and address in pids:
                        os.kill(pids[address], signal.SIGKILL)
                        killed.append(pids[address])
                        return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        result = predict_scenes(
            tiny_model, scenes, tmp_path / "out", config=CONFIG, scheduler=cluster.scheduler_address
        )
        killer.join()
    assert killed, "no worker was killed"
    assert (result.done, result.failed) == (4, 0)
    workers = {r["worker"] for r in result.records}
    assert len(workers) >= 2  # the scenes ran in more than one process
    _same_as_sequential(tmp_path / "out", sequential, scenes)
    _one_product(tmp_path / "out", scenes)


@pytest.mark.slow
def test_scheduler_local_2_from_the_command_line(invoke, tiny_model, scenes, sequential, tmp_path):
    folder = os.path.dirname(scenes[0])
    r = invoke("predict", tiny_model, folder, "-o", tmp_path / "out", "--window", "64",
               "--scheduler", "local:2")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    _same_as_sequential(tmp_path / "out", sequential, scenes)
    _one_product(tmp_path / "out", scenes)


@pytest.mark.slow
def test_tile_set_prediction_on_two_workers_equals_one_here(
    invoke, tiny_model, tiny_tiles, tmp_path
):
    import hashlib

    common = ["--batch-size", "2", "--threads", "1"]
    here, there = tmp_path / "here", tmp_path / "there"
    assert invoke("predict", tiny_model, tiny_tiles, "-o", here, *common).exit_code == 0
    r = invoke("predict", tiny_model, tiny_tiles, "-o", there, *common, "--scheduler", "local:2")
    assert r.exit_code == 0, r.stderr
    assert np.array_equal(np.load(here / "embeddings.npy"), np.load(there / "embeddings.npy"))
    a = gpd.read_file(here / "scores.gpkg", layer="scores")
    b = gpd.read_file(there / "scores.gpkg", layer="scores")
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))

    def digest(root):
        files = (root / "probs").iterdir()
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digest(here) == digest(there) and len(digest(here)) == len(a)
    assert invoke("rank", there, "-o", tmp_path / "batch", "--top", "3").exit_code == 0


def test_scene_ids_from_a_listing_are_safe_unique_names():
    """Scene paths arrive in .txt listings by mail: whatever they hold, each scene's folder is
    a safe name directly under DIR/scenes/, never a path that leaves it."""
    from rscrisis.io.names import is_safe
    from rscrisis.predict.many import scene_tasks

    hostile = ["../../etc/passwd", "/abs/a b.tif", "x/a_b.tif", "..", ".tif",
               "x/..hidden..tif", "/vsicurl/https://h/p/s%20x.tif?sig=1"]  # fmt: skip
    ids = [t.scene_id for t in scene_tasks(hostile)]
    assert all(is_safe(i) and "/" not in i and ".." not in i for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert ids[1:3] == ["a_b", "a_b_2"]  # a clash gets a suffix, in input order
