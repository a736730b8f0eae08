"""Post-processing of predicted label maps.

``keep_largest_component`` keeps, for each label, only its largest connected
component (voxels of smaller components become background, 0). It removes the
small false-positive islands that inflate HD95 for organs that are one piece
(liver, spleen, each kidney, the aorta); do not use it for labels that may have
several parts (lesions, vessels that leave the field of view and come back).

Written here rather than taken from MONAI (``KeepLargestConnectedComponent``),
which works on whole-volume one-hot tensors: this version labels each class
only inside its bounding box (``scipy.ndimage.find_objects``), so its memory is
one box at a time, never (K, x, y, z).

``remove_small_components`` removes, per label, the components under a volume in mL
(islands of false positives of structures that may have several true parts).

``apply_postprocess`` applies a model card's :class:`~medseg.card.Postprocess` (every
label, none, or the listed labels only; the minimum sizes). :func:`label_components` is
the one labelling of components all of them (and :mod:`medseg.crossval`) use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from medseg.card import Postprocess
from medseg.errors import UsageError

__all__ = ["apply_postprocess", "keep_largest_component", "keep_largest_of_union",
           "label_components",
           "remove_small_components", "voxel_ml"]


def keep_largest_component(
    labels: np.ndarray, only: Iterable[int] | None = None, connectivity: int = 1
) -> np.ndarray:
    """Keep the largest connected component of each label; other voxels of it become 0.

    Parameters
    ----------
    labels : (x, y, z) integer label map (0 = background).
    only : labels to filter (default: every non-zero label); others are untouched.
    connectivity : 1 = face neighbours (6 in 3D), 2 = faces and edges (18),
        3 = faces, edges and corners (26).

    Returns
    -------
    A new array, same shape and dtype. Among components of equal size, the one
    met first in C order is kept.

    Examples
    --------
    >>> m = np.zeros((6, 1, 1), np.uint8); m[0:1, 0, 0] = 2; m[2:5, 0, 0] = 2
    >>> keep_largest_component(m)[:, 0, 0].tolist()
    [0, 0, 2, 2, 2, 0]
    """
    out = labels.copy()
    for _value, box, components, count in label_components(labels, only, connectivity):
        if count < 2:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[box][(components > 0) & (components != int(np.argmax(sizes)))] = 0
    return out


def label_components(labels: np.ndarray, only: Iterable[int] | None = None,
                     connectivity: int = 1
                     ) -> Iterator[tuple[int, tuple[slice, ...], np.ndarray, int]]:
    """The connected components of each label present in ``labels``, one label at a time.

    Yields ``(value, box, components, count)``: ``box`` the label's bounding box (slices),
    ``components`` an int array of the box's shape numbering the label's components 1 ..
    ``count`` in C order of their first voxel (0 elsewhere). ``only`` and ``connectivity``
    as in :func:`keep_largest_component`. Memory: one box at a time.
    """
    from scipy import ndimage

    if labels.ndim != 3 or labels.dtype.kind not in "iub":
        raise UsageError(f"labels must be a 3D integer array, got {labels.dtype} {labels.shape}")
    if connectivity not in (1, 2, 3):
        raise UsageError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    wanted = None if only is None else {int(v) for v in only}
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or (wanted is not None and value not in wanted):
            continue
        components, count = ndimage.label(labels[box] == value, structure)
        yield value, box, components, int(count)


def voxel_ml(spacing_mm: Sequence[float]) -> float:
    """Volume of one voxel in mL (cm^3) from its spacing (x, y, z) in mm."""
    return float(np.prod(np.asarray(spacing_mm, np.float64))) / 1000.0


def remove_small_components(labels: np.ndarray, min_size_ml: Mapping[int, float],
                            spacing_mm: Sequence[float], connectivity: int = 1) -> np.ndarray:
    """Set to 0 the connected components of label ``v`` smaller than ``min_size_ml[v]`` mL.

    Parameters
    ----------
    labels : (x, y, z) integer label map (0 = background).
    min_size_ml : label value -> smallest kept component volume, mL; other labels untouched.
    spacing_mm : voxel spacing (x, y, z), mm; a component of n voxels is
        ``n * prod(spacing_mm) / 1000`` mL.
    connectivity : as in :func:`keep_largest_component`.

    Returns
    -------
    A new array, same shape and dtype.

    Examples
    --------
    >>> m = np.array([1, 0, 1, 1, 0, 1, 1, 1], np.uint8).reshape(8, 1, 1)
    >>> remove_small_components(m, {1: 0.002}, (1.0, 1.0, 1.0))[:, 0, 0].tolist()  # 1 mm^3
    [0, 0, 1, 1, 0, 1, 1, 1]
    """
    if len(spacing_mm) != 3 or not all(float(s) > 0 for s in spacing_mm):
        raise UsageError(f"spacing_mm must be three positive numbers (mm), got {spacing_mm!r}")
    per_voxel = voxel_ml(spacing_mm)
    out = labels.copy()
    for value, box, components, count in label_components(labels, min_size_ml, connectivity):
        sizes = np.bincount(components.ravel(), minlength=count + 1) * per_voxel
        small = np.flatnonzero(sizes < min_size_ml[value])
        small = small[small > 0]
        if small.size:
            out[box][np.isin(components, small)] = 0
    return out


def keep_largest_of_union(labels: np.ndarray, group: Sequence[int]) -> np.ndarray:
    """nnU-Net's ``remove_all_but_largest_component`` step: the voxels whose label is in
    ``group`` form one mask; all but its largest 26-connected component(s) (ties all kept)
    become 0. Returns a new array (x, y, z), same dtype.

    >>> m = np.array([1, 2, 0, 2, 0, 1, 1, 1], np.uint8).reshape(8, 1, 1)
    >>> keep_largest_of_union(m, (1, 2))[:, 0, 0].tolist()
    [0, 0, 0, 0, 0, 1, 1, 1]
    """
    from scipy import ndimage

    mask = np.isin(labels, list(group))
    components, count = ndimage.label(mask, structure=np.ones((3,) * labels.ndim, bool))
    out = labels.copy()
    if count < 2:
        return out
    sizes = np.bincount(components.ravel())[1:]
    keep = np.flatnonzero(sizes == sizes.max()) + 1
    out[mask & ~np.isin(components, keep)] = 0
    return out


def apply_postprocess(labels: np.ndarray, post: Postprocess,
                      spacing_mm: Sequence[float] | None = None) -> np.ndarray:
    """``labels`` (x, y, z) after the card's post-processing (a new array, or ``labels``
    itself when there is nothing to do): nnU-Net's union steps (``largest_of``), then
    components under the minimum sizes removed, then the largest component kept. ``spacing_mm`` (x, y, z; mm) is needed for the minimum sizes.

    Examples
    --------
    >>> m = np.array([1, 0, 1, 1, 0, 2, 0, 2], np.uint8).reshape(8, 1, 1)
    >>> apply_postprocess(m, Postprocess(keep_largest=(1,)))[:, 0, 0].tolist()
    [0, 0, 1, 1, 0, 2, 0, 2]
    """
    for group in post.largest_of:
        labels = keep_largest_of_union(labels, group)
    if post.min_size_ml:
        if spacing_mm is None:
            raise UsageError(f"post-processing {post.to_dict()} removes components by volume: "
                             "give spacing_mm (the label map's voxel spacing in mm)")
        labels = remove_small_components(labels, post.min_size_ml, spacing_mm)
    only = post.largest_only
    if only == ():
        return labels
    return keep_largest_component(labels, only=only)
