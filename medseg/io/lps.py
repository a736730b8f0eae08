"""LPS <-> RAS: the one conversion between DICOM / ITK world millimetres and medseg's.

DICOM and ITK place voxels in LPS patient coordinates (x towards the patient's
Left, y Posterior, z Superior); medseg's affines map voxel indices to RAS+
(x Right, y Anterior, z Superior), as nibabel does. The two differ by the sign
of x and y, so the same diagonal matrix converts either way. Every reader and
writer of :mod:`medseg.io` that meets LPS (:mod:`medseg.io.sitk`, the DICOM
package :mod:`medseg.io.dicom`) converts through this module, and no module
outside :mod:`medseg.io` sees LPS.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LPS_TO_RAS", "flip_lps_ras"]

#: (4, 4) homogeneous matrix that flips x and y: LPS mm -> RAS mm and back (its own inverse).
#: ``affine_ras = LPS_TO_RAS @ affine_lps``.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def flip_lps_ras(points: np.ndarray) -> np.ndarray:
    """Points or displacement vectors (..., 3) in mm from LPS to RAS, or from RAS to LPS.

    >>> flip_lps_ras(np.array([1.0, -2.0, 3.0])).tolist()
    [-1.0, 2.0, 3.0]
    """
    return np.asarray(points, dtype=np.float64) * np.diag(LPS_TO_RAS)[:3]
