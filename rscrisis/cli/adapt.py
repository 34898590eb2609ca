"""``rscrisis adapt``: model + the new area's unlabelled tile sets -> adapted model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, Spell, configured
from rscrisis.cli.options import JsonOutput, ModelPath, Overwrite, Quiet, TileSets, Verbose
from rscrisis.config import AdaptConfig


@configured(
    AdaptConfig,
    spell={
        "methods": Spell(
            decls=("--method",),
            more=". Repeat for several; default: "
            + ", ".join(AdaptConfig.model_fields["methods"].default),
        ),
    },
)
def adapt_command(
    ctx: typer.Context,
    model: ModelPath,
    tilesets: TileSets,
    out: Annotated[Path, typer.Option("--out", "-o", help="Adapted model file (.safetensors).")],
    options: Options,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Adapt MODEL to a new area from its unlabelled tiles, before anyone labels them:
    batch-norm statistics of the area (adabn), self-supervised encoder training (simsiam),
    self-training on confident pseudo-labels (selftrain). The adapted model is used like any
    other by predict, rank and finetune; its metadata records the adaptation."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.ml.adaptation import adapt

    level = verbosity(ctx, verbose, quiet)
    config = options.resolve()
    with progress_bar("adapting", enabled=level >= 0) as progress:
        result = adapt(model, tilesets, out, config=config, overwrite=overwrite, progress=progress)
    if json_output:
        print_json(result.to_dict())
    done = ", ".join(f"{m['method']} {m['seconds']:.0f} s" for m in result.methods)
    say(f"model {out}: adapted to {result.tiles} unlabelled tiles ({done})", level)
