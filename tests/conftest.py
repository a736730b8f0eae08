"""Suite-wide set-up: the name ``tests`` is this folder.

rt-utils (an oracle of the ``test`` extra) installs its own unit tests as a top-level
``tests`` package into site-packages. A regular package there wins over this folder (a
namespace package: no ``__init__.py``) wherever a test module imports ``from tests.nnunet
...`` or ``from tests.planning ...``, and those imports fail. Bind the name to this folder
before any test module is imported (pytest loads this file first, in every xdist worker).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)


def _bind_tests_package() -> None:
    found = importlib.util.find_spec("tests")
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if _HERE in [str(Path(p).resolve()) for p in locations]:
        return  # this folder is what ``tests`` means already
    spec = importlib.machinery.ModuleSpec("tests", None, is_package=True)
    spec.submodule_search_locations = [_HERE]
    sys.modules["tests"] = importlib.util.module_from_spec(spec)


_bind_tests_package()
