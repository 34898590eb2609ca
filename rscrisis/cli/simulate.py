"""``rscrisis simulate``: replay the annotation loop with an oracle, formula against formula."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rscrisis.cli.configured import Nested, Options, Spell, configured
from rscrisis.cli.options import JsonOutput, ModelPath, OutDir, Overwrite, Quiet, Resume, Verbose
from rscrisis.config import SimulateConfig

#: the fine-tuning knobs that shape the curves; the rest of each round's FinetuneConfig is
#: finetune's defaults with no held-out slice (every tile the oracle reveals trains)
ROUND_KNOBS = (
    "steps",
    "ema",
    "replay_ratio",
    "replay_norm",
    "replay_targets",
    "interpolate",
    "interpolate_folds",
    "prior_tiles",
    "lr_scale",
    "freeze_stages",
    "batch_size",
    "threads",
)


@configured(
    SimulateConfig,
    nested=(Nested("finetune", ROUND_KNOBS), Nested("adapt", ("methods",))),
    hide=("finetune", "adapt"),
    spell={
        "formulas": Spell(comma=True, more=" (comma-separated)"),
        "seeds": Spell(comma=True, more=" (comma-separated)"),
        "steps": Spell(lead="fine-tuning each round: "),
        "methods": Spell(
            decls=("--adapt",),
            help=SimulateConfig.model_fields["adapt"].description or "",
            more=". Repeat for several methods (rscrisis adapt's defaults otherwise)",
        ),
    },
)
def simulate_command(
    ctx: typer.Context,
    model: ModelPath,
    tileset: Annotated[Path, typer.Argument(help="A fully labelled tile set (the oracle).")],
    out: OutDir,
    options: Options,
    overwrite: Overwrite = False,
    resume: Resume = False,
    json_output: JsonOutput = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Replay the annotation loop on a fully labelled tile set with an oracle: a spatial
    pool/test split, a random seed batch shared by all formulas, then per formula ROUNDS of
    predict -> rank -> reveal K labels -> fine-tune -> evaluate on the test area, for several
    seeds. Writes curves.csv, summary.csv (area under the IoU curve per formula, spread over
    seeds, wins and IoU gain against random) and curves.png. --resume continues a killed run."""
    from rscrisis.cli.console import print_json, progress_bar, say, verbosity
    from rscrisis.loop.simulate import simulate

    level = verbosity(ctx, verbose, quiet)
    config = options.resolve()
    with progress_bar("simulating", enabled=level >= 0) as progress:
        result = simulate(
            model,
            tileset,
            out,
            config=config,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
        )
    if json_output:
        print_json(result.to_dict())
    frame = []
    if result.start:
        frame.append(f"start {result.start['test_iou']:.3f} at 0 labels")
    if result.ceiling:
        frame.append(
            f"ceiling {result.ceiling['test_iou']:.3f} at {result.ceiling['labelled']} labels"
        )
    lines = [f"simulation in {out}: {result.runs} rounds run; " + ", ".join(frame)]
    for r in result.summary:
        last = max((k for k in r if k.startswith("iou_at_")), key=lambda k: int(k[7:]))
        gap = r.get("gap_closed_" + last[4:])
        lines.append(
            f"  {r['formula']}: AUC {r['auc_mean']:.3f} ± {r['auc_std']:.3f}, IoU {r[last]:.3f} "
            f"at {last[7:]} labels"
            + (f" ({gap:.0%} of the gap)" if gap is not None else "")
            + (
                f", beats random in {r['beats_random_seeds']} seeds"
                if "beats_random_seeds" in r
                else ""
            )
        )
    say("\n".join(lines), level)
