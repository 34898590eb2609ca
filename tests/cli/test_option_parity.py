"""Option parity (issue 15): every field of a command's config is a CLI option, or is hidden on
purpose in the list below, with the reason. A field added to a config without an option, or an
option renamed away from its field, fails here."""

from __future__ import annotations

import pytest
import typer.main

from rscrisis import config as C
from rscrisis.cli.main import app

COMMANDS = {
    "tile": [C.TileConfig],
    "train": [C.TrainConfig],
    "pretrain": [C.TrainConfig],
    "predict": [C.PredictConfig, C.SceneConfig],
    "evaluate": [C.PredictConfig],
    "rank": [C.RankConfig],
    "finetune": [C.FinetuneConfig],
    "adapt": [C.AdaptConfig],
    "simulate": [C.SimulateConfig, C.FinetuneConfig],
    "sample-data": [C.SyntheticConfig],
    "noise": [C.NoiseConfig],
}
#: (command, field) -> why it has no option of its own name
HIDDEN = {
    ("evaluate", "mc_samples"): "evaluation is deterministic: no Monte-Carlo dropout",
    ("evaluate", "seed"): "evaluation is deterministic: nothing is sampled",
    ("simulate", "finetune"): "the nested FinetuneConfig: its round knobs are options below",
    **{
        ("simulate", f): "every round fine-tunes with finetune's defaults; the knobs that "
        "shape the curves (--steps, --ema, --replay-ratio, --replay-norm, --replay-targets, "
        "--lr-scale, "
        "--freeze-stages, --batch-size, --threads) are options, and val_fraction is 0 "
        "(the oracle's every labelled tile trains)"
        for f in (
            "freeze_encoder",
            "loss",
            "label_smoothing",
            "confidence_weighting",
            "edge_ignore",
            "transfer",
            "freeze_transferred",
            "freeze_norm",
            "replay",
            "replay_pretraining",
            "max_empty_share",
            "val_fraction",
            "min_val_tiles",
            "eval_every",
            "iou_loss_weight",
            "augment",
            "calibrate",
            "seed",
            "device",
            "precision",
            "repair",
        )
    },
}


def _option_names(command) -> set[str]:
    names = set()
    for param in command.params:
        names.add(param.name)
        for opt in [*param.opts, *param.secondary_opts]:
            names.add(opt.lstrip("-").replace("-", "_").removeprefix("no_"))
    return names


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_config_field_is_an_option_or_hidden_for_a_reason(name):
    command = typer.main.get_command(app).commands[name]
    options = _option_names(command)
    missing = [
        f"{config.__name__}.{field}"
        for config in COMMANDS[name]
        for field in config.model_fields
        if field not in options and (name, field) not in HIDDEN
    ]
    assert not missing, f"rscrisis {name} has no option for {missing}"


def test_a_field_the_generator_hides_is_listed_here_or_offered_another_way():
    group = typer.main.get_command(app)
    for name in COMMANDS:
        command = group.commands[name]
        for field in command.callback.hidden_fields:
            # simulate hides its nested adapt config and offers its methods as --adapt
            assert (name, field) in HIDDEN or field in _option_names(command), (name, field)


def test_hidden_fields_exist_and_are_really_hidden():
    group = typer.main.get_command(app)
    for (name, field), reason in HIDDEN.items():
        assert reason
        assert any(field in c.model_fields for c in COMMANDS[name]), (name, field)
        assert field not in _option_names(group.commands[name]), f"{name} --{field} exists now"
