"""The ``rscrisis`` command group, and the one place errors become exit codes.

Exit codes (docs/design.md): 0 success, 1 runtime failure, 2 bad usage or bad input. Every
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


#: commands with --resume: an interrupt tells users of these to resume, the others to rerun
RESUMABLE = ("tile", "train", "pretrain", "simulate")


def _os_error(exc: OSError) -> tuple[str, int]:
    """One line and an exit code for an OSError no library code turned into an RscrisisError:
    permissions and read-only media are the user's to fix (exit 2), a full disk is a runtime
    failure (exit 1); neither is a bug."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}{reason} — choose a folder you can write (--out) or fix its permissions", 2
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}{reason} — free disk space, then rerun", EXIT_RUNTIME
    return f"{where}{reason}", EXIT_RUNTIME


class RscrisisGroup(TyperGroup):
    """Maps library exceptions to exit codes for every subcommand."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Usage errors as one ``rscrisis: error:`` line (exit 2), like every other error, not
        typer's boxed panel: scripts grep stderr, and logs are read at 80 columns."""
        try:  # typer >= 0.29 vendors its own click
            from typer._click import exceptions as cx
        except ImportError:  # pragma: no cover - older typer on click
            from click import exceptions as cx

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except cx.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(exc.exit_code)
        except cx.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _error_line(f"{exc.format_message()}{where}")
            sys.exit(exc.exit_code)
        except cx.ClickException as exc:
            _error_line(exc.format_message())
            sys.exit(exc.exit_code)
        except typer.Abort:
            _error_line("aborted")
            sys.exit(EXIT_RUNTIME)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):  # a click Context (typer.Context is its subclass)
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
            if ctx.invoked_subcommand in RESUMABLE:
                _error_line("interrupted; complete outputs are kept, rerun with --resume to finish")
            else:
                _error_line("interrupted; no partial output is left under a final name")
            ctx.exit(130)
        except OSError as exc:
            message, code = _os_error(exc)
            _error_line(message)
            ctx.exit(code)
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
