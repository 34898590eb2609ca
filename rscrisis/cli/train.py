"""``rscrisis train``: labelled tile sets -> model (.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, configured
from rscrisis.cli.options import JsonOutput, Overwrite, Quiet, Resume, TileSets, Verbose
from rscrisis.config import PretrainConfig, TrainConfig


def _train(
    ctx: typer.Context,
    tilesets: TileSets,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Model file to write (.safetensors); history and config are written beside it.",
        ),
    ],
    options: Options,
    init: Annotated[
        Path | None,
        typer.Option(help="Start from this model (its encoder and normalisation are kept)."),
    ] = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Train the U-Net + predicted-IoU head on labelled tile sets (masks: 255 = ignore).

    Validation tiles are held out in spatial blocks with a one-tile buffer; the best epoch
    (validation pixel IoU) is kept. Beside MODEL: MODEL.history.csv, MODEL.history.png and
    MODEL.train.json.
    """
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.ml.training import train

    level = verbosity(ctx, verbose, quiet)
    config = options.resolve()
    with progress_bar("training", enabled=level >= 0) as progress:
        result = train(
            tilesets,
            out,
            config=config,
            init=init,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
        )
    if json_output:
        print_json(result.to_dict())
    best = result.best
    say(
        f"model {out}: best epoch {result.best_epoch}/{result.epochs_run}, "
        f"val IoU {best.get('val_iou', float('nan')):.3f}, "
        f"{result.images_per_s:.1f} images/s on {result.device}",
        level,
    )


train_command = configured(TrainConfig)(_train)
pretrain_command = configured(
    PretrainConfig,
    doc="""Pretrain on noisy labels (e.g. OSM footprints), with noise-robust defaults.

    The same training as rscrisis train, but by default: symmetric cross-entropy (bounded
    reverse term), label smoothing 0.1, confidence weighting 0.8 (pixels where the model
    confidently disagrees with the label count less, ramped in over training) and a 2 px ignore
    band around label outlines (OSM outlines are offset). Fine-tune the result with
    rscrisis finetune, or train --init.
    """,
)(_train)
