"""Corrections come back from the tools annotators use (issue 14), in those tools' own formats:
an ``.osm`` file as JOSM saves it, a JOSM GeoJSON export and a QGIS-edited GeoPackage. Each is
ingested, and the rasterised mask equals the drawn shapes pixel for pixel."""

from __future__ import annotations

import json
import shutil

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from shapely.geometry import Polygon, box

from rscrisis.config import RankConfig
from rscrisis.errors import LabelError
from rscrisis.io.batch import BatchLayout
from rscrisis.loop.ingest import ingest
from tests.conftest import mark_all_done

#: drawn in pixel coordinates (col, row) of the task's tile: a plain building, and a courtyard
#: building (outer ring with a hole); edges on pixel borders so pixel centres decide cleanly
PLAIN = box(5, 5, 20, 15)
OUTER, HOLE = box(30, 30, 60, 60), box(40, 40, 50, 50)


def _expected(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[5:15, 5:20] = 1
    mask[30:60, 30:60] = 1
    mask[40:50, 40:50] = 0
    return mask


@pytest.fixture(scope="module")
def exported(tiny_pred, tmp_path_factory):
    from rscrisis.loop.export import rank

    out = tmp_path_factory.mktemp("tools") / "batch"
    rank(tiny_pred, out, config=RankConfig(top=1))
    mark_all_done(out)
    return out


@pytest.fixture
def task(exported, tmp_path):
    """A fresh copy of the batch, and its one task's folder, tile transform and CRS."""
    batch = tmp_path / "batch"
    shutil.copytree(exported, batch)
    task_dir = next((batch / "tasks").iterdir())
    with rasterio.open(task_dir / "image.tif") as ds:
        return batch, task_dir, ds.transform, ds.crs, (ds.height, ds.width)


def _to_map(geom, transform):
    return shapely.transform(geom, lambda xy: np.column_stack(transform @ (xy[:, 0], xy[:, 1])))


def _lonlat(geom, transform, crs):
    to_wgs84 = Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    mapped = _to_map(geom, transform)
    return shapely.transform(mapped, lambda xy: np.column_stack(to_wgs84.transform(*xy.T)))


def _mask_after_ingest(batch) -> np.ndarray:
    (report,) = ingest([batch])
    assert report.taken and report.buildings == 2
    labels = BatchLayout(batch).labels
    (mask_path,) = sorted((labels / "masks").glob("*.tif"))
    with rasterio.open(mask_path) as ds:
        return ds.read(1)


def _josm_osm(task_dir, transform, crs, *, untagged: bool = False) -> str:
    """OSM XML the way JOSM saves a layer: negative ids, action='modify', a bounds element,
    a closed way tagged building=yes and a multipolygon relation with outer and inner ways."""
    ids = iter(range(-25381, -99999, -1))
    nodes, ways = [], []

    def ring(poly, tags=""):
        way_id = next(ids)
        refs = []
        for lon, lat in list(poly.exterior.coords)[:-1]:
            node_id = next(ids)
            nodes.append(
                f"  <node id='{node_id}' action='modify' visible='true' "
                f"lat='{lat:.11f}' lon='{lon:.11f}' />"
            )
            refs.append(node_id)
        nd = "".join(f"\n    <nd ref='{r}' />" for r in [*refs, refs[0]])
        ways.append(f"  <way id='{way_id}' action='modify' visible='true'>{nd}{tags}\n  </way>")
        return way_id

    building = "\n    <tag k='building' v='yes' />"
    ring(_lonlat(PLAIN, transform, crs), building)
    outer = ring(_lonlat(OUTER, transform, crs))
    inner = ring(_lonlat(HOLE, transform, crs))
    if untagged:
        ring(_lonlat(box(70, 5, 80, 15), transform, crs))
    relation = (
        f"  <relation id='{next(ids)}' action='modify' visible='true'>\n"
        f"    <member type='way' ref='{outer}' role='outer' />\n"
        f"    <member type='way' ref='{inner}' role='inner' />\n"
        "    <tag k='building' v='yes' />\n    <tag k='type' v='multipolygon' />\n  </relation>"
    )
    bounds = _lonlat(box(0, 0, 64, 64), transform, crs).bounds
    return "\n".join(
        [
            "<?xml version='1.0' encoding='UTF-8'?>",
            "<osm version='0.6' upload='never' generator='JOSM'>",
            f"  <bounds minlat='{bounds[1]}' minlon='{bounds[0]}' maxlat='{bounds[3]}' "
            f"maxlon='{bounds[2]}' origin='OpenStreetMap server' />",
            *nodes,
            *ways,
            relation,
            "</osm>",
        ]
    )


def test_an_osm_file_saved_by_josm_comes_back_pixel_for_pixel(task):
    batch, task_dir, transform, crs, shape = task
    (task_dir / "buildings.osm").write_text(_josm_osm(task_dir, transform, crs))
    assert np.array_equal(_mask_after_ingest(batch), _expected(*shape))


def test_an_untagged_closed_way_in_josm_osm_is_refused_with_the_fix(task):
    batch, task_dir, transform, crs, _ = task
    (task_dir / "buildings.osm").write_text(_josm_osm(task_dir, transform, crs, untagged=True))
    with pytest.raises(LabelError, match="closed way.* without tags") as info:
        ingest([batch])
    assert "building=yes" in str(info.value)
    assert not BatchLayout(batch).labels.exists()


def test_a_merged_osm_file_works_as_labels_too(task, tmp_path):
    batch, task_dir, transform, crs, shape = task
    merged = tmp_path / "corrected.osm"
    merged.write_text(_josm_osm(task_dir, transform, crs))
    (report,) = ingest([batch], labels_file=merged)
    assert report.buildings == 2
    with rasterio.open(next((BatchLayout(batch).labels / "masks").glob("*.tif"))) as ds:
        assert np.array_equal(ds.read(1), _expected(*shape))


def test_a_josm_geojson_export_comes_back_pixel_for_pixel(task):
    """JOSM's GeoJSON: a bbox, string tags, clockwise rings, no crs member."""
    batch, task_dir, transform, crs, shape = task
    features = []
    courtyard = Polygon(OUTER.exterior.coords, [HOLE.exterior.coords])
    for poly in (PLAIN, courtyard):
        ll = shapely.geometry.polygon.orient(_lonlat(poly, transform, crs), sign=-1.0)  # cw
        geometry = shapely.geometry.mapping(ll)
        properties = {"building": "yes", "rscrisis:building_id": "3", "source": "survey"}
        features.append({"type": "Feature", "properties": properties, "geometry": geometry})
    bbox = list(_lonlat(box(0, 0, 64, 64), transform, crs).bounds)
    doc = {"type": "FeatureCollection", "generator": "JOSM", "bbox": bbox, "features": features}
    (task_dir / "buildings.geojson").write_text(json.dumps(doc))
    assert np.array_equal(_mask_after_ingest(batch), _expected(*shape))


def test_a_josm_geojson_with_an_untagged_building_says_to_tag_it(task):
    batch, task_dir, transform, crs, _ = task
    ring = shapely.LineString(_lonlat(PLAIN, transform, crs).exterior.coords)  # as JOSM writes it
    doc = {
        "type": "FeatureCollection",
        "generator": "JOSM",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(ring)}
        ],
    }
    (task_dir / "buildings.geojson").write_text(json.dumps(doc))
    with pytest.raises(LabelError, match="building=yes"):
        ingest([batch])


def test_a_qgis_edited_geopackage_comes_back_pixel_for_pixel(task):
    """QGIS edits the layer in place: an fid column, its own fields, the tile CRS."""
    batch, task_dir, transform, _crs, shape = task
    frame = gpd.read_file(task_dir / "buildings.gpkg", layer="buildings")
    courtyard = Polygon(OUTER.exterior.coords, [HOLE.exterior.coords])
    edited = gpd.GeoDataFrame(
        {"building": ["yes", "yes"], "building_id": [1, 2], "mean_prob": [0.9, 0.8],
         "notes": ["fixed", "drawn"]},
        geometry=[_to_map(PLAIN, transform), _to_map(courtyard, transform)],
        crs=frame.crs,
    )  # fmt: skip
    edited.to_file(task_dir / "buildings.gpkg", layer="buildings", driver="GPKG")
    assert np.array_equal(_mask_after_ingest(batch), _expected(*shape))


def test_a_merged_labels_file_in_the_wrong_crs_is_refused(task, tmp_path):
    batch, _, _transform, _crs, _ = task
    wrong = tmp_path / "wrong.geojson"
    # the tile's UTM numbers written as if they were degrees: overlaps no task
    gpd.GeoDataFrame(geometry=[box(10, 10, 11, 11)], crs="EPSG:4326").to_file(wrong)
    with pytest.raises(LabelError, match="lies in any of the batch"):
        ingest([batch], labels_file=wrong)
    assert not BatchLayout(batch).labels.exists()


def test_a_labels_file_with_several_polygon_layers_asks_for_one(task, tmp_path):
    batch, _task_dir, transform, crs, _shape = task
    both = tmp_path / "two.gpkg"
    shapes = gpd.GeoDataFrame(
        geometry=[_to_map(PLAIN, transform), _to_map(box(30, 30, 60, 60), transform)], crs=crs
    )
    shapes.to_file(both, layer="buildings")
    shapes.iloc[:1].to_file(both, layer="other")
    with pytest.raises(LabelError, match="--labels-layer"):
        ingest([batch], labels_file=both)
    (report,) = ingest([batch], labels_file=both, labels_layer="buildings")
    assert report.buildings == 2


def test_the_exported_pre_annotations_suit_josm_and_qgis(task):
    """GeoJSON: building=yes, rscrisis fields namespaced, layer name not a temporary name; an
    .osm copy marked upload='never'; the GeoPackage typed POLYGON."""
    import pyogrio

    _, task_dir, _, _, _ = task
    doc = json.loads((task_dir / "buildings.geojson").read_text())
    assert doc["name"] == "buildings" and "crs" not in doc
    for feature in doc["features"]:
        assert feature["properties"]["building"] == "yes"
        assert not {"building_id", "mean_prob"} & set(feature["properties"])
    osm = (task_dir / "buildings.osm").read_text()
    assert "upload='never'" in osm
    assert pyogrio.read_info(task_dir / "buildings.gpkg", layer="buildings")["geometry_type"] == (
        "Polygon"
    )


# --- Label Studio ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def studio_batch(tiny_pred, tmp_path_factory):
    from rscrisis.loop.export import rank

    out = tmp_path_factory.mktemp("studio") / "batch-07"
    rank(tiny_pred, out, config=RankConfig(top=2, label_studio=True))
    mark_all_done(out)
    return out


def _percent(poly, size):
    w, h = size
    return [[100 * x / w, 100 * y / h] for x, y in list(poly.exterior.coords)[:-1]]


def _region(points, label, size):
    return {
        "id": "x" + str(abs(hash(str(points))) % 10**6),
        "type": "polygonlabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "origin": "manual",
        "value": {"points": points, "closed": True, "polygonlabels": [label]},
    }


def test_the_label_studio_import_is_complete(studio_batch):
    """The labelling config is shipped, URLs carry the batch's name (two batches never
    collide), predictions carry the rank score, and holes are courtyard polygons."""
    items = json.loads((studio_batch / "labelstudio.json").read_text())
    config = (studio_batch / "labelstudio.xml").read_text()
    assert 'value="building"' in config and 'value="courtyard"' in config
    for item in items:
        assert item["data"]["image"].startswith("/data/local-files/?d=batch-07/tasks/")
        assert item["predictions"][0]["score"] is not None
    assert "labelstudio.xml" in (studio_batch / "README.md").read_text()


def test_a_label_studio_export_comes_back_pixel_for_pixel(studio_batch, tmp_path):
    """A JSON export with two tasks: one with a courtyard building, one with two annotations
    (an older one, replaced by a later one that holds the real corrections)."""
    batch = tmp_path / "batch-07"
    shutil.copytree(studio_batch, batch)
    items = json.loads((batch / "labelstudio.json").read_text())
    shapes = {}
    export = []
    for n, item in enumerate(items):
        task_dir = batch / "tasks" / item["data"]["task"]
        with rasterio.open(task_dir / "image.tif") as ds:
            size = (ds.width, ds.height)
        shapes[item["data"]["task"]] = size
        result = [
            _region(_percent(PLAIN, size), "building", size),
            _region(_percent(OUTER, size), "building", size),
            _region(_percent(HOLE, size), "courtyard", size),
        ]
        annotations = [
            {"id": 10 + n, "completed_by": 1, "result": result, "was_cancelled": False,
             "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:30:00Z",
             "lead_time": 42.0, "task": item["id"]},
        ]  # fmt: skip
        if n == 1:
            older = {**annotations[0], "id": 5, "result": result[:1]}
            older["updated_at"] = older["created_at"] = "2026-11-30T08:00:00.000000Z"
            cancelled = {**annotations[0], "id": 6, "result": [], "was_cancelled": True}
            annotations = [older, *annotations, cancelled]
        export.append({**item, "annotations": annotations, "total_annotations": len(annotations)})
    path = tmp_path / "project-1-at-2026-12-01.json"
    path.write_text(json.dumps(export))
    (report,) = ingest([batch], labels_file=path)
    assert sorted(report.taken) == sorted(shapes) and report.buildings == 4
    for task, size in shapes.items():
        tile_id = task.split("_", 1)[1]
        with rasterio.open(BatchLayout(batch).labels / "masks" / f"{tile_id}.tif") as ds:
            assert np.array_equal(ds.read(1), _expected(size[1], size[0])), task


def test_a_label_studio_json_min_export_comes_back_too(studio_batch, tmp_path):
    batch = tmp_path / "batch-07"
    shutil.copytree(studio_batch, batch)
    rows = []
    for n, item in enumerate(json.loads((batch / "labelstudio.json").read_text())):
        with rasterio.open(batch / "tasks" / item["data"]["task"] / "image.tif") as ds:
            size = (ds.width, ds.height)
        label = [
            {"points": _percent(PLAIN, size), "closed": True, "polygonlabels": ["building"],
             "original_width": size[0], "original_height": size[1]},
        ]  # fmt: skip
        rows.append(
            {**item["data"], "id": item["id"], "label": label, "annotator": 1,
             "annotation_id": 30 + n, "created_at": "2026-12-01T10:00:00Z",
             "updated_at": "2026-12-01T10:00:00Z", "lead_time": 10.0}
        )  # fmt: skip
    path = tmp_path / "min.json"
    path.write_text(json.dumps(rows))
    (report,) = ingest([batch], labels_file=path)
    assert report.buildings == len(rows)


def test_a_done_task_missing_from_the_label_studio_export_is_refused(studio_batch, tmp_path):
    batch = tmp_path / "batch-07"
    shutil.copytree(studio_batch, batch)
    items = json.loads((batch / "labelstudio.json").read_text())
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{**items[0], "annotations": []}]))
    with pytest.raises(LabelError, match="has no annotation of task"):
        ingest([batch], labels_file=path)
    assert not BatchLayout(batch).labels.exists()


def test_an_empty_pre_annotation_is_a_typed_polygon_layer(tiny_pred, exported, tmp_path):
    """QGIS offers polygon drawing on a typed layer only: an empty task layer must be POLYGON
    with the same fields as the others."""
    import pyogrio

    from rscrisis.loop.export import rank

    pred = tmp_path / "pred"
    shutil.copytree(tiny_pred, pred)
    manifest = json.loads((pred / "predict.json").read_text())
    (pred / "predict.json").write_text(json.dumps({**manifest, "threshold": 0.9999}))
    rank(pred, tmp_path / "empty", config=RankConfig(top=1))
    (empty,) = json.loads((tmp_path / "empty" / "batch.json").read_text())["tasks"]
    (full,) = json.loads((exported / "batch.json").read_text())["tasks"]
    assert empty["pre_annotation_buildings"] == 0 < full["pre_annotation_buildings"]
    infos = [
        pyogrio.read_info(root / "tasks" / t["task"] / "buildings.gpkg", layer="buildings")
        for root, t in ((tmp_path / "empty", empty), (exported, full))
    ]
    assert [i["geometry_type"] for i in infos] == ["Polygon", "Polygon"]
    assert list(infos[0]["fields"]) == list(infos[1]["fields"])


def test_an_unknown_vector_file_in_a_task_folder_is_reported(task, monkeypatch):
    import rscrisis.loop.ingest

    said = []
    # recorded at the logger itself: a CLI test run earlier may stop rscrisis logs propagating
    monkeypatch.setattr(rscrisis.loop.ingest.log, "warning", lambda *a: said.append(a[0] % a[1:]))
    batch, task_dir, _, _, _ = task
    (task_dir / "my-edits.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (report,) = ingest([batch])
    assert report.taken
    assert any("my-edits.geojson" in line and "ignored" in line for line in said), said
