"""The runner's source: medseg's NumPy-only modules copied into an export folder.

The runner of an export (``DIR/predict.py``) must run without torch and without medseg,
yet do exactly what ``medseg predict`` does. Rather than a second implementation, the
export folder gets a copy of the modules that do each step (:data:`SHARED`: medseg's own
NumPy-only modules, and :mod:`medseg.export.runtime` for the steps whose medseg engine is
torch), taken from the installed medseg at export time, in a package ``_runner/`` with
every ``from medseg... import`` made relative. :func:`write_runner` then checks the copy:
no import of torch or medseg anywhere, and every module-level import of the package found
in it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from medseg.errors import ExportError
from medseg.io.atomic import atomic_write_text

__all__ = ["PACKAGE", "SHARED", "check_runner", "write_runner"]

#: Folder of the copied modules inside an export.
PACKAGE = "_runner"

#: medseg module -> its name in the runner's package.
SHARED = {
    "medseg.errors": "errors",
    "medseg.volume": "volume",
    "medseg.card": "card",
    "medseg.confidence": "confidence",
    "medseg.transforms.grid": "grid",
    "medseg.transforms.orientation": "orientation",
    "medseg.transforms.crop": "crop",
    "medseg.transforms.intensity": "intensity",
    "medseg.transforms.nnunet_intensity": "nnunet_intensity",
    "medseg.transforms.resample_nnunet": "resample_nnunet",
    "medseg.inference.placement": "placement",
    "medseg.inference.postprocess": "postprocess",
    "medseg.inference.engines": "engines",
    "medseg.export.runtime.resample": "resample",
    "medseg.export.runtime.window": "window",
    "medseg.export.runtime.networks": "networks",
    "medseg.export.runtime.pipeline": "pipeline",
    "medseg.export.runtime.main": "main",
}

#: Imports inside functions of copied modules that the runner never reaches: (module,
#: import). ``ModelCard.__post_init__`` types its preprocessing; the runner reads the card
#: as JSON and never builds a ModelCard.
UNSHIPPED_LAZY = {("card", "kinds")}

ENTRY = '''#!/usr/bin/env python3
"""Runner of an exported medseg model: python predict.py INPUT OUTPUT [--tta].

Needs only what requirements.txt names (no torch, no medseg); see _runner/main.py.
"""

import sys
from pathlib import Path

from _runner.main import main

if __name__ == "__main__":
    sys.exit(main(folder=Path(__file__).resolve().parent))
'''

_IMPORT = re.compile(r"^(\s*)from (medseg(?:\.\w+)+) import ", re.MULTILINE)


def _relative(source: str) -> str:
    """``from medseg.a.b import`` -> ``from .<its name> import`` (:data:`SHARED`; modules
    not shipped keep their last name and are caught by :func:`check_runner`)."""
    def swap(match: re.Match) -> str:
        module = match.group(2)
        return f"{match.group(1)}from .{SHARED.get(module, module.rsplit('.', 1)[-1])} import "

    return _IMPORT.sub(swap, source)


def write_runner(folder: str | Path) -> list[Path]:
    """Write ``predict.py`` and ``_runner/`` into ``folder``; returns the files written.

    Raises
    ------
    ExportError : a copied module imports torch or medseg, or a module-level import of the
        package names a module that is not shipped.
    """
    folder = Path(folder)
    package = folder / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    written = []
    for module, name in SHARED.items():
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ExportError(f"cannot find the source of {module} to copy into the runner")
        written.append(_write(package / f"{name}.py", _relative(Path(spec.origin).read_text())))
    written.append(_write(package / "__init__.py",
                          '"""The runner of an exported medseg model (copied from medseg)."""\n'))
    written.append(_write(folder / "predict.py", ENTRY))
    check_runner(folder)
    return written


def _write(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def check_runner(folder: str | Path) -> None:
    """Raise ExportError when the runner in ``folder`` imports torch or medseg, or a
    module-level relative import names a module the package does not hold."""
    package = Path(folder) / PACKAGE
    shipped = {p.stem for p in package.glob("*.py")}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level and names[0] not in shipped:
                    lazy = (path.stem, names[0]) in UNSHIPPED_LAZY and id(node) not in top
                    if not lazy:
                        raise ExportError(f"{PACKAGE}/{path.name} imports .{names[0]}, which "
                                          "the runner does not ship")
                if node.level:
                    continue
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("torch", "medseg"):
                    raise ExportError(f"{PACKAGE}/{path.name} imports {name}: the runner must "
                                      "run without torch and medseg")
