"""The ``medseg`` command line: subcommands only parse arguments and call the library.

Each subcommand lives in ``medseg/cli/<name>.py`` and defines::

    HELP: str                                   # one line for ``medseg --help``
    def add_arguments(parser) -> None           # its options
    def run(args) -> int                        # calls the library, returns exit code

Command modules must be cheap to import (heavy imports go inside ``run``).
Errors: a :class:`~medseg.errors.MedsegError` becomes exactly one line on
stderr, ``medseg: error: <file>: <what is wrong>``, and exit code 1 (bad data)
or 2 (usage); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from medseg import __version__
from medseg.errors import MedsegError

COMMANDS = (
    "info", "convert", "evaluate", "models", "predict", "train", "validate", "report", "demo",
    "stats", "compare", "plan", "import", "serve", "calibrate", "export",
)

#: Commands whose module is not named after them (``import`` is a Python keyword).
_MODULES = {"import": "import_model"}

log = logging.getLogger("medseg")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"medseg: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medseg", description="Segmentation of 3D medical volumes (CT, MRI).")
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"medseg.cli.{_MODULES.get(name, name)}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args._run(args) or 0)
    except MedsegError as exc:
        if args.verbose:
            traceback.print_exc()
        sys.stderr.write(f"medseg: error: {_one_line(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("medseg: error: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: still one line, no traceback
        if args.verbose:
            traceback.print_exc()
        sys.stderr.write(
            f"medseg: error: internal error {type(exc).__name__}: {_one_line(str(exc))} "
            "(rerun with --verbose for the traceback and report it)\n"
        )
        return 1


def _one_line(text: str) -> str:
    return " ".join(text.split())
