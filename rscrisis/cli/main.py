"""The ``rscrisis`` command group, and the one place errors become exit codes.

Exit codes (docs/design.md): 0 success, 1 runtime failure, 2 bad usage or bad input. Every
:class:`~rscrisis.errors.RscrisisError` is printed as one line on stderr; an unexpected exception
is a bug and is printed as one line too, with the traceback under ``-vv``.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

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


class _PlainHelp:
    """``--help`` as plain text when stdout is not a terminal (rscrisis.cli.plain_help)."""

    def format_help(self, ctx, formatter) -> None:
        from rscrisis.cli import plain_help

        if plain_help.wants_plain():
            formatter.write(plain_help.render(self, ctx))
        else:
            super().format_help(ctx, formatter)  # type: ignore[misc]


class RscrisisCommand(_PlainHelp, TyperCommand):
    """Every rscrisis command: typer's, with plain help in pipes and logs."""


class RscrisisGroup(_PlainHelp, TyperGroup):
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
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"rscrisis {__version__}")
        raise typer.Exit()


def versions() -> dict[str, str]:
    """What a bug report needs: rscrisis, Python and the platform, the libraries that do the
    work (torch and its CUDA, GDAL, PROJ, GEOS) and how many threads torch uses."""
    import platform
    from importlib import metadata

    found = {
        "rscrisis": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for dist in ("numpy", "pydantic", "typer", "rasterio", "pyproj", "shapely", "geopandas",
                 "pyogrio", "torch", "segmentation-models-pytorch", "albumentations",
                 "safetensors", "scipy", "matplotlib"):  # fmt: skip
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    import pyproj
    import rasterio
    import shapely

    found["gdal"] = rasterio.__gdal_version__
    found["proj"] = pyproj.proj_version_str
    found["geos"] = shapely.geos_version_string
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return found
    found["torch threads"] = str(torch.get_num_threads())
    found["cuda"] = (
        f"{torch.version.cuda} ({torch.cuda.device_count()} device(s): "
        f"{', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))})"
        if torch.cuda.is_available()
        else f"not available (torch built with CUDA {torch.version.cuda or 'none'})"
    )
    from rscrisis.ml.device import cpu_has_native_bf16

    # what --precision auto picks on this CPU (scene predict, finetune, adapt)
    found["cpu native bf16"] = "yes (AVX512-BF16 or AMX)" if cpu_has_native_bf16() else "no"
    return found


def _show_versions(value: bool) -> None:
    if value:
        width = max(len(k) for k in versions())
        for key, text in versions().items():
            typer.echo(f"{key.ljust(width)}  {text}")
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
    show_versions: Annotated[
        bool,
        typer.Option(
            "--show-versions",
            callback=_show_versions,
            is_eager=True,
            help="Print the versions of rscrisis, Python, torch (with CUDA and threads), GDAL, "
            "PROJ, GEOS and the other libraries, for a bug report, and exit.",
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

    # name, the function, its one-line summary (the command list of rscrisis --help)
    commands: list[tuple[str, Callable[..., Any], str]] = [
        ("tile", tile.tile_command, "Cut GeoTIFF scenes (+ footprints) into a tile set."),
        ("train", train.train_command, "Train the U-Net and IoU head on labelled tile sets."),
        ("pretrain", train.pretrain_command, "Train on noisy (OSM) labels, noise-robust defaults."),
        ("predict", predict.predict_command, "Predict tile sets, or map scenes."),
        ("rank", rank.rank_command, "Rank predicted tiles and export an annotation batch."),
        ("adapt", adapt.adapt_command, "Adapt a model to a new area's unlabelled tiles."),
        ("finetune", finetune.finetune_command, "Fine-tune a model on corrected batches."),
        ("evaluate", evaluate.evaluate_command, "Score a model on labelled tile sets."),
        ("info", models.info_command, "Print a model file's metadata."),
        ("models", models.models_command, "List the encoders --encoder accepts."),
        ("simulate", simulate.simulate_command, "Replay the annotation loop with an oracle."),
        ("noise", noise.noise_command, "Write a copy of footprints with OSM-like noise."),
        ("sample-data", sample_data.sample_data_command, "Generate the synthetic sample data."),
    ]
    for name, function, summary in commands:
        # a command that needs inputs prints its help when called bare; models and
        # sample-data run with no argument
        bare_is_help = name not in ("models", "sample-data")
        app.command(name, no_args_is_help=bare_is_help, cls=RscrisisCommand, short_help=summary)(
            function
        )


_register()


def run() -> None:
    """Console-script entry point (also ``python -m rscrisis``, which names itself rscrisis)."""
    app(prog_name="rscrisis")
