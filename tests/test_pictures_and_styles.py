"""Pictures and QGIS-ready outputs (issue 16): every PNG opens, has its size and is not blank;
the scene mask has a colour table and band descriptions; the GeoPackages carry QGIS styles."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
from PIL import Image

from rscrisis.config import PredictConfig, RankConfig, SceneConfig
from rscrisis.io.tileset import MASK_COLOURS


def assert_picture(path, min_size=(400, 250), ink=0.02):
    """A PNG of at least ``min_size`` with at least ``ink`` of its pixels drawn (neither white
    nor black): charts are mostly paper, imagery mostly not."""
    assert path.exists(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        grey = np.asarray(im.convert("L"), float)
    assert grey.std() > 8, f"{path.name} looks blank (std {grey.std():.1f})"
    drawn = ((grey > 15) & (grey < 240)).mean()
    assert drawn > ink, f"{path.name}: only {drawn:.1%} drawn"


def styles(gpkg):
    with sqlite3.connect(gpkg) as db:
        rows = db.execute(
            "SELECT f_table_name, styleName, styleQML, useAsDefault FROM layer_styles"
        ).fetchall()
        registered = db.execute(
            "SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
    assert registered == ("attributes",)
    return {name: (style, ET.fromstring(qml.split("\n", 1)[1]), default) for name, style, qml,
            default in rows}  # fmt: skip


@pytest.fixture(scope="module")
def scene_map(tiny_model, tiny_tiles, tmp_path_factory):
    from rscrisis.predict.scene import predict_scene

    out = tmp_path_factory.mktemp("map") / "map"
    scene = tiny_tiles.parent / "sd" / "area_b" / "area_b.tif"
    predict_scene(tiny_model, scene, out, config=SceneConfig(window=64, threads=1))
    return out


def test_scene_quicklook_and_qgis_ready_maps(scene_map):
    assert_picture(scene_map / "quicklook.png", ink=0.3)
    with rasterio.open(scene_map / "mask.tif") as ds:
        table = ds.colormap(1)
        assert ds.descriptions[0].startswith("building mask")
    for value, colour in MASK_COLOURS.items():
        assert table[value][:3] == colour[:3]  # GDAL gives the nodata entry alpha 0
    with rasterio.open(scene_map / "probability.tif") as ds:
        assert ds.descriptions[0] == "building probability"
    windows = styles(scene_map / "windows.gpkg")
    _, qml, default = windows["windows"]
    renderer = qml.find("renderer-v2")
    assert default == 1 and renderer.get("type") == "graduatedSymbol"
    assert renderer.get("attr") == "pred_iou" and len(renderer.find("ranges")) == 5
    buildings = styles(scene_map / "buildings.gpkg")
    layer = buildings["buildings"][1].find(".//layer")
    assert layer.get("class") == "SimpleLine"  # outlines, no fill
    import pyogrio

    # the style table is not a feature layer: readers asked for the layer get it unchanged
    assert pyogrio.read_info(scene_map / "buildings.gpkg", layer="buildings")["features"] >= 0


def test_prediction_set_scores_are_styled_by_priority(tiny_pred):
    style, qml, _ = styles(tiny_pred / "scores.gpkg")["scores"]
    attr = qml.find("renderer-v2").get("attr")
    # rank's default, entropy-iou: uncertain and probably wrong
    assert style == "priority" and "mean_entropy" in attr and "calibrated_iou" in attr


def test_rank_writes_an_overview_and_a_styled_ranking(tiny_pred, tmp_path):
    from rscrisis.loop.export import rank

    rank(tiny_pred, tmp_path / "b", config=RankConfig(top=4))
    assert_picture(tmp_path / "b" / "overview.png", min_size=(800, 300), ink=0.15)
    assert (
        styles(tmp_path / "b" / "ranking.gpkg")["ranking"][1].find("renderer-v2").get("attr")
        == "score"
    )


def test_evaluate_writes_a_calibration_scatter(tiny_model, tiny_tiles, tmp_path):
    from rscrisis.predict.evaluate import evaluate

    evaluate(tiny_model, [tiny_tiles], out=tmp_path / "e", config=PredictConfig(threads=1))
    assert_picture(tmp_path / "e" / "calibration.png", min_size=(700, 350))


def test_train_writes_its_history_picture(tiny_model):
    assert_picture(tiny_model.with_name("tiny.history.png"), min_size=(700, 300))


def test_simulate_plot_has_its_gain_panel(tmp_path):
    from rscrisis.config import SimulateConfig
    from rscrisis.loop.simulate import CEILING, START, plot, with_shared_rounds

    rng = np.random.default_rng(0)
    rows = [{"seed": -1, "formula": START, "round": -1, "labelled": 0, "test_iou": 0.3}]
    formulas = ("random", "entropy", "entropy-iou+coreset")
    for seed in range(3):
        rows.append({"seed": seed, "formula": CEILING, "round": -1, "labelled": 40,
                     "test_iou": 0.7})  # fmt: skip
        for k, f in enumerate(formulas):
            for r, n in enumerate((4, 8, 12)):
                iou = 0.3 + 0.3 * (1 - np.exp(-n / (6 - k))) + rng.normal(0, 0.01)
                rows.append({"seed": seed, "formula": f, "round": r, "labelled": n,
                             "test_iou": iou})  # fmt: skip
    rows = with_shared_rounds(rows, SimulateConfig(formulas=formulas, seeds=(0, 1, 2)))
    plot(rows, formulas, tmp_path / "curves.png")
    assert_picture(tmp_path / "curves.png", min_size=(1400, 500))


def test_thumbnail_built_from_strips_is_the_block_mean_of_the_valid_pixels():
    """Quicklook imagery is gathered from the strips a scene streams through: whatever the
    strip sizes, each thumbnail pixel is the mean of the valid pixels of its k x k block (NaN
    where none is valid), and the mask keeps each block's centre pixel."""
    from affine import Affine

    from rscrisis.io.pictures import Thumbnail

    rng = np.random.default_rng(1)
    height, width = 203, 157
    image = rng.integers(0, 255, (4, height, width + 9), dtype=np.uint8)  # padded past the edge
    valid = np.ones((height, width + 9), bool)
    valid[20:60, 30:90] = False  # nodata, whole blocks of it included
    mask = rng.random((height, width + 9)) > 0.5
    thumb = Thumbnail(width, height, Affine(0.5, 0, 100, 0, -0.5, 200), long_side=40)
    k = thumb.k
    assert k == 6 and thumb.shape == (34, 27)
    assert thumb.transform == Affine(3.0, 0, 100, 0, -3.0, 200)
    row = 0
    for size in (7, 64, 1, 50, 81, 30):  # any sizes, ending past the last row
        thumb.add_image(row, image[:, row : row + size], valid[row : row + size])
        thumb.add_mask(row, mask[row : row + size])
        row += size
    qh, qw = thumb.shape
    data = np.zeros((3, qh * k, qw * k))
    ok = np.zeros((qh * k, qw * k))
    data[:, :height, :width] = image[:3, :, :width] * valid[:, :width]
    ok[:height, :width] = valid[:, :width]
    sums = data.reshape(3, qh, k, qw, k).sum((2, 4))
    counts = ok.reshape(qh, k, qw, k).sum((1, 3))
    with np.errstate(invalid="ignore"):
        expected = sums / counts
    np.testing.assert_allclose(thumb.image, expected, rtol=1e-6)
    assert np.isnan(thumb.image[:, 5, 7]).all() and not thumb.valid[5, 7]
    centres = mask[k // 2 :: k, k // 2 : width : k]
    np.testing.assert_array_equal(thumb.mask[: centres.shape[0], : centres.shape[1]], centres)


def test_quicklook_pixels_are_the_stretched_imagery_shaded_by_class_and_outlined(tmp_path):
    """Every kind of quicklook pixel, read back from the PNG: the imagery stretched between its
    2nd and 98th percentiles, a window's class colour blended in at HEAT_ALPHA, cyan building
    outlines, white nodata."""
    import geopandas as gpd
    from affine import Affine
    from shapely.geometry import box

    from rscrisis.io.pictures import HEAT_ALPHA, MIN_QUICKLOOK_PX, Thumbnail, scene_quicklook
    from rscrisis.io.styles import RED_TO_GREEN

    size = 40
    ramp = np.tile(np.arange(size, dtype=np.uint8) * 5 + 20, (3, size, 1))  # columns 20..215
    valid = np.ones((size, size), bool)
    valid[:, 36:] = False  # nodata on the right
    mask = np.zeros((size, size), bool)
    mask[10:20, 22:32] = True  # one building, 10 x 10 px
    thumb = Thumbnail(size, size, Affine(1, 0, 500, 0, -1, 900))
    thumb.add_image(0, ramp, valid)
    thumb.add_mask(0, mask)
    # the left half is a window of predicted IoU 0.1 (the red class); the right is unshaded
    windows = gpd.GeoDataFrame(
        {"pred_iou": [0.1]}, geometry=[box(500, 860, 520, 900)], crs="EPSG:32645"
    )
    scene_quicklook(thumb, windows, tmp_path / "q.png", "test")
    zoom = -(-MIN_QUICKLOOK_PX // size)
    with Image.open(tmp_path / "q.png") as im:
        pixels = np.asarray(im.convert("RGB"))[36:, 8:][: size * zoom, : size * zoom]
    picture = pixels[zoom // 2 :: zoom, zoom // 2 :: zoom].astype(float)  # one per source px
    values = ramp[0][valid].astype(float)
    lo, hi = np.percentile(values, (2, 98))
    grey = np.clip((ramp[0] - lo) / (hi - lo), 0, 1)
    red = np.array([int(c) for c in RED_TO_GREEN[0].split(",")]) / 255
    for col in (2, 12, 19):  # shaded, away from the building
        want = 255 * ((1 - HEAT_ALPHA) * grey[5, col] + HEAT_ALPHA * red)
        np.testing.assert_allclose(picture[5, col], want, atol=1.01)
    for col in (21, 30, 35):  # not shaded
        np.testing.assert_allclose(picture[5, col], 255 * grey[5, col], atol=1.01)
    assert (picture[10, 22:32] == (0, 255, 255)).all()  # the building's top edge: cyan
    assert (picture[15, 22] == (0, 255, 255)).all() and (picture[15, 31] == (0, 255, 255)).all()
    np.testing.assert_allclose(picture[15, 26], 255 * grey[15, 26], atol=1.01)  # inside: imagery
    assert (picture[:, 36:] == 255).all()  # nodata: white paper
