"""``rscrisis train``: labelled tile sets -> model (.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import (
    DeviceOpt,
    JsonOutput,
    Overwrite,
    Quiet,
    Resume,
    Seed,
    Threads,
    TileSets,
    Verbose,
    choice_enum,
    default,
    describe,
    with_config_defaults,
)
from rscrisis.config import LossName, PretrainConfig, TrainConfig, TransferName

T = TrainConfig
LossChoice = choice_enum("LossChoice", LossName)
TransferChoice = choice_enum("TransferChoice", TransferName)


def train_command(
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
    encoder: Annotated[str, typer.Option(help=describe(T, "encoder"))] = default(T, "encoder"),
    epochs: Annotated[int, typer.Option(help=describe(T, "epochs"))] = default(T, "epochs"),
    batch_size: Annotated[int, typer.Option(help=describe(T, "batch_size"))] = default(
        T, "batch_size"
    ),
    lr: Annotated[float, typer.Option(help=describe(T, "lr"))] = default(T, "lr"),
    weight_decay: Annotated[float, typer.Option(help=describe(T, "weight_decay"))] = default(
        T, "weight_decay"
    ),
    val_fraction: Annotated[float, typer.Option(help=describe(T, "val_fraction"))] = default(
        T, "val_fraction"
    ),
    block_tiles: Annotated[int, typer.Option(help=describe(T, "block_tiles"))] = default(
        T, "block_tiles"
    ),
    iou_loss_weight: Annotated[float, typer.Option(help=describe(T, "iou_loss_weight"))] = default(
        T, "iou_loss_weight"
    ),
    threshold: Annotated[float, typer.Option(help=describe(T, "threshold"))] = default(
        T, "threshold"
    ),
    patience: Annotated[int, typer.Option(help=describe(T, "patience"))] = default(T, "patience"),
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help=describe(T, "augment"))
    ] = default(T, "augment"),
    init: Annotated[
        Path | None,
        typer.Option(help="Start from this model (its encoder and normalisation are kept)."),
    ] = None,
    freeze_encoder: Annotated[
        bool, typer.Option("--freeze-encoder", help=describe(T, "freeze_encoder"))
    ] = default(T, "freeze_encoder"),
    freeze_stages: Annotated[int, typer.Option(help=describe(T, "freeze_stages"))] = default(
        T, "freeze_stages"
    ),
    transfer: Annotated[TransferChoice, typer.Option(help=describe(T, "transfer"))] = default(
        T, "transfer"
    ),
    freeze_transferred: Annotated[
        bool, typer.Option("--freeze-transferred", help=describe(T, "freeze_transferred"))
    ] = default(T, "freeze_transferred"),
    freeze_norm: Annotated[
        bool, typer.Option("--freeze-norm", help=describe(T, "freeze_norm"))
    ] = default(T, "freeze_norm"),
    max_tiles: Annotated[int | None, typer.Option(help=describe(T, "max_tiles"))] = None,
    max_minutes: Annotated[float | None, typer.Option(help=describe(T, "max_minutes"))] = None,
    precision: Annotated[str, typer.Option(help=describe(T, "precision"))] = default(
        T, "precision"
    ),
    loss: Annotated[LossChoice, typer.Option(help=describe(T, "loss"))] = default(T, "loss"),
    label_smoothing: Annotated[float, typer.Option(help=describe(T, "label_smoothing"))] = default(
        T, "label_smoothing"
    ),
    confidence_weighting: Annotated[
        float, typer.Option(help=describe(T, "confidence_weighting"))
    ] = default(T, "confidence_weighting"),
    edge_ignore: Annotated[int, typer.Option(help=describe(T, "edge_ignore"))] = default(
        T, "edge_ignore"
    ),
    device: DeviceOpt = default(T, "device"),
    threads: Threads = None,
    seed: Seed = default(T, "seed"),
    overwrite: Overwrite = False,
    resume: Resume = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Train the U-Net + predicted-IoU head on labelled tile sets (masks: 255 = ignore).

    Validation tiles are held out in spatial blocks with a one-tile buffer; the best epoch
    (validation pixel IoU) is kept. Beside MODEL: MODEL.history.csv and MODEL.train.json.
    """
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.config import resolve
    from rscrisis.ml.training import train

    level = verbosity(ctx, verbose, quiet)
    config = resolve(
        TrainConfig,
        encoder=encoder,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        val_fraction=val_fraction,
        block_tiles=block_tiles,
        iou_loss_weight=iou_loss_weight,
        threshold=threshold,
        patience=patience,
        augment=augment,
        freeze_encoder=freeze_encoder,
        freeze_stages=freeze_stages,
        transfer=getattr(transfer, "value", transfer),
        freeze_transferred=freeze_transferred,
        freeze_norm=freeze_norm,
        max_tiles=max_tiles,
        max_minutes=max_minutes,
        precision=precision,
        loss=getattr(loss, "value", loss),
        label_smoothing=label_smoothing,
        confidence_weighting=confidence_weighting,
        edge_ignore=edge_ignore,
        device=device,
        threads=threads,
        seed=seed,
    )
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


pretrain_command = with_config_defaults(
    train_command,
    PretrainConfig,
    """Pretrain on noisy labels (e.g. OSM footprints), with noise-robust defaults.

    The same training as rscrisis train, but by default: symmetric cross-entropy (bounded
    reverse term), label smoothing 0.1, confidence weighting 0.8 (pixels where the model
    confidently disagrees with the label count less, ramped in over training) and a 2 px ignore
    band around label outlines (OSM outlines are offset). Fine-tune the result with
    rscrisis finetune, or train --init.
    """,
)
