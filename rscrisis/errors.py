"""The one exception hierarchy of rscrisis.

Every error the library raises on purpose derives from :class:`RscrisisError` and carries the
process exit code the CLI should use (docs/design.md: 1 runtime failure, 2 bad usage or bad input).
The mapping to exit codes lives here and is applied in exactly one place, the CLI group in
``rscrisis.cli.main``. Messages are written to be printed as one line: they name the file, the
problem and the fix, the way torchgeo's ``DatasetNotFoundError`` does.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2


class RscrisisError(Exception):
    """Base class: a failure the user can act on. Exit code 1 unless a subclass says otherwise."""

    exit_code: int = EXIT_RUNTIME

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = Path(path) if path is not None else None
        self.problem = message
        self.hint = hint
        super().__init__(self._compose())

    def _compose(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}: {self.problem}")
        else:
            parts.append(self.problem)
        if self.hint:
            parts.append(self.hint)
        return " — ".join(parts)


class InputError(RscrisisError):
    """Bad usage or bad input: the user must change a file or an option (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class RasterReadError(InputError):
    """A raster cannot be opened or read."""


class NotGeoreferencedError(InputError):
    """A raster has no CRS or no geotransform, neither inside the file nor in a sidecar."""


class BandError(InputError):
    """Requested bands do not exist, or band layouts of inputs disagree."""


class LabelError(InputError):
    """A vector label file is unreadable, empty, or unusable."""


class NoOverlapError(InputError):
    """Labels and rasters do not overlap anywhere."""


class OutputExistsError(InputError):
    """An output exists and neither ``--overwrite`` nor ``--resume`` was given."""


class OutputLockedError(InputError):
    """Another rscrisis run is writing the same output folder."""


class ResumeMismatchError(InputError):
    """``--resume`` was asked for an output made with different settings."""


class ProcessingError(RscrisisError):
    """A runtime failure while processing valid input (disk full, GDAL write error...)."""


class TrainingDivergedError(ProcessingError):
    """The training loss became NaN or infinite; nothing is saved."""


class ScenesFailedError(RscrisisError):
    """Some scenes of a multi-scene run failed; the others are complete. Exit 2 when every
    failure was bad input, 1 otherwise."""

    def __init__(self, message: str, *, bad_input: bool, **kw):
        self.exit_code = EXIT_BAD_INPUT if bad_input else EXIT_RUNTIME
        super().__init__(message, **kw)
