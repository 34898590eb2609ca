"""``rscrisis finetune``: model + corrected annotation batches -> new model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, Spell, configured
from rscrisis.cli.options import JsonOutput, ModelPath, Overwrite, Quiet, Verbose
from rscrisis.config import FinetuneConfig


@configured(
    FinetuneConfig,
    spell={
        "freeze_norm": Spell(decls=("--freeze-norm/--train-norm",)),
        "replay": Spell(more=" Repeat for several.", metavar="TILESET"),
    },
)
def finetune_command(
    ctx: typer.Context,
    model: ModelPath,
    batches: Annotated[list[Path], typer.Argument(help="Corrected batch folders (rscrisis rank).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New model file (.safetensors).")],
    options: Options,
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
    from rscrisis.loop.finetune import finetune

    level = verbosity(ctx, verbose, quiet)
    config = options.resolve()
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
    cross = check.get("cross_fit")
    if cross:
        ious = ", ".join(f"{a}: {v:.3f}" for a, v in cross["iou"].items())
        say(
            f"cross-fitting over {cross['tiles']} tiles ({cross['folds']} folds), IoU by "
            f"interpolation {ious}: kept the weights {check['interpolate']:g} of the way from "
            "the starting model to the fine-tuned one",
            level,
        )
    elif check.get("interpolate", 1.0) < 1:
        say(
            f"kept the weights {check['interpolate']:.3g} of the way from the starting model to "
            "the fine-tuned one",
            level,
        )
