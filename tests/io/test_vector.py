import geopandas as gpd
import pytest
from shapely.geometry import LineString, Point, Polygon, box

from rscrisis.errors import LabelError
from rscrisis.io.vector import read_labels
from tests.conftest import UTM, write_vector

BOWTIE = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting


def test_repairs_invalid_and_skips_non_polygons(tmp_path):
    path = tmp_path / "osm.gpkg"
    frame = gpd.GeoDataFrame(
        geometry=[box(0, 0, 5, 5), BOWTIE, Point(1, 1), LineString([(0, 0), (3, 3)])], crs=UTM
    )
    frame.to_file(path, engine="pyogrio")
    labels = read_labels([path])
    assert labels.stats.features == 4
    assert labels.stats.polygons == 2
    assert labels.stats.repaired == 1
    assert labels.stats.skipped_non_polygon == 2
    assert labels.frame.geometry.is_valid.all()
    assert labels.frame.geometry.area.sum() == pytest.approx(25 + 50)


def test_merges_files_in_different_crs(tmp_path):
    a = write_vector(tmp_path / "a.gpkg", [box(354_000, 3_057_000, 354_010, 3_057_010)], UTM)
    wgs = gpd.GeoSeries([box(354_020, 3_057_000, 354_030, 3_057_010)], crs=UTM).to_crs(4326)
    b = write_vector(tmp_path / "b.geojson", list(wgs), "EPSG:4326", driver="GeoJSON")
    labels = read_labels([a, b])
    assert labels.frame.crs.to_epsg() == 32645 and len(labels.frame) == 2
    assert labels.frame.geometry.area.sum() == pytest.approx(200, rel=1e-3)


def test_empty_missing_unreadable_no_crs(tmp_path):
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(LabelError, match="empty.geojson: holds no feature"):
        read_labels([empty])
    with pytest.raises(LabelError, match="no such label file"):
        read_labels([tmp_path / "missing.gpkg"])
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a geopackage")
    with pytest.raises(LabelError, match="junk.gpkg: cannot be read as vector data"):
        read_labels([junk])
    shp = tmp_path / "nocrs.shp"
    with pytest.warns(UserWarning, match="crs"):
        gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_file(shp, engine="pyogrio")
    with pytest.raises(LabelError, match="nocrs.shp: has no CRS"):
        read_labels([shp])
    points = write_vector(tmp_path / "points.gpkg", [Point(0, 0)], UTM)
    with pytest.raises(LabelError, match="holds no polygon"):
        read_labels([points])


def test_reprojection_is_cached_per_crs(tmp_path):
    path = write_vector(tmp_path / "a.gpkg", [box(354_000, 3_057_000, 354_010, 3_057_010)], UTM)
    labels = read_labels([path])
    from rasterio.crs import CRS

    first = labels.in_crs(CRS.from_epsg(4326))
    assert labels.in_crs(CRS.from_epsg(4326)) is first
    assert first.crs.to_epsg() == 4326


def test_cleaning_leaves_its_input_untouched():
    import geopandas as gpd
    from shapely.geometry import Polygon

    from rscrisis.io.vector import LabelStats, clean_polygons

    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    frame = gpd.GeoDataFrame(geometry=[bowtie], crs="EPSG:32645")
    stats = LabelStats()
    cleaned = clean_polygons(frame, stats)
    assert stats.repaired == 1 and cleaned.geometry.iloc[0].is_valid
    assert not frame.geometry.iloc[0].is_valid  # the caller's frame is not repaired in place
