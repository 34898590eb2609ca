"""The identifiers written into files are part of the file formats (docs/design.md): moving a
module must never change them, or models and manifests written before stop reading back."""

from __future__ import annotations

import json

from rscrisis.ml.model import FORMAT, read_meta


def test_the_model_format_identifier_is_stable(tiny_model):
    assert FORMAT == "rscrisis.model/1"
    assert read_meta(tiny_model).format == "rscrisis.model/1"


def test_manifest_kinds_are_stable(tiny_tiles, tiny_pred, tmp_path):
    from rscrisis.config import RankConfig
    from rscrisis.loop.export import rank

    assert json.loads((tiny_tiles / "tileset.json").read_text())["kind"] == "rscrisis.tileset"
    assert json.loads((tiny_pred / "predict.json").read_text())["kind"] == (
        "rscrisis.prediction_set"
    )
    rank(tiny_pred, tmp_path / "batch", config=RankConfig(top=1))
    assert json.loads((tmp_path / "batch" / "batch.json").read_text())["kind"] == "rscrisis.batch"
