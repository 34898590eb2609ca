"""``rscrisis finetune``: model + corrected annotation batches -> new model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.options import (
    DeviceOpt,
    JsonOutput,
    ModelPath,
    Overwrite,
    Quiet,
    Seed,
    Threads,
    Verbose,
    choice_enum,
    default,
    describe,
)
from rscrisis.config import FinetuneConfig, PrecisionName, TransferName

F = FinetuneConfig
TransferChoice = choice_enum("TransferChoice", TransferName)
PrecisionChoice = choice_enum("PrecisionChoice", PrecisionName)


def finetune_command(
    ctx: typer.Context,
    model: ModelPath,
    batches: Annotated[list[Path], typer.Argument(help="Corrected batch folders (rscrisis rank).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New model file (.safetensors).")],
    labels: Annotated[
        Path | None,
        typer.Option(
            help="One vector file with the corrected buildings of all done tasks, used instead "
            "of the per-task files (a JOSM layer saved as .osm or GeoJSON, a GeoPackage)."
        ),
    ] = None,
    labels_layer: Annotated[
        str | None,
        typer.Option(help="The layer of --labels to read, when it has several polygon layers."),
    ] = None,
    repair: Annotated[bool, typer.Option("--repair", help=describe(F, "repair"))] = default(
        F, "repair"
    ),
    steps: Annotated[int, typer.Option(help=describe(F, "steps"))] = default(F, "steps"),
    batch_size: Annotated[int, typer.Option(help=describe(F, "batch_size"))] = default(
        F, "batch_size"
    ),
    lr_scale: Annotated[float, typer.Option(help=describe(F, "lr_scale"))] = default(F, "lr_scale"),
    ema: Annotated[float, typer.Option(help=describe(F, "ema"))] = default(F, "ema"),
    freeze_encoder: Annotated[
        bool, typer.Option("--freeze-encoder", help=describe(F, "freeze_encoder"))
    ] = default(F, "freeze_encoder"),
    freeze_stages: Annotated[int, typer.Option(help=describe(F, "freeze_stages"))] = default(
        F, "freeze_stages"
    ),
    transfer: Annotated[TransferChoice, typer.Option(help=describe(F, "transfer"))] = default(
        F, "transfer"
    ),
    freeze_transferred: Annotated[
        bool, typer.Option("--freeze-transferred", help=describe(F, "freeze_transferred"))
    ] = default(F, "freeze_transferred"),
    freeze_norm: Annotated[
        bool, typer.Option("--freeze-norm/--train-norm", help=describe(F, "freeze_norm"))
    ] = default(F, "freeze_norm"),
    replay: Annotated[
        list[Path] | None, typer.Option(help=describe(F, "replay") + " Repeat for several.")
    ] = None,
    replay_ratio: Annotated[float, typer.Option(help=describe(F, "replay_ratio"))] = default(
        F, "replay_ratio"
    ),
    replay_pretraining: Annotated[
        bool,
        typer.Option(
            "--replay-pretraining/--no-replay-pretraining", help=describe(F, "replay_pretraining")
        ),
    ] = default(F, "replay_pretraining"),
    max_empty_share: Annotated[float, typer.Option(help=describe(F, "max_empty_share"))] = default(
        F, "max_empty_share"
    ),
    val_fraction: Annotated[float, typer.Option(help=describe(F, "val_fraction"))] = default(
        F, "val_fraction"
    ),
    min_val_tiles: Annotated[int, typer.Option(help=describe(F, "min_val_tiles"))] = default(
        F, "min_val_tiles"
    ),
    eval_every: Annotated[int, typer.Option(help=describe(F, "eval_every"))] = default(
        F, "eval_every"
    ),
    iou_loss_weight: Annotated[float, typer.Option(help=describe(F, "iou_loss_weight"))] = default(
        F, "iou_loss_weight"
    ),
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help=describe(F, "augment"))
    ] = default(F, "augment"),
    calibrate: Annotated[
        bool, typer.Option("--calibrate/--no-calibrate", help=describe(F, "calibrate"))
    ] = default(F, "calibrate"),
    device: DeviceOpt = default(F, "device"),
    precision: Annotated[PrecisionChoice, typer.Option(help=describe(F, "precision"))] = default(
        F, "precision"
    ),
    threads: Threads = None,
    seed: Seed = default(F, "seed"),
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Read the corrected labels of the done tasks of one or more batches (checked: CRS,
    valid polygons, inside the task; a malformed batch changes nothing), write them to
    BATCH/labels/ as a tile set, and fine-tune MODEL on them with replay of earlier labels.
    The new model records the batches and tiles it learnt from."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.config import resolve
    from rscrisis.loop.finetune import finetune

    level = verbosity(ctx, verbose, quiet)
    config = resolve(
        FinetuneConfig,
        steps=steps,
        batch_size=batch_size,
        lr_scale=lr_scale,
        ema=ema,
        freeze_encoder=freeze_encoder,
        freeze_stages=freeze_stages,
        transfer=getattr(transfer, "value", transfer),
        freeze_transferred=freeze_transferred,
        freeze_norm=freeze_norm,
        replay=tuple(str(r) for r in replay or ()),
        replay_ratio=replay_ratio,
        replay_pretraining=replay_pretraining,
        max_empty_share=max_empty_share,
        val_fraction=val_fraction,
        min_val_tiles=min_val_tiles,
        eval_every=eval_every,
        iou_loss_weight=iou_loss_weight,
        augment=augment,
        calibrate=calibrate,
        device=device,
        precision=getattr(precision, "value", precision),
        threads=threads,
        seed=seed,
        repair=repair,
    )
    with progress_bar("fine-tuning", enabled=level >= 0) as progress:
        result = finetune(
            model,
            batches,
            out,
            config=config,
            labels_file=labels,
            labels_layer=labels_layer,
            overwrite=overwrite,
            progress=progress,
        )
    if json_output:
        print_json(result.to_dict())
    refused = sum(len(b["refused"]) for b in result.batches)
    check = result.check
    before = check.get("before", {}).get("val_iou", float("nan"))
    after = check.get("after", {}).get("val_iou", float("nan"))
    say(
        f"model {out}: learnt from {result.new_tiles} corrected tiles (+{result.replay_tiles} "
        f"replay tiles; {refused} task(s) not done) in {result.train['steps']} steps; IoU on "
        f"{check.get('on', '?')}: {before:.3f} -> {after:.3f} ({check.get('chosen')})",
        level,
    )
