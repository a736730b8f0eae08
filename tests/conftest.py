"""Test-wide setting: medseg's cache folder (``$MEDSEG_CACHE``: the engine cache of
``--backend onnxruntime|openvino`` and the exported runner's OpenVINO blobs) is a temporary
folder of the test session, never the user's ``~/.cache/medseg``; runners started as
subprocesses inherit it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    before = os.environ.get("MEDSEG_CACHE")
    os.environ["MEDSEG_CACHE"] = str(tmp_path_factory.mktemp("medseg_cache"))
    yield
    if before is None:
        os.environ.pop("MEDSEG_CACHE", None)
    else:
        os.environ["MEDSEG_CACHE"] = before
