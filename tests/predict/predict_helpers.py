"""Helpers of the prediction tests: a hand-wired "threshold" U-Net, DICOM geometry from tags.

The network is a genuine ``unet3d`` (depth 2, width 1, batch norm) whose
weights make its output a function of each voxel's own intensity: every 3x3x3
convolution keeps only its centre tap, the deep path is zeroed, batch norms
are identities, and the 1x1x1 head draws three lines whose argmax thresholds
the CT-windowed intensity. With preprocessing ``window [-100, 300] -> [0, 1]``
the predicted label of a voxel is therefore, independently computable::

    0 if HU < LOW_HU,  1 if LOW_HU < HU < HIGH_HU,  2 if HU > HIGH_HU

(thresholds at half-integer HU so integer CT never sits on one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch

from medseg.volume import Volume

WINDOW = (-100.0, 300.0)
LOW_HU, HIGH_HU = 115.5, 250.5
LABEL_NAMES = {1: "soft_tissue", 2: "dense"}
SLOPE = 100.0

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "totalsegmentator"


def threshold_labels(hu: np.ndarray) -> np.ndarray:
    """The reference: what the threshold network must predict for CT values ``hu``."""
    hu = np.asarray(hu, dtype=np.float64)
    return np.where(hu > HIGH_HU, 2, np.where(hu > LOW_HU, 1, 0)).astype(np.uint8)


def _unit(hu: float) -> float:
    return (hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])


def threshold_unet(in_channels: int = 1) -> torch.nn.Module:
    """A real ``unet3d`` wired to threshold channel 0 (see module docstring)."""
    from medseg import models

    model = models.create("unet3d", in_channels, 3, depth=2, width=1, norm="batch",
                          convs_per_stage=1)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for name, value in state.items():
        if name.endswith("running_var") or (name.endswith(".1.weight") and value.ndim == 1):
            value.fill_(1.0 - 1e-5 if name.endswith("running_var") else 1.0)
    state["encoder.0.0.0.weight"][0, 0, 1, 1, 1] = 1.0  # channel 0 passes through
    state["decoder.0.0.0.weight"][0, 1, 1, 1, 1] = 1.0  # the skip (2nd of the concat)
    state["head.weight"][:, 0, 0, 0, 0] = torch.tensor([-SLOPE, 0.0, SLOPE])
    state["head.bias"][:] = torch.tensor([SLOPE * _unit(LOW_HU), 0.0, -SLOPE * _unit(HIGH_HU)])
    model.load_state_dict(state)
    return model.eval()


def threshold_card(model: torch.nn.Module, roi=(32, 32, 16), overlap=0.25, spacing_mm=None,
                   orientation=None, **window):
    """The model card of the threshold network (``window``: more WindowSettings fields)."""
    from medseg.card import ModelCard, NetworkSpec, WindowSettings

    pre: dict = {"intensity": {"mode": "ct", "window": list(WINDOW)}}
    if spacing_mm is not None:
        pre["spacing_mm"] = list(spacing_mm)
    if orientation is not None:
        pre["orientation"] = orientation
    return ModelCard(NetworkSpec.of(model), pre, LABEL_NAMES,
                     WindowSettings(tuple(roi), overlap, **window))


def threshold_model(in_channels: int = 1, **card_kwargs):
    """The threshold network wrapped with its card, ready for ``predict_case``."""
    from medseg.sources.loaded import LoadedModel

    model = threshold_unet(in_channels)
    return LoadedModel(model, threshold_card(model, **card_kwargs))


def save_threshold_checkpoint(path: Path, in_channels: int = 1, **card_kwargs) -> Path:
    from medseg.checkpoint import save_checkpoint

    model = threshold_unet(in_channels)
    save_checkpoint(path, model, threshold_card(model, **card_kwargs))
    return path


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def pixel_lps(ds, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """LPS mm of pixels (rows, cols) of a slice, from its tags (PS3.3 C.7.6.2.1.1)."""
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    ipp = np.array(ds.ImagePositionPatient, float)
    return ipp + cols[:, None] * dc * iop[:3] + rows[:, None] * dr * iop[3:]


def seg_centroids_lps(path: Path) -> dict[str, np.ndarray]:
    """Segment label -> LPS centroid (mm), from the SEG's frames and per-frame positions."""
    seg = pydicom.dcmread(path)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    geometry = pydicom.Dataset()
    geometry.ImageOrientationPatient = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    geometry.PixelSpacing = shared.PixelMeasuresSequence[0].PixelSpacing
    sums: dict[str, list] = {}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        geometry.ImagePositionPatient = group.PlanePositionSequence[0].ImagePositionPatient
        r, c = np.nonzero(frame)
        sums.setdefault(names[number], []).append(pixel_lps(geometry, r, c))
    return {name: np.concatenate(pts).mean(axis=0) for name, pts in sums.items()}


def label_centroids_lps(labels: Volume, names: dict[int, str]) -> dict[str, np.ndarray]:
    """Label name -> LPS centroid (mm) of a RAS label Volume, through its affine."""
    out = {}
    for value, name in names.items():
        ijk = np.argwhere(labels.array == value)
        if len(ijk):
            ras = ijk @ labels.affine[:3, :3].T + labels.affine[:3, 3]
            out[name] = ras.mean(axis=0) @ LPS_TO_RAS.T
    return out
