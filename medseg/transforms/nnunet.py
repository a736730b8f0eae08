"""nnU-Net v2's preprocessing of one configuration, and its inverse, number for number.

What nnU-Net's ``DefaultPreprocessor`` does to a case before the network, here applied to
a medseg :class:`~medseg.volume.Volume`:

1. **reader frame**: nnU-Net's readers give (z, y, x) arrays, medseg's (x, y, z) reversed,
   spacing reversed, direction ignored; ``NibabelIOWithReorient`` first reorients to the
   closest RAS (medseg's :func:`~medseg.transforms.orientation.reorient`);
2. ``transpose_forward``; the result is *nnU-Net's frame* (a0, a1, a2);
3. **crop** to the bounding box of the non-zero voxels of any channel, holes filled;
4. **normalise** each channel by its scheme (:class:`ChannelNormalization`), inside that
   mask when ``use_mask_for_norm``;
5. **resample** to the target spacing (:mod:`medseg.transforms.resample_nnunet`); a 2d configuration
   has two target spacings and keeps a0's.

:class:`NnunetHistory` undoes it for the network's logits as nnU-Net's export does
(resample to the cropped shape, softmax or sigmoid, argmax or regions, uncrop, transpose
back), slab by slab for labels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from medseg.errors import CheckpointError, DataError, UsageError, check_option
from medseg.transforms.crop import nonzero_bbox
from medseg.transforms.nnunet_intensity import SCHEMES, ChannelNormalization
from medseg.transforms.history import Activation, Cropped, History, Reoriented, Resampled
from medseg.transforms.orientation import apply_orientation, orientation_transform
from medseg.transforms.pipeline import Preprocessed
from medseg.transforms.resample_nnunet import (
    NnunetResampling,
    ResamplingRule,
    resample,
    target_shape,
)
from medseg.volume import Volume

__all__ = ["ChannelNormalization", "NnunetPreprocessing", "READERS", "SCHEMES"]

#: nnU-Net readers medseg reproduces, and whether each reorients to RAS first.
READERS = {"SimpleITKIO": False, "NibabelIO": False, "NibabelIOWithReorient": True}
_CT_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")


@dataclass(frozen=True)
class NnunetPreprocessing:
    """What one nnU-Net configuration does to an image before the network and to the
    logits after it (nnU-Net's DefaultPreprocessor + export), as plain JSON-able data.

    Parameters
    ----------
    reader : plans' ``image_reader_writer``, a key of :data:`READERS`.
    transpose_forward : plans' axis permutation of the reader's (z, y, x) array.
    spacing : target spacing (mm) in nnU-Net's frame; 2 values (a1, a2) for a 2d config.
    normalization : one :class:`ChannelNormalization` per input channel.
    resampling_data, resampling_probabilities : the image's and the logits' rules.
    regions : region-based models: the labels each sigmoid output covers; else None.
    regions_class_order : region-based models: the label each region paints, in order.
    """

    reader: str
    transpose_forward: tuple[int, int, int]
    spacing: tuple[float, ...]
    normalization: tuple[ChannelNormalization, ...]
    resampling_data: ResamplingRule
    resampling_probabilities: ResamplingRule
    regions: tuple[tuple[int, ...], ...] | None = None
    regions_class_order: tuple[int, ...] | None = None

    #: The card's name of this kind of preprocessing (``"kind"`` in its JSON form).
    kind: ClassVar[str] = "nnunet"
    #: The network's outputs return to the input grid as logits, activated afterwards.
    resamples_logits: ClassVar[bool] = True

    @classmethod
    def from_plans(cls, plans: Mapping, configuration: str, dataset: Mapping,
                   source: str | os.PathLike | None = None) -> NnunetPreprocessing:
        """Read ``configuration`` of nnU-Net's ``plans.json`` and ``dataset.json`` contents.

        ``source`` (the plans file) is named in error messages.

        Raises
        ------
        CheckpointError : an unknown configuration, reader, preprocessor, normalisation
            scheme or resampling function, or a missing key.
        """
        config = _configuration(plans, configuration, source)
        try:
            check_option(plans["image_reader_writer"], READERS, "nnU-Net reader",
                         CheckpointError, source)
            check_option(config.get("preprocessor_name", "DefaultPreprocessor"),
                         ["DefaultPreprocessor"], "nnU-Net preprocessor", CheckpointError, source)
            check_option(plans.get("label_manager", "LabelManager"), ["LabelManager"],
                         "nnU-Net label manager", CheckpointError, source)
            regions, order = _regions(dataset, source)
            return cls(
                plans["image_reader_writer"], tuple(int(a) for a in plans["transpose_forward"]),
                tuple(float(s) for s in config["spacing"]),
                _normalizations(plans, config, source),
                ResamplingRule.from_plans(config["resampling_fn_data"],
                                          config["resampling_fn_data_kwargs"], source),
                ResamplingRule.from_plans(config["resampling_fn_probabilities"],
                                          config["resampling_fn_probabilities_kwargs"], source),
                regions, order)
        except KeyError as exc:
            raise CheckpointError(f"the plans of configuration {configuration!r} lack key "
                                  f"{exc}", source) from exc

    def to_dict(self) -> dict:
        """JSON-able form with ``"kind": "nnunet"``; :meth:`from_dict` reads it back exactly."""
        data = asdict(self)
        data["kind"] = self.kind
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> NnunetPreprocessing:
        """The inverse of :meth:`to_dict`.

        Raises
        ------
        CheckpointError : ``kind`` is not ``"nnunet"`` or a field is missing.
        """
        if data.get("kind") != "nnunet":
            raise CheckpointError(f"preprocessing of kind {data.get('kind')!r} is not nnU-Net's "
                                  "(expected kind 'nnunet')")
        try:
            regions = data.get("regions")
            order = data.get("regions_class_order")
            return cls(
                str(data["reader"]), tuple(int(a) for a in data["transpose_forward"]),
                tuple(float(s) for s in data["spacing"]),
                tuple(ChannelNormalization(**n) for n in data["normalization"]),
                ResamplingRule.from_dict(data["resampling_data"]),
                ResamplingRule.from_dict(data["resampling_probabilities"]),
                None if regions is None else tuple(tuple(int(v) for v in r) for r in regions),
                None if order is None else tuple(int(v) for v in order))
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"nnU-Net preprocessing lacks or mistypes {exc}") from exc

    @property
    def num_channels(self) -> int:
        return len(self.normalization)

    def apply(self, image: Volume, label: Volume | None = None,
              device: Any = None) -> Preprocessed:
        """Preprocess ``image`` ((x, y, z) or (C, x, y, z)) as nnU-Net would its file.

        Returns
        -------
        :class:`~medseg.transforms.pipeline.Preprocessed`: the float32 network input
        (C, x', y', z') in the window frame (module docstring) and its History; ``device``
        is unused (nnU-Net's arithmetic runs in NumPy).

        Raises
        ------
        DataError : the volume's channels differ from the configuration's.
        UsageError : a label was given (this path prepares images for prediction).
        """
        if label is not None:
            raise UsageError("nnU-Net preprocessing here prepares images for prediction: "
                             "pass no label")
        check_option(self.reader, READERS, "nnU-Net reader", CheckpointError)
        volume, ornt = _reader_frame(image, READERS[self.reader])
        array = volume.array if volume.has_channels else volume.array[None]
        if array.shape[0] != self.num_channels:
            raise DataError(f"the image has {array.shape[0]} channel(s); this nnU-Net "
                            f"configuration expects {self.num_channels}",
                            volume.meta.get("source"))
        # the reader's C-ordered (C, z, y, x) float32: statistics sum in nnU-Net's order
        data = np.ascontiguousarray(np.transpose(array, (0, 3, 2, 1)), dtype=np.float32)
        data = data.transpose(0, *(t + 1 for t in self.transpose_forward))
        zyx = volume.spacing_mm[::-1]
        spacing = tuple(float(zyx[t]) for t in self.transpose_forward)
        masked = any(n.use_mask_for_norm for n in self.normalization)
        mask, bbox = nonzero_bbox(data, fill=masked)
        index = tuple(slice(a, b) for a, b in bbox)
        cropped = data[(slice(None), *index)]
        mask = mask[index]
        target = self.full_spacing(spacing)
        shape = target_shape(cropped.shape[1:], spacing, target)
        for c, norm in enumerate(self.normalization):
            cropped[c] = norm.apply(cropped[c], mask)
        rule = self.resampling_data
        network = np.ascontiguousarray(
            resample(cropped, shape, rule.separate_axis(spacing, target), rule))
        back = NnunetResampling(self.resampling_probabilities,
                                self.resampling_probabilities.separate_axis(target, spacing))
        history = _history(image, volume, ornt, self.transpose_forward, bbox,
                           tuple(network.shape[1:]), back, Activation(self.regions_class_order))
        window = Volume(network.transpose(0, 3, 2, 1), np.asarray(history.output_affine),
                        image.meta)
        return Preprocessed(window, None, history)

    def full_spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        """The target spacing (mm, nnU-Net's frame) for an image of ``spacing``: a 2d
        configuration keeps a0's own."""
        if len(self.spacing) == 2:
            return (float(spacing[0]), *self.spacing)
        return self.spacing


def _configuration(plans: Mapping, name: str, source) -> dict:
    """Configuration ``name`` of the plans with its ``inherits_from`` chain resolved."""
    configs = plans.get("configurations", {})
    chain: list[str] = []
    while name not in chain:
        check_option(name, configs, "nnU-Net configuration", CheckpointError, source)
        chain.append(name)
        name = configs[name].get("inherits_from", name)
    config: dict = {}
    for link in reversed(chain):
        config.update(configs[link])
    return config


def _normalizations(plans: Mapping, config: Mapping, source) -> tuple[ChannelNormalization, ...]:
    properties = plans.get("foreground_intensity_properties_per_channel",
                           plans.get("foreground_intensity_properties_by_modality", {}))
    norms = []
    for c, (scheme, masked) in enumerate(zip(config["normalization_schemes"],
                                             config["use_mask_for_norm"])):
        check_option(scheme, SCHEMES, "nnU-Net normalization scheme", CheckpointError, source)
        stats = {}
        if scheme == "CTNormalization":
            found = properties.get(str(c), {})
            missing = [k for k in _CT_KEYS if k not in found]
            if missing:
                raise CheckpointError(f"CTNormalization of channel {c} needs the foreground "
                                      f"intensity property {missing[0]!r}", source)
            stats = {k: float(found[k]) for k in _CT_KEYS}
        norms.append(ChannelNormalization(scheme, bool(masked), **stats))
    return tuple(norms)


def _regions(dataset: Mapping, source) -> tuple[tuple[tuple[int, ...], ...] | None,
                                                 tuple[int, ...] | None]:
    """Regions and their class order of a region-based dataset.json (nnU-Net's
    LabelManager: a label given as a list of several values makes it region-based)."""
    labels = {k: v for k, v in dataset["labels"].items() if k != "ignore"}
    if not any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        return None, None
    regions = tuple(tuple(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
                    for v in labels.values())
    regions = tuple(r for r in regions if set(r) != {0})
    order = dataset.get("regions_class_order")
    if order is None or len(order) != len(regions):
        raise CheckpointError(f"a region-based dataset.json needs regions_class_order with "
                              f"{len(regions)} entries (one per region), got {order!r}", source)
    return regions, tuple(int(c) for c in order)


def _reader_frame(volume: Volume, reorient: bool) -> tuple[Volume, np.ndarray | None]:
    if not reorient:
        return volume, None
    ornt = orientation_transform(volume.affine, "RAS")
    return apply_orientation(volume, ornt), ornt


def _history(image: Volume, reader: Volume, ornt: np.ndarray | None,
             transpose_forward: Sequence[int], bbox: Sequence[tuple[int, int]],
             network_shape: Sequence[int], rule: NnunetResampling,
             activation: Activation) -> History:
    """nnU-Net's steps as a medseg History in the window frame.

    ``reader``: ``image`` as nnU-Net's reader sees it (reoriented by ``ornt`` when the
    reader reorients); ``bbox`` and ``network_shape`` are in nnU-Net's frame (a0, a1, a2);
    window axis i is nnU-Net's axis 2 - i.
    """
    import nibabel.orientations as nio

    steps: list = [] if ornt is None else [Reoriented(ornt)]
    perm = np.array([(0, 1)] * 3)
    for i in range(3):  # window axis i holds reader-frame (x, y, z) axis 2 - t[2 - i]
        perm[2 - transpose_forward[2 - i]] = (i, 1)
    shape, affine = reader.spatial_shape, reader.affine
    if not np.array_equal(perm[:, 0], [0, 1, 2]):
        steps.append(Reoriented(perm))
        affine = affine @ nio.inv_ornt_aff(perm, shape)
        shape = tuple(shape[int(np.flatnonzero(perm[:, 0] == i)[0])] for i in range(3))
    start = tuple(int(a) for a, _ in bbox)[::-1]
    cropped = tuple(int(b - a) for a, b in bbox)[::-1]
    steps.append(Cropped(start, shape, affine))
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    steps.append(Resampled(cropped, affine, rule))
    out_shape = tuple(int(n) for n in network_shape)[::-1]
    scale = np.asarray(cropped, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    to_cropped = np.eye(4)  # nnU-Net's centre-aligned grids: i -> (i + 0.5) s - 0.5
    to_cropped[:3, :3] = np.diag(scale)
    to_cropped[:3, 3] = 0.5 * scale - 0.5
    return History(image.spatial_shape, image.affine, out_shape, affine @ to_cropped,
                   tuple(steps), activation)
