"""``rscrisis sample-data``: regenerate the synthetic scenes shipped in sample_data/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Options, configured
from rscrisis.cli.options import JsonOutput, Overwrite, Quiet, Verbose
from rscrisis.config import SyntheticConfig


@configured(SyntheticConfig)
def sample_data_command(
    ctx: typer.Context,
    options: Options,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("sample_data"),
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Generate synthetic aerial-like scenes with exact and OSM-like noisy building footprints.

    area_a (pretraining area: scene, truth, noisy OSM-like labels) and area_b (a different-looking
    "new crisis area": scene with a nodata collar, truth). Seeded: same seed, same files.
    """
    from rscrisis.cli.console import print_json, say, verbosity
    from rscrisis.synth.scenes import generate_sample_data

    level = verbosity(ctx, verbose, quiet)
    config = options.resolve()
    summary = generate_sample_data(out, config, overwrite=overwrite)
    if json_output:
        print_json(summary)
    areas = summary["areas"]
    say(
        f"sample data in {out}: area_a {areas['area_a']['buildings']} buildings, "
        f"area_b {areas['area_b']['buildings']} buildings",
        level,
    )
