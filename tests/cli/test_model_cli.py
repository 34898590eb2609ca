"""train / predict / evaluate / info / models through the CLI."""

import json

import pytest

from rscrisis.ml.model import read_meta

pytestmark = pytest.mark.slow


def test_train_predict_evaluate_info(invoke, tiny_tiles, tmp_path):
    model = tmp_path / "m.safetensors"
    r = invoke(
        "train",
        tiny_tiles,
        "--out",
        model,
        "--epochs",
        1,
        "--batch-size",
        4,
        "--val-fraction",
        0.25,
        "--block-tiles",
        1,
        "--threads",
        1,
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["epochs_run"] == 1 and summary["train_tiles"] > 0
    assert read_meta(model).training["config"]["batch_size"] == 4
    r = invoke("train", tiny_tiles, "--out", model, "--epochs", 1)
    assert r.exit_code == 2 and "--overwrite" in r.stderr

    r = invoke("predict", model, tiny_tiles, "--out", tmp_path / "pred", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["tiles"] == 16
    assert (tmp_path / "pred" / "scores.gpkg").exists()

    r = invoke("evaluate", model, tiny_tiles, "--json", "-q")
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)
    assert set(ev["pixel"]) == {"iou", "f1", "precision", "recall"}
    assert "spearman" in ev["pred_iou_calibration"]

    r = invoke("info", model, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["encoder"] == "resnet18"


def test_bad_model_file_exits_2(invoke, tiny_tiles, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    for args in (
        ("info", bad),
        ("predict", bad, tiny_tiles, "-o", tmp_path / "p"),
        ("evaluate", bad, tiny_tiles),
    ):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "bad.safetensors" in r.stderr
    assert not (tmp_path / "p").exists()


def test_models_lists_encoders(invoke):
    r = invoke("models", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    assert any(row["default"] for row in rows)
    assert all(row["parameters"] > 1e6 for row in rows)
