"""Deterministic synthetic CT-like phantoms with their label maps.

A phantom is an abdomen-like body (soft tissue) holding a liver, a spleen, two
kidneys, a tubular contrast-filled aorta and an unlabelled vertebra, each with
a distinct Hounsfield value, blurred by partial volume at the organ borders
and overlaid with Gaussian noise. The anatomy is defined in world space
relative to the centre of the field of view and scales with it, so the same
seed at another spacing or orientation shows the same anatomy.

The same arguments give the same bytes (NumPy's PCG64 generator, float32
arithmetic in a fixed order). Written by us: no peer ships a labelled 3D CT
phantom generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medseg.errors import UsageError
from medseg.volume import Volume, affine_from

__all__ = ["LABEL_NAMES", "PhantomCase", "make_phantom", "rotation_z"]

LABEL_NAMES: dict[int, str] = {
    1: "liver",
    2: "spleen",
    3: "kidney_left",
    4: "kidney_right",
    5: "aorta",
}

_AIR_HU = -1000.0
_BODY_HU = 20.0


@dataclass(frozen=True)
class _Ellipsoid:
    label: int  # 0 = unlabelled tissue
    hu: float
    centre: tuple[float, float, float]  # fraction of the half field of view, (R, A, S)
    radii: tuple[float, float, float]  # fraction of the half field of view


# Drawn in order: a later structure overwrites an earlier one where they overlap.
_ORGANS = (
    _Ellipsoid(1, 95.0, (0.33, 0.10, 0.10), (0.33, 0.32, 0.45)),
    _Ellipsoid(2, 135.0, (-0.42, -0.05, 0.20), (0.15, 0.16, 0.25)),
    _Ellipsoid(3, 185.0, (-0.33, -0.38, -0.22), (0.11, 0.12, 0.25)),
    _Ellipsoid(4, 185.0, (0.33, -0.38, -0.32), (0.11, 0.12, 0.25)),
    _Ellipsoid(0, 650.0, (0.0, -0.62, 0.0), (0.12, 0.10, 2.0)),
)
_AORTA = (5, 320.0, 0.065)  # label, HU, radius as a fraction of the half field of view


@dataclass(frozen=True)
class PhantomCase:
    """A phantom CT (int16 HU) and its label map (uint8), on the same grid."""

    image: Volume
    label: Volume
    label_names: dict[int, str]


def rotation_z(degrees: float) -> np.ndarray:
    """(3, 3) rotation about the world S axis by ``degrees`` (for oblique phantoms)."""
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def make_phantom(
    shape: Sequence[int] = (96, 96, 64),
    spacing_mm: Sequence[float] = (3.0, 3.0, 4.0),
    orientation: str = "RAS",
    seed: int = 0,
    noise_hu: float = 20.0,
    oblique_deg: float = 0.0,
    slab: int = 32,
) -> PhantomCase:
    """Generate one phantom case.

    Parameters
    ----------
    shape : (x, y, z) voxels, each >= 8.
    spacing_mm : (x, y, z) voxel size in mm.
    orientation : axis codes of the array, e.g. ``"RAS"`` or ``"LPS"``.
    seed : organ positions, sizes and noise; the same seed gives the same bytes.
    noise_hu : standard deviation of the Gaussian noise in HU (0 for none).
    oblique_deg : rotate the grid about the S axis by this angle (oblique affine).
    slab : z-slices generated at a time (bounds memory for large volumes).

    Returns
    -------
    PhantomCase with ``image`` (int16, HU) and ``label`` (uint8, values in
    :data:`LABEL_NAMES` and 0) on a grid centred on world (0, 0, 0) mm.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise UsageError(f"phantom shape must be three sizes >= 8 voxels, got {shape}")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise UsageError(f"phantom spacing_mm must be three positive sizes, got {spacing_mm}")
    rng = np.random.default_rng(seed)
    organs, aorta_radius = _jitter(rng)
    affine = affine_from(spacing_mm, orientation, rotation=rotation_z(oblique_deg))
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    half_fov = 0.5 * np.abs(affine[:3, :3]) @ np.asarray(shape, dtype=np.float64)
    ramp_mm = float(np.mean(spacing_mm))

    image = np.empty(shape, dtype=np.int16)
    label = np.empty(shape, dtype=np.uint8)
    for z0 in range(0, shape[2], slab):
        z1 = min(z0 + slab, shape[2])
        hu, lab = _render_slab(shape, z0, z1, affine, half_fov, organs, aorta_radius, ramp_mm)
        if noise_hu > 0:
            hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
        image[:, :, z0:z1] = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
        label[:, :, z0:z1] = lab
    meta = {"source": f"medseg phantom seed={seed}"}
    return PhantomCase(Volume(image, affine, meta), Volume(label, affine, meta), dict(LABEL_NAMES))


def _jitter(rng: np.random.Generator) -> tuple[list[_Ellipsoid], float]:
    organs = []
    for organ in _ORGANS:
        shift = rng.uniform(-0.04, 0.04, 3)
        scale = rng.uniform(0.9, 1.1, 3)
        organs.append(
            _Ellipsoid(
                organ.label,
                organ.hu,
                tuple(float(c) for c in np.asarray(organ.centre) + shift),
                tuple(float(r) for r in np.asarray(organ.radii) * scale),
            )
        )
    return organs, float(_AORTA[2] * rng.uniform(0.85, 1.15))


def _render_slab(shape, z0, z1, affine, half_fov, organs, aorta_radius, ramp_mm):
    """HU (float32) and labels (uint8) of slices z0:z1, before noise."""
    ijk = np.stack(
        np.meshgrid(
            np.arange(shape[0], dtype=np.float32),
            np.arange(shape[1], dtype=np.float32),
            np.arange(z0, z1, dtype=np.float32),
            indexing="ij",
        ),
        axis=-1,
    )
    world = ijk @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    u = world / half_fov.astype(np.float32)  # normalised (R, A, S) in [-1, 1]
    half = half_fov.astype(np.float32)

    hu = np.full(world.shape[:3], _AIR_HU, dtype=np.float32)
    lab = np.zeros(world.shape[:3], dtype=np.uint8)
    body = _Ellipsoid(0, _BODY_HU, (0.0, 0.0, 0.0), (0.88, 0.72, 50.0))
    for organ in [body, *organs]:
        frac = _ellipsoid_fraction(u, half, organ, ramp_mm)
        _paint(hu, lab, frac, organ.hu, organ.label)
    # Aorta: a tube along S whose centre sways with height.
    centre_r = -0.06 + 0.05 * np.sin(np.pi * u[..., 2])
    radial = np.sqrt(((u[..., 0] - centre_r) * half[0]) ** 2 + ((u[..., 1] + 0.30) * half[1]) ** 2)
    radius_mm = aorta_radius * float(min(half[0], half[1]))
    frac = np.clip(0.5 - (radial - radius_mm) / ramp_mm, 0.0, 1.0)
    _paint(hu, lab, frac, _AORTA[1], _AORTA[0])
    return hu, lab


def _ellipsoid_fraction(u, half, organ: _Ellipsoid, ramp_mm: float) -> np.ndarray:
    """Partial-volume fraction in [0, 1]: a linear ramp one voxel wide across the border."""
    centre = np.asarray(organ.centre, dtype=np.float32)
    radii = np.asarray(organ.radii, dtype=np.float32)
    r = np.sqrt((((u - centre) / radii) ** 2).sum(axis=-1))
    radius_mm = float(np.min(radii * half))  # distance scale of the smallest semi-axis
    return np.clip(0.5 - (r - 1.0) * radius_mm / ramp_mm, 0.0, 1.0)


def _paint(hu: np.ndarray, lab: np.ndarray, frac: np.ndarray, value: float, label: int) -> None:
    hu *= 1.0 - frac
    hu += frac * np.float32(value)
    if label:
        lab[frac >= 0.5] = label
