"""Fixtures of the prediction tests (helpers live in predict_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .predict_helpers import DATA, save_threshold_checkpoint


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def threshold_ckpt(ckpt_dir) -> Path:
    """Threshold checkpoint, intensity-only preprocessing, roi (32, 32, 16)."""
    return save_threshold_checkpoint(ckpt_dir / "threshold.safetensors")


@pytest.fixture(scope="session")
def resampling_ckpt(ckpt_dir) -> Path:
    """Threshold checkpoint that reorients to RAS and resamples to 5 x 5 x 6 mm."""
    return save_threshold_checkpoint(ckpt_dir / "resampling.safetensors",
                                     spacing_mm=(5.0, 5.0, 6.0), orientation="RAS")


@pytest.fixture(scope="session")
def large_roi_ckpt(ckpt_dir) -> Path:
    """Threshold checkpoint with roi (512, 512, 20): one window for the 512 x 512 x 20 series."""
    return save_threshold_checkpoint(ckpt_dir / "large_roi.safetensors", roi=(512, 512, 20))


@pytest.fixture(scope="session")
def two_channel_ckpt(ckpt_dir) -> Path:
    return save_threshold_checkpoint(ckpt_dir / "two_channel.safetensors", in_channels=2)


@pytest.fixture(scope="session")
def ct_dicom() -> Path:
    folder = DATA / "ct_dicom"
    if not folder.is_dir():
        pytest.skip(f"real CT DICOM series not available at {folder}")
    return folder.resolve()


@pytest.fixture
def phantom():
    """A small noisy CT phantom factory: make(orientation, oblique_deg) -> PhantomCase."""
    from medseg.data.phantom import make_phantom

    def make(orientation: str = "RAS", oblique_deg: float = 0.0, shape=(40, 36, 20)):
        return make_phantom(shape, (4.0, 4.5, 5.0), orientation=orientation, seed=3,
                            noise_hu=20.0, oblique_deg=oblique_deg)

    return make
