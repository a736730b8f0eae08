"""A gantry-tilted CT built with pydicom: resampled so a blob lands where the tags put it."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
from dicom_helpers import ct_slice, save, world_lps

from medseg.cli import main
from medseg.errors import GeometryError
from medseg.io import read_volume

TILT_DEG = 15.0
TABLE_STEP_MM = 2.5
SHAPE = (48, 40)  # rows, columns
SLICES = 16
CENTRE_LPS = np.array([19.0, 21.0, 18.0])  # the blob's centre, world mm (LPS)
SIGMA_MM = 5.0


def _blob(lps: np.ndarray) -> np.ndarray:
    """1000 * Gaussian of the distance to CENTRE_LPS: the analytic image, any world point."""
    return 1000.0 * np.exp(-((lps - CENTRE_LPS) ** 2).sum(axis=-1) / (2 * SIGMA_MM**2))


def _tilted_series(folder, tilt_deg: float = TILT_DEG) -> None:
    """Slices tilted about x by ``tilt_deg``; the table moves TABLE_STEP_MM along z per slice."""
    t = np.radians(tilt_deg)
    orientation = (1, 0, 0, 0, np.cos(t), -np.sin(t))
    for k in range(SLICES):
        position = (0.0, 0.0, TABLE_STEP_MM * k)
        header = ct_slice(np.zeros(SHAPE, np.int16), position, orientation, (1.0, 1.0))
        pixels = np.rint(_blob(world_lps(header, SHAPE))).astype(np.int16)
        save(ct_slice(pixels, position, orientation, (1.0, 1.0)), folder / f"{k:02d}.dcm")


def _covered(world: np.ndarray) -> np.ndarray:
    """True where world point (x, y, k) lies inside input slice k's pixel grid (LPS)."""
    t = np.radians(TILT_DEG)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(t), -np.sin(t)])
    k = np.arange(world.shape[2])[None, None, :]
    offset = world - np.stack([0 * k, 0 * k, TABLE_STEP_MM * k + 0 * k], -1)
    i, j = offset @ row, offset @ col
    eps = 1e-6
    return (i > -eps) & (i < SHAPE[1] - 1 + eps) & (j > -eps) & (j < SHAPE[0] - 1 + eps)


def _ras_to_lps(points: np.ndarray) -> np.ndarray:
    return points * [-1, -1, 1]


def test_tilted_series_is_resampled_onto_the_tags_geometry(tmp_path, caplog):
    _tilted_series(tmp_path)
    with caplog.at_level(logging.WARNING, logger="medseg.io.dicom.stack"):
        volume = read_volume(tmp_path)
    assert f"gantry tilt of {TILT_DEG:.3g} degrees" in caplog.text
    # An orthogonal grid: columns of the affine are perpendicular.
    columns = volume.affine[:3, :3]
    gram = columns.T @ columns
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(np.diag(gram)),
                               [1, 1, TABLE_STEP_MM * np.cos(np.radians(TILT_DEG))])
    # Every voxel holds the analytic blob at its world position (where the input covers it).
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
    world = _ras_to_lps(ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3])
    expected = _blob(world)
    array = volume.array.astype(float)
    covered = _covered(world)  # voxels whose slice k reaches them (others hold the minimum)
    assert covered.mean() > 0.6 and covered[tuple(np.argwhere(expected == expected.max())[0])]
    assert np.abs(array - expected)[covered].max() < 12  # linear interpolation of a 5 mm blob
    assert np.all(array[~covered] == 0)
    # The brightest voxel and the intensity centroid sit at the blob's centre.
    centroid = (world * array[..., None]).sum(axis=(0, 1, 2)) / array.sum()
    np.testing.assert_allclose(centroid, CENTRE_LPS, atol=0.05)


def test_the_oracle_tells_a_straight_read(tmp_path):
    """Stacking the stored slices without resampling puts the centroid millimetres off."""
    _tilted_series(tmp_path)
    volume = read_volume(tmp_path)
    stored = np.stack([pydicom.dcmread(f).pixel_array.T for f in volume.meta["dicom_files"]], -1)
    array = stored.astype(float)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
    world = _ras_to_lps(ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3])
    centroid = (world * array[..., None]).sum(axis=(0, 1, 2)) / array.sum()
    assert np.linalg.norm(centroid - CENTRE_LPS) > 2.0


def test_no_tilt_refuses(tmp_path, capsys):
    _tilted_series(tmp_path)
    with pytest.raises(GeometryError, match=r"gantry-tilted stack \(15 degrees"):
        read_volume(tmp_path, tilt=False)
    assert main(["info", str(tmp_path), "--no-tilt"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-tilt" in err[0] and str(tmp_path) in err[0]
    assert main(["info", str(tmp_path)]) == 0


def test_straight_series_is_not_resampled(tmp_path, caplog):
    _tilted_series(tmp_path, tilt_deg=0.0)
    with caplog.at_level(logging.WARNING):
        volume = read_volume(tmp_path, tilt=False)
    assert "gantry" not in caplog.text
    np.testing.assert_allclose(volume.affine[:3, 2], [0, 0, TABLE_STEP_MM])


def test_irregular_drift_is_an_error(tmp_path):
    _tilted_series(tmp_path, tilt_deg=0.0)
    victim = tmp_path / "05.dcm"
    ds = pydicom.dcmread(victim)
    ds.ImagePositionPatient = [3.0, 0.0, float(ds.ImagePositionPatient[2])]
    ds.save_as(victim)
    with pytest.raises(GeometryError, match="drift irregularly within the slice plane"):
        read_volume(tmp_path)
