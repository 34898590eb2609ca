"""Tile ids and task names read from edited files never steer a path (issue: hostile inputs)."""

import csv
import shutil

import geopandas as gpd
import pytest

from rscrisis.config import RankConfig
from rscrisis.io.names import is_safe, safe_name
from rscrisis.io.tileset import INDEX, INDEX_LAYER, tile_id
from rscrisis.loop.export import rank
from rscrisis.predict.tiles import SCORES, SCORES_LAYER

EVIL = ["../../../../x", "/abs/x", "a/b", "..", "a..b", "", ".hidden", "x\\y", "x\x00y", "é"]


@pytest.mark.parametrize("name", EVIL)
def test_unsafe_names_are_recognised(name):
    assert not is_safe(name)


def test_safe_names_and_the_mapping_of_scene_names():
    assert is_safe("area_b_r0001_c0002") and is_safe("003_area_b_r0001_c0002")
    assert safe_name("my scene (2)") == "my_scene_2_"
    assert safe_name("../etc") == "__etc"
    assert safe_name("area_b") == "area_b"  # names already safe are kept as they are
    for text in [*EVIL, "Banepa 2015", "Ünïcode", "x" * 500]:
        assert is_safe(safe_name(text))
    assert is_safe(tile_id("../../evil scene", 3, 4))


def _tamper_gpkg(path, layer, tile):
    frame = gpd.read_file(path, layer=layer)
    frame.loc[0, "tile_id"] = tile
    path.unlink()
    frame.to_file(path, layer=layer, driver="GPKG")


def _nothing_outside(root, before):
    after = {p for p in root.rglob("*")}
    return not any(p.name.startswith("x") for p in after - before)


@pytest.mark.parametrize("evil", ["../../../x", "/tmp/x"])
def test_predict_refuses_a_tampered_index(invoke, tiny_model, tiny_tiles, tmp_path, evil):
    tiles = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, tiles)
    _tamper_gpkg(tiles / INDEX, INDEX_LAYER, evil)
    before = set(tmp_path.rglob("*"))
    r = invoke("predict", tiny_model, tiles, "--out", tmp_path / "pred")
    assert r.exit_code == 2, r.output
    assert "unsafe tile id" in r.output
    assert _nothing_outside(tmp_path, before) and not (tmp_path / "pred" / "probs").exists()
    assert not (tmp_path.parent / "x.tif").exists()


def test_rank_refuses_a_tampered_prediction_set(invoke, tiny_pred, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(tiny_pred, pred)
    _tamper_gpkg(pred / SCORES, SCORES_LAYER, "../../../../x")
    r = invoke("rank", pred, "--out", tmp_path / "batch", "--top", "2")
    assert r.exit_code == 2, r.output
    assert "unsafe tile id" in r.output
    assert not (tmp_path / "batch").exists() and not list(tmp_path.parent.glob("x"))


@pytest.fixture(scope="module")
def exported(tiny_pred, tmp_path_factory):
    out = tmp_path_factory.mktemp("names") / "batch-01"
    rank(tiny_pred, out, config=RankConfig(top=3))
    return out


def _edit_status(batch, change):
    with open(batch / "status.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["status"] = "done"
    change(rows)
    with open(batch / "status.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows[0].update(tile_id="../../../../x"), "unsafe tile id"),
        (lambda rows: rows[0].update(task="/abs/x"), "unsafe task name"),
        (lambda rows: rows[0].update(task="../../../x"), "unsafe task name"),
        (lambda rows: rows[0].update(tile_id=rows[1]["tile_id"]), "does not belong to tile"),
        (lambda rows: rows[0].update(rank="first"), "is not a whole number"),
        (lambda rows: rows.append(dict(rows[0])), "is listed twice"),
    ],
)
def test_finetune_refuses_a_tampered_status_before_writing(
    invoke, tiny_model, exported, tmp_path, change, message
):
    batch = tmp_path / "batch-01"
    shutil.copytree(exported, batch)
    _edit_status(batch, change)
    before = set(tmp_path.rglob("*"))
    out = tmp_path / "ft.safetensors"
    r = invoke("finetune", tiny_model, batch, "--out", out, "--steps", "1", "--threads", "1")
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not out.exists() and not (batch / "labels").exists()
    assert set(tmp_path.rglob("*")) == before


def test_tile_maps_scene_names_into_safe_ids_and_refuses_names_that_collide(invoke, tmp_path):
    from tests.conftest import gradient, write_raster

    a = write_raster(tmp_path / "my scene (2).tif", gradient(3, 64, 64))
    r = invoke("tile", a, "--out", tmp_path / "tiles", "--size", "32")
    assert r.exit_code == 0, r.output
    ids = sorted(p.stem for p in (tmp_path / "tiles" / "images").glob("*.tif"))
    assert ids[0] == "my_scene_2__r0000_c0000" and all(is_safe(i) for i in ids)
    b = write_raster(tmp_path / "my_scene_2_.tif", gradient(3, 64, 64))
    r = invoke("tile", a, b, "--out", tmp_path / "both", "--size", "32")
    assert r.exit_code == 2 and "would collide" in r.output


def test_paths_made_from_names_cannot_leave_their_root(tmp_path):
    from rscrisis.errors import InputError
    from rscrisis.io.batch import BatchLayout
    from rscrisis.io.tileset import TileSetLayout

    layout = TileSetLayout(tmp_path)
    assert layout.image_path("a_r0000_c0000") == tmp_path / "images" / "a_r0000_c0000.tif"
    for evil in ("../../x", "/abs/x"):
        with pytest.raises(InputError, match="unsafe name"):
            layout.image_path(evil)
        with pytest.raises(InputError, match="unsafe name"):
            layout.mask_path(evil)
        with pytest.raises(InputError, match="unsafe name"):
            BatchLayout(tmp_path).task_dir(evil)
