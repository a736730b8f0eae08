"""Fixtures of the DICOM node's tests: a real Orthanc (skipped where its binary is absent),
the threshold model of the prediction tests, the shared CT series, and node processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from predict.predict_helpers import DATA, save_threshold_checkpoint

from .orthanc_server import ORTHANC, Orthanc
from .pki import OPENSSL, make_pki
from .serve_helpers import copy_series


@pytest.fixture
def orthanc(tmp_path):
    """Orthanc on free loopback ports, its own configuration and storage under tmp_path."""
    if not os.path.exists(ORTHANC):
        pytest.skip("Orthanc is not installed (Debian package orthanc; .ci/run installs it)")
    server = Orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serve_model(tmp_path_factory) -> Path:
    """The threshold network (tests/predict): one window over the 512 x 512 x 20 series,
    labels 1 (115.5 < HU < 250.5) and 2 (HU > 250.5), computable from the pixels alone."""
    return save_threshold_checkpoint(tmp_path_factory.mktemp("serve") / "model.safetensors",
                                     roi=(512, 512, 20))


#: The slices of the shared 20-slice series that the many-series tests keep (a fifth of
#: the node's work per series, so that 20 series run in well under a minute on 2 cores).
FEW_SLICES = range(8, 12)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """The threshold network with one window over FEW_SLICES slices (512 x 512 x 4)."""
    return save_threshold_checkpoint(tmp_path_factory.mktemp("serve") / "small.safetensors",
                                     roi=(512, 512, len(FEW_SLICES)))


@pytest.fixture(scope="session")
def ct_files(tmp_path_factory) -> list[Path]:
    """The shared 20-slice CT series (JPEG 2000), under Study and Series Instance UIDs of its
    own: the anonymised files lack them (and leave SOP Class UID empty), and a PACS refuses
    instances without them."""
    folder = DATA / "ct_dicom"
    if not folder.is_dir():
        pytest.skip(f"real CT DICOM series not available at {folder}")
    files, _ = copy_series(sorted(folder.resolve().glob("*.dcm")),
                           tmp_path_factory.mktemp("ct") / "series", "shared ct")
    return files


@pytest.fixture
def nodes():
    """Start nodes with ``nodes.append(NodeProcess(...))``; all are stopped afterwards."""
    started: list = []
    yield started
    for node in started:
        node.stop()


@pytest.fixture
def pki(tmp_path) -> dict[str, Path]:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client's (TESTSCU)."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (it makes the test's certificates)")
    return make_pki(tmp_path / "pki")
