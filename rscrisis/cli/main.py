"""The ``rscrisis`` command group, and the one place errors become exit codes.

Exit codes (DESIGN.md): 0 success, 1 runtime failure, 2 bad usage or bad input. Every
:class:`~rscrisis.errors.RscrisisError` is printed as one line on stderr; an unexpected exception
is a bug and is printed as one line too, with the traceback under ``-vv``.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer
from typer.core import TyperGroup

from rscrisis import __version__
from rscrisis.cli.options import Quiet, Verbose
from rscrisis.errors import EXIT_RUNTIME, RscrisisError


def _error_line(message: str) -> None:
    # plain write, not rich: a long message must stay one line for scripts that grep stderr
    sys.stderr.write(f"rscrisis: error: {message}\n")
    sys.stderr.flush()


class RscrisisGroup(TyperGroup):
    """Maps library exceptions to exit codes for every subcommand."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            # typer's own exits, usage errors (exit 2) and aborts keep their behaviour
            raise
        except RscrisisError as exc:
            _error_line(str(exc))
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            # stdout closed early (e.g. piped into head): not an error of ours
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except KeyboardInterrupt:
            _error_line("interrupted; complete outputs are kept, rerun with --resume to finish")
            ctx.exit(130)
        except Exception as exc:
            verbosity = (ctx.obj or {}).get("verbosity", 0)
            if verbosity >= 2:
                traceback.print_exc(file=sys.stderr)
            _error_line(
                f"internal error: {type(exc).__name__}: {exc} "
                "(a bug in rscrisis; rerun with -vv for the traceback and report it)"
            )
            ctx.exit(EXIT_RUNTIME)


app = typer.Typer(
    cls=RscrisisGroup,
    name="rscrisis",
    help="Crisis-response building segmentation: tile imagery, train and adapt a U-Net, predict, "
    "and pick the tiles whose annotation helps most.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"rscrisis {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Global options apply to every command."""
    from rscrisis.cli.console import configure_logging

    ctx.obj = {"verbosity": -1 if quiet else verbose}
    configure_logging(ctx.obj["verbosity"])


def _register() -> None:
    from rscrisis.cli import (
        adapt,
        evaluate,
        finetune,
        models,
        noise,
        predict,
        rank,
        sample_data,
        simulate,
        tile,
        train,
    )

    app.command("tile", no_args_is_help=True)(tile.tile_command)
    app.command("train", no_args_is_help=True)(train.train_command)
    app.command("pretrain", no_args_is_help=True)(train.pretrain_command)
    app.command("predict", no_args_is_help=True)(predict.predict_command)
    app.command("rank", no_args_is_help=True)(rank.rank_command)
    app.command("adapt", no_args_is_help=True)(adapt.adapt_command)
    app.command("finetune", no_args_is_help=True)(finetune.finetune_command)
    app.command("evaluate", no_args_is_help=True)(evaluate.evaluate_command)
    app.command("info", no_args_is_help=True)(models.info_command)
    app.command("models")(models.models_command)
    app.command("simulate", no_args_is_help=True)(simulate.simulate_command)
    app.command("noise", no_args_is_help=True)(noise.noise_command)
    app.command("sample-data")(sample_data.sample_data_command)


_register()


def run() -> None:
    """Console-script entry point."""
    app()
