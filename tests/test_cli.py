"""CLI framework: one-line errors, exit codes."""

import pytest

from medseg import __version__
from medseg.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_unknown_command_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medseg: error: ")


def test_no_command_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("medseg: error: ")


@pytest.mark.parametrize("command", __import__("medseg.cli", fromlist=["COMMANDS"]).COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"medseg {command}" in capsys.readouterr().out


def test_command_imports_stay_cheap():
    """Building the parser must not import torch (command modules import it inside run)."""
    import subprocess
    import sys

    code = "import sys, medseg.cli; medseg.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
