"""``rscrisis evaluate``: model + labelled tile sets -> metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, configured
from rscrisis.cli.options import JsonOutput, ModelPath, Overwrite, Quiet, Verbose
from rscrisis.config import PredictConfig


@configured(PredictConfig, hide=("mc_samples", "seed"))
def evaluate_command(
    ctx: typer.Context,
    model: ModelPath,
    tilesets: Annotated[list[Path], typer.Argument(help="Labelled tile set folders.")],
    options: Options,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write evaluation.json and per_tile.csv here."),
    ] = None,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Pixel IoU / F1 / precision / recall, object F1 at IoU >= 0.5, and predicted-IoU
    calibration (Spearman rho, MAE) on labelled tile sets."""
    from rscrisis.cli.console import print_json, print_table, progress_bar, verbosity
    from rscrisis.predict.evaluate import evaluate

    level = verbosity(ctx, verbose, quiet)
    config = options.resolve()
    with progress_bar("evaluating", enabled=level >= 0) as progress:
        result = evaluate(
            model, tilesets, out=out, config=config, overwrite=overwrite, progress=progress
        )
    if json_output:
        print_json(result.to_dict())
        return
    px, ob = result.pixel, result.objects
    cal, soft = result.pred_iou_calibration, result.soft_iou_calibration
    rows = [
        ("pixel IoU", px["iou"]),
        ("pixel F1", px["f1"]),
        ("precision", px["precision"]),
        ("recall", px["recall"]),
        ("object F1 (IoU>=0.5)", ob["f1"]),
        ("mean tile IoU", result.mean_tile_iou),
        ("pred. IoU Spearman", cal["spearman"]),
        ("pred. IoU MAE", cal["mae"]),
        ("soft IoU Spearman", soft["spearman"]),
        ("soft IoU MAE", soft["mae"]),
    ]
    print_table(
        ["metric", "value"],
        [[name, f"{value:.3f}"] for name, value in rows],
        title=f"{model} on {result.tiles} tiles",
    )
