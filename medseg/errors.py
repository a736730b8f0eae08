"""The ``MedsegError`` family.

Every error medseg raises for bad input is a :class:`MedsegError`. Its message
names the file (when there is one), what arrived and what was expected. The
CLI prints it as one line, ``medseg: error: <file>: <what is wrong>``, and
exits with :attr:`MedsegError.exit_code` (2 for usage, 1 for bad data).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable

__all__ = [
    "MedsegError",
    "UsageError",
    "DataError",
    "ExportError",
    "ImageReadError",
    "ImageWriteError",
    "GeometryError",
    "ConfigError",
    "CheckpointError",
    "closest",
    "check_option",
    "check_keywords",
]


class MedsegError(Exception):
    """Base class of all medseg errors.

    Parameters
    ----------
    message : str
        What is wrong, and where possible what was expected and how to fix it.
    path : str or os.PathLike, optional
        The file or folder the error is about; printed first by the CLI.
    """

    exit_code = 1

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UsageError(MedsegError, ValueError):
    """A bad argument or option (CLI exit code 2)."""

    exit_code = 2


class DataError(MedsegError, ValueError):
    """Input data with the wrong content: NaN, wrong dtype, bad label values."""


class ImageReadError(MedsegError, OSError):
    """A file or folder that cannot be read as an image."""


class ImageWriteError(MedsegError, OSError):
    """An output that cannot be written."""


class GeometryError(MedsegError, ValueError):
    """Shapes, affines or spacings that do not fit together."""


class ConfigError(MedsegError, ValueError):
    """A pipeline config or manifest with an unknown key or bad value."""


class CheckpointError(MedsegError, ValueError):
    """A checkpoint that is corrupt, unsafe or incompatible."""


class ExportError(MedsegError, ValueError):
    """A network that an export format (ONNX, OpenVINO) cannot express."""


def closest(value: str, choices: Iterable[str]) -> str | None:
    """Return the valid choice closest to ``value`` (for 'did you mean'), or None."""
    matches = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def check_option(
    value: str,
    choices: Iterable[str],
    name: str,
    error: type[MedsegError] = UsageError,
    path: str | os.PathLike | None = None,
) -> str:
    """Return ``value`` if it is one of ``choices``; else raise ``error`` naming the closest.

    >>> check_option("gaussian", ["gaussian", "constant"], "blend")
    'gaussian'
    """
    options = list(choices)
    if value in options:
        return value
    hint = closest(value, options)
    suggestion = f"; did you mean {hint!r}?" if hint else ""
    raise error(
        f"unknown {name} {value!r}: expected one of {', '.join(map(repr, options))}{suggestion}",
        path,
    )


def check_keywords(keywords: Iterable[str], valid: Iterable[str], owner: str) -> None:
    """Raise UsageError for the first of ``keywords`` not in ``valid``, naming the closest.

    ``owner`` names what takes the options, e.g. ``"loss 'dice'"``.

    >>> check_keywords(["width"], ["width", "depth"], "model 'unet3d'")
    """
    options = list(valid)
    for key in keywords:
        if key not in options:
            hint = closest(key, options)
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise UsageError(
                f"unknown option {key!r} for {owner}: expected one of "
                f"{', '.join(map(repr, options))}{suggestion}"
            )
