"""``--config FILE`` (issue 15): a run repeated from the config a first run saved resolves to
the same config; options typed on the command line override the file; a file of another
command, or a bad value in it, is refused with the file named."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import mark_all_done


def _config(path):
    return json.loads(path.read_text())["config"]


def _repeat(invoke, command, inputs, first_out, second_out, manifest, options):
    """Run ``command`` with ``options``, then again from the config it saved; both configs."""
    r = invoke(command, *inputs, "-o", first_out, *options)
    assert r.exit_code == 0, r.stderr
    first = _config(manifest(first_out))
    r = invoke(command, *inputs, "-o", second_out, "--config", manifest(first_out))
    assert r.exit_code == 0, r.stderr
    return first, _config(manifest(second_out))


@pytest.mark.slow
def test_train_and_pretrain_repeat_from_their_saved_config(invoke, tiny_tiles, tmp_path):
    options = ["--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25"]
    options += ["--block-tiles", "1", "--threads", "1", "--lr", "0.002", "--no-augment"]
    options += ["--loss", "bootstrap", "--edge-ignore", "1", "--freeze-stages", "1"]
    first, second = _repeat(
        invoke,
        "train",
        [tiny_tiles],
        tmp_path / "a.safetensors",
        tmp_path / "b.safetensors",
        lambda m: m.with_suffix(".train.json"),
        options,
    )
    assert first == second
    assert (first["lr"], first["augment"], first["loss"], first["edge_ignore"]) == (
        0.002,
        False,
        "bootstrap",
        1,
    )
    # pretrain's robust defaults do not override a file: the file's bce-dice stands
    r = invoke("pretrain", tiny_tiles, "-o", tmp_path / "c.safetensors", "--config",
               tmp_path / "a.train.json", "--epochs", "2")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    third = _config(tmp_path / "c.train.json")
    assert third == {**first, "epochs": 2}


def test_predict_tiles_and_scene_repeat_from_their_saved_config(
    invoke, tiny_model, tiny_tiles, tmp_path
):
    first, second = _repeat(
        invoke,
        "predict",
        [tiny_model, tiny_tiles],
        tmp_path / "p1",
        tmp_path / "p2",
        lambda d: d / "predict.json",
        ["--batch-size", "4", "--threads", "1", "--mc-samples", "2", "--seed", "3"],
    )
    assert first == second and (first["mc_samples"], first["seed"]) == (2, 3)
    scene = tiny_tiles.parent / "sd" / "area_b" / "area_b.tif"
    first, second = _repeat(
        invoke,
        "predict",
        [tiny_model, scene],
        tmp_path / "s1",
        tmp_path / "s2",
        lambda d: d / "predict.json",
        ["--window", "64", "--overlap", "16", "--min-area", "3", "--threads", "1", "--geojson"],
    )
    assert first == second
    assert (first["window"], first["overlap"], first["min_area"], first["geojson"]) == (
        64,
        16,
        3.0,
        True,
    )
    # a scene's config cannot drive a tile-set prediction: it is not the same config
    r = invoke("predict", tiny_model, tiny_tiles, "-o", tmp_path / "p3", "--config",
               tmp_path / "s1" / "predict.json")  # fmt: skip
    assert r.exit_code == 2 and "another command" in r.stderr and "'window'" in r.stderr


def test_rank_repeats_and_command_line_options_override_the_file(invoke, tiny_pred, tmp_path):
    options = ["--top", "3", "--formula", "entropy", "--diversity", "none", "--min-area", "3"]
    options += ["--no-regularize", "--label-studio"]
    first, second = _repeat(
        invoke,
        "rank",
        [tiny_pred],
        tmp_path / "b1",
        tmp_path / "b2",
        lambda d: d / "batch.json",
        options,
    )
    assert first == second and first["formula"] == "entropy" and first["top"] == 3
    r = invoke("rank", tiny_pred, "-o", tmp_path / "b3", "--config", tmp_path / "b1" /
               "batch.json", "-k", "2", "--regularize")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    third = _config(tmp_path / "b3" / "batch.json")
    assert third == {**first, "top": 2, "regularize": True}


@pytest.mark.slow
def test_finetune_repeats_from_its_saved_config(invoke, tiny_model, tiny_pred, tmp_path):
    batch = tmp_path / "batch-01"
    assert invoke("rank", tiny_pred, "-o", batch, "--top", "2").exit_code == 0
    mark_all_done(batch)
    copy = tmp_path / "batch-02"
    shutil.copytree(batch, copy)
    options = ["--steps", "2", "--threads", "1", "--lr-scale", "0.5", "--train-norm"]
    options += ["--replay-ratio", "0.5", "--no-calibrate", "--iou-loss-weight", "0.25"]
    r = invoke("finetune", tiny_model, batch, "-o", tmp_path / "a.safetensors", *options)
    assert r.exit_code == 0, r.stderr
    first = _config(tmp_path / "a.finetune.json")
    r = invoke("finetune", tiny_model, copy, "-o", tmp_path / "b.safetensors", "--config",
               tmp_path / "a.finetune.json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert _config(tmp_path / "b.finetune.json") == first
    assert (first["freeze_norm"], first["calibrate"], first["iou_loss_weight"]) == (
        False,
        False,
        0.25,
    )


@pytest.mark.slow
def test_simulate_repeats_from_its_saved_config(invoke, tiny_model, tiny_tiles, tmp_path):
    options = ["--formulas", "random", "--rounds", "1", "--batch", "1", "--seed-batch", "1"]
    options += ["--seeds", "0", "--test-fraction", "0.25", "--block-tiles", "2", "--steps", "2"]
    options += ["--batch-size", "4", "--threads", "1", "--no-ceiling"]
    first, second = _repeat(
        invoke,
        "simulate",
        [tiny_model, tiny_tiles],
        tmp_path / "s1",
        tmp_path / "s2",
        lambda d: d / "simulate.json",
        options,
    )
    assert first == second
    # the nested fine-tuning config keeps simulate's own default (no held-out slice) beside
    # the knobs given
    assert first["finetune"]["steps"] == 2 and first["finetune"]["val_fraction"] == 0.0
    assert first["formulas"] == ["random"] and first["ceiling"] is False


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ({"config": {"epochs": 2}}, ["another command", "'epochs'", "rank"]),
        ({"config": {"top": 0}}, ["config field top", "--top"]),
        ({"top": "many"}, ["config field top", "integer"]),
        ([1, 2], ["not an object"]),
    ],
)
def test_a_wrong_config_file_exits_2_naming_the_file(invoke, tiny_pred, tmp_path, content, needles):
    path = tmp_path / "given.json"
    path.write_text(json.dumps(content))
    r = invoke("rank", tiny_pred, "-o", tmp_path / "b", "--config", path)
    assert r.exit_code == 2, r.stderr
    assert str(path) in r.stderr and r.stderr.count("\n") == 1
    for needle in needles:
        assert needle in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()


def test_an_option_given_on_the_command_line_is_named_when_it_is_wrong(invoke, tiny_pred, tmp_path):
    path = tmp_path / "given.json"
    path.write_text(json.dumps({"config": {"formula": "entropy"}}))
    r = invoke("rank", tiny_pred, "-o", tmp_path / "b", "--config", path, "--pool-factor", "0")
    assert r.exit_code == 2 and "invalid --pool-factor" in r.stderr
