"""Fixtures for the nnU-Net tests: real nnU-Net v2 models trained on phantoms, built once.

The models are cached in ``$MEDSEG_TEST_CACHE`` (default ``~/.cache/medseg-tests``) and
rebuilt only when the build settings or the nnunetv2 version change; pytest-xdist workers
share one build (a lock file). Skipped with a reason where nnunetv2 is not installed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nnunet_model import build_model, model_folder


def _cache() -> Path:
    return Path(os.environ.get("MEDSEG_TEST_CACHE", Path.home() / ".cache" / "medseg-tests"))


def _build(builds: dict[str, float], name: str, **settings) -> Path:
    pytest.importorskip("nnunetv2", reason="nnunetv2 (the test extra) is needed for nnU-Net models")
    start = time.perf_counter()
    results = build_model(_cache() / name, **settings)
    builds[name] = time.perf_counter() - start
    return results


@pytest.fixture(scope="session")
def nnunet_builds() -> dict[str, float]:
    """Seconds each model fixture took in this session (near 0 when it came from the cache)."""
    return {}


@pytest.fixture(scope="session")
def nnunet_model(nnunet_builds: dict[str, float]) -> Path:
    """A trained nnU-Net v2 3d_fullres model folder with folds 0 and 1 (nnUNetTrainer)."""
    return model_folder(_build(nnunet_builds, "nnunet-3d"), "3d_fullres")


@pytest.fixture(scope="session")
def nnunet_model_2d(nnunet_builds: dict[str, float]) -> Path:
    """A trained nnU-Net v2 2d model folder with fold 0 (nnUNetTrainer).

    2d steps are ~10x cheaper than 3d ones and the small organs need more of them.
    """
    results = _build(nnunet_builds, "nnunet-2d", configurations=("2d",), folds=(0,),
                     iterations=800)
    return model_folder(results, "2d")
