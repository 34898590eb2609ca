"""``rscrisis tile`` through the CLI: outputs reopened and checked, bad input exits 2 cleanly."""

import json

import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from rscrisis.io.tileset import read_index
from tests.conftest import ORIGIN, UTM, gradient, write_raster, write_vector


@pytest.fixture
def scene(tmp_path):
    return write_raster(tmp_path / "scene.tif", gradient(3, 96, 96))


@pytest.fixture
def labels(tmp_path):
    x0, y0 = ORIGIN
    return write_vector(tmp_path / "b.gpkg", [box(x0 + 2, y0 - 10, x0 + 10, y0 - 2)], UTM)


def test_tile_json_summary_on_stdout_and_outputs(invoke, tmp_path, scene, labels):
    out = tmp_path / "tiles"
    r = invoke("tile", scene, "--labels", labels, "--out", out, "--size", 48, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["tiles"] == 4 and summary["written"] == 4
    assert summary["labels"]["polygons"] == 1
    index = read_index(out)
    assert len(index) == 4 and index.building_fraction.max() > 0
    with rasterio.open(out / "masks/scene_r0000_c0000.tif") as ds:
        assert (ds.read(1) == 1).sum() == 16 * 16
    assert json.loads((out / "tileset.json").read_text())["config"]["size"] == 48


def test_rerun_without_overwrite_exits_2(invoke, tmp_path, scene):
    out = tmp_path / "tiles"
    assert invoke("tile", scene, "-o", out, "-q").exit_code == 0
    r = invoke("tile", scene, "-o", out)
    assert r.exit_code == 2
    assert "already holds output" in r.stderr and "--overwrite" in r.stderr
    assert invoke("tile", scene, "-o", out, "--overwrite", "-q").exit_code == 0
    assert invoke("tile", scene, "-o", out, "--resume", "-q").exit_code == 0


def _bad_inputs(tmp_path, scene):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)
    plain = tmp_path / "plain.tif"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(
            plain, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8"
        ) as dst:
            dst.write(np.zeros((1, 8, 8), np.uint8))
    far = write_vector(tmp_path / "far.gpkg", [box(0, 0, 5, 5)], UTM)
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    return {
        "unreadable file": ([broken], "broken.tif: cannot be read"),
        "no georeferencing": ([plain], "plain.tif: has no georeferencing"),
        "labels overlap no scene": ([scene, "--labels", far], "no label polygon overlaps"),
        "empty label file": ([scene, "--labels", empty], "empty.geojson: holds no feature"),
        "band out of range": ([scene, "--bands", "1,4"], "band 4 does not exist"),
        "missing input": ([tmp_path / "nope.tif"], "nope.tif: no such file"),
        "overlap >= size": ([scene, "--size", 32, "--overlap", 32], "must be smaller"),
        "jpeg on uint16": (
            [write_raster(tmp_path / "u16.tif", gradient(1, 8, 8, "uint16")), "--compress", "jpeg"],
            "needs uint8",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unreadable file",
        "no georeferencing",
        "labels overlap no scene",
        "empty label file",
        "band out of range",
        "missing input",
        "overlap >= size",
        "jpeg on uint16",
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(invoke, tmp_path, scene, case):
    args, message = _bad_inputs(tmp_path, scene)[case]
    out = tmp_path / "out"
    r = invoke("tile", *args, "--out", out)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rscrisis: error:"), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists()


def test_bands_option_must_be_integers(invoke, tmp_path, scene):
    r = invoke("tile", scene, "-o", tmp_path / "o", "--bands", "red")
    assert r.exit_code == 2 and "comma-separated integers" in r.stderr
