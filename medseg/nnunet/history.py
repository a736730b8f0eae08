"""The way back from an nnU-Net network's logits to the input image's grid.

:class:`NnunetHistory` records what :meth:`NnunetPreprocessing.apply
<medseg.nnunet.preprocess.NnunetPreprocessing.apply>` did and undoes it as nnU-Net's
``convert_predicted_logits_to_segmentation_with_correct_shape`` does: resample the logits
to the cropped shape with the probabilities' rule (stored in the logits' dtype, float16 from
nnU-Net's sliding window), then argmax (softmax is monotonic, so nnU-Net skips it) or, for
region-based models, sigmoid > 0.5 painted in ``regions_class_order``; put the crop back
into the uncropped shape; transpose back to the reader's frame; and here also reverse the
axes to medseg's (x, y, z) and undo a reader's reorientation.

Labels are made slab by slab (:func:`medseg.nnunet.resample.iter_resampled`): the
``(K, native)`` float array nnU-Net holds is never built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from medseg.argmax import argmax_channels, label_dtype, torch_label_dtype
from medseg.errors import GeometryError
from medseg.nnunet.resample import SLAB_VOXELS, iter_resampled
from medseg.transforms.orientation import apply_orientation, invert_orientation
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.nnunet.preprocess import NnunetPreprocessing

__all__ = ["NnunetHistory"]

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class NnunetHistory:
    """What one image went through on its way to the network (nnU-Net's frame, voxels).

    Attributes
    ----------
    preprocessing : the :class:`~medseg.nnunet.preprocess.NnunetPreprocessing` applied.
    spacing : (a0, a1, a2) the image's spacing in mm in nnU-Net's frame.
    shape_before_cropping : (a0, a1, a2) the image's shape in nnU-Net's frame.
    bbox : per axis [start, stop) of the crop to non-zero.
    shape_after_cropping : (a0, a1, a2) of the crop.
    network_shape : (a0, a1, a2) of the network input (and of the logits it returns).
    reorientation : the nibabel ``ornt`` a reorienting reader applied, or None.
    affine : (4, 4) voxel -> RAS+ mm of the image after that reorientation.
    """

    preprocessing: NnunetPreprocessing
    spacing: tuple[float, float, float]
    shape_before_cropping: tuple[int, int, int]
    bbox: Box
    shape_after_cropping: tuple[int, int, int]
    network_shape: tuple[int, int, int]
    reorientation: np.ndarray | None
    affine: np.ndarray

    def labels(self, logits: torch.Tensor, slab_voxels: int = SLAB_VOXELS) -> np.ndarray:
        """Label map (x, y, z) on the input Volume's grid from the network's ``logits``.

        Parameters
        ----------
        logits : (K, a0, a1, a2) float16 or float32 on :attr:`network_shape`.
        slab_voxels : output voxels per channel resampled at a time; peak memory is about
            ``slab_voxels * (6 K + 32)`` bytes besides the logits and the labels.

        Returns
        -------
        uint8 labels (uint16 above 255 labels), equal to nnU-Net's segmentation.
        """
        array = self._check(logits)
        labels = np.zeros(self.shape_before_cropping, dtype=self._label_dtype(len(array)))
        box = labels[self._box()]
        for index, block in self._resampled(array, slab_voxels):
            box[index[1:]] = self._labels_of(block)
        return self._to_volume_frame(labels)

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """Class probabilities (K, x, y, z) float32 on the input Volume's grid.

        nnU-Net's exported probabilities: softmax (sigmoid for regions) of the resampled
        logits; outside the crop box certain background (1 in channel 0; 0 for regions).
        """
        return self.export(logits)[1]

    def export(self, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Labels (x, y, z) and :meth:`probabilities` (K, x, y, z) float32 in one pass, the
        labels from the probabilities as nnU-Net's export with probabilities makes them
        (argmax, or regions painted where their sigmoid exceeds 0.5)."""
        array = self._check(logits)
        probs = np.zeros((array.shape[0], *self.shape_before_cropping), dtype=np.float32)
        if self.preprocessing.regions is None:
            probs[0] = 1
        labels = np.zeros(self.shape_before_cropping, dtype=self._label_dtype(len(array)))
        box = self._box()
        for index, block in self._resampled(array, SLAB_VOXELS):
            values = self._nonlinearity(block)
            probs[(slice(None), *box)][index] = values.numpy()
            labels[box][index[1:]] = self._labels_of_probabilities(values)
        return self._to_volume_frame(labels), self._to_volume_frame(probs)

    def _check(self, logits: torch.Tensor | np.ndarray) -> np.ndarray:
        array = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else logits
        array = np.asarray(array)
        if array.ndim != 4 or tuple(array.shape[1:]) != tuple(self.network_shape):
            raise GeometryError(f"logits must be (K, {', '.join(map(str, self.network_shape))})"
                                f" on the network grid, got shape {tuple(array.shape)}")
        regions = self.preprocessing.regions
        if regions is not None and array.shape[0] != len(regions):
            raise GeometryError(f"a region-based model gives one channel per region "
                                f"({len(regions)}), got {array.shape[0]}")
        return array

    def _box(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.bbox)

    def _resampled(self, array: np.ndarray, slab_voxels: int):
        rule = self.preprocessing.resampling_probabilities
        network_spacing = self.preprocessing.full_spacing(self.spacing)
        axis = rule.separate_axis(network_spacing, self.spacing)
        return iter_resampled(array, self.shape_after_cropping, axis, rule, slab_voxels)

    def _nonlinearity(self, block: np.ndarray) -> torch.Tensor:
        values = torch.from_numpy(np.ascontiguousarray(block)).float()
        if self.preprocessing.regions is None:
            return torch.softmax(values, 0)
        return torch.sigmoid(values)

    def _label_dtype(self, channels: int) -> np.dtype:
        order = self.preprocessing.regions_class_order
        return label_dtype(channels if order is None else max(order, default=0) + 1)

    def _labels_of(self, block: np.ndarray) -> np.ndarray:
        """Labels of resampled logits (K, ...): their argmax (softmax keeps the order), or
        regions painted."""
        if self.preprocessing.regions_class_order is not None:
            return self._labels_of_probabilities(self._nonlinearity(block))
        values = torch.from_numpy(np.ascontiguousarray(block)).float()  # float16 exactly
        return self._labels_of_probabilities(values)

    def _labels_of_probabilities(self, values: torch.Tensor) -> np.ndarray:
        """Labels of (K, ...) float32 values: the first maximum (a running maximum: np.argmax
        over axis 0 is several times slower), or for regions each region's label, in
        ``regions_class_order``, where its probability exceeds 0.5."""
        order = self.preprocessing.regions_class_order
        if order is None:
            out = torch.empty(values.shape[1:], dtype=torch_label_dtype(len(values)))
            return argmax_channels(values, out).numpy()
        inside = values.numpy() > 0.5
        labels = np.zeros(values.shape[1:], dtype=np.uint16)
        for region, label in enumerate(order):
            labels[inside[region]] = label
        return labels

    def _to_volume_frame(self, array: np.ndarray) -> np.ndarray:
        """nnU-Net's frame -> reader (z, y, x) -> medseg (x, y, z) -> before reorientation."""
        lead = array.ndim - 3
        to_nnunet = [2 - t for t in self.preprocessing.transpose_forward]
        back = [lead + int(a) for a in np.argsort(to_nnunet)]
        array = array.transpose(*range(lead), *back)
        if self.reorientation is None:
            return array
        volume = Volume(array, self.affine)
        return apply_orientation(volume, invert_orientation(self.reorientation)).array
