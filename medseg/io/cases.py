"""Cases: naming, finding and reading the image files of a case, and label-name files.

One home for what manifests, prediction, evaluation, the report and the demo
share:

* :class:`Case`: a case name, its image file(s) (one per channel, one
  multi-channel file, or one DICOM series folder), its label map and split;
* :func:`case_name`: the name of a case from its file, over the one extension
  table :data:`medseg.io.formats.SUPPORTED_EXTENSIONS` (``.nii.gz``, ``.nii``,
  ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``);
* :func:`images_by_case`, :func:`find_case_file`: the image files of a
  folder by case name (the cases an input path describes, manifests included,
  are listed by :func:`medseg.data.inputs.list_cases`);
* :data:`SIDE_OUTPUTS`, :func:`side_output_name`: the names of what ``medseg predict``
  writes beside a case's label map (``<case>_probabilities.nii.gz``,
  ``<case>_uncertainty.nii.gz``), which a folder of predictions must not take for cases;
* :func:`read_case_image`: a case's image as one (C, x, y, z) volume;
* :func:`read_label_names` / :func:`label_names_from_mapping`: the one parser
  of label names, ``{"1": "liver"}`` (MSD) or ``{"liver": 1}`` (nnU-Net v2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, DataError, GeometryError, ImageReadError, UsageError
from medseg.io.formats import (
    SUPPORTED_EXTENSIONS,
    extension_of,
    is_dicom_file,
    is_image_path,
)
from medseg.volume import Volume

__all__ = [
    "Case",
    "case_name",
    "images_by_case",
    "side_output_name",
    "SIDE_OUTPUTS",
    "pair_folders",
    "find_case_file",
    "read_case_image",
    "read_label_names",
    "label_names_from_mapping",
    "label_names_of",
]

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net: case_0000.nii.gz is channel 0 of "case"

#: What ``medseg predict`` writes beside a case's label map, by the suffix of its name.
SIDE_OUTPUTS = ("probabilities", "uncertainty")


@dataclass(frozen=True)
class Case:
    """One case: its name, image(s), label map and split.

    ``images`` holds one path (a file, possibly multi-channel, a DICOM series
    folder, or one DICOM file standing for its series) or one file per channel,
    all on one grid. ``label`` is the (x, y, z) label map, None for cases to
    predict. ``split``: ``train``, ``val`` or ``test``. ``stack``: the image
    stack(s) of a DICOM input that holds several, as a manifest names them (a
    number from 1 or a name; several are the channels, in order); empty for the
    input's only stack. ``manifest`` and ``entry`` say where a manifest lists the
    case (``"row 3"``, ``"training[2]"``), for error messages; None and "" otherwise.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    split: str = "train"
    stack: tuple[int | str, ...] = ()
    manifest: Path | None = None
    entry: str = ""

    @property
    def is_dicom(self) -> bool:
        """True when the image is one DICOM series folder or one DICOM file."""
        return len(self.images) == 1 and (self.images[0].is_dir() or
                                          is_dicom_file(self.images[0]))


# -- naming -----------------------------------------------------------------------------------
def case_name(path: str | os.PathLike, strip_channel: bool = False) -> str:
    """File name without its image extension: ``ct_001.nii.gz`` -> ``ct_001``.

    A folder (DICOM series) or a name without a supported extension keeps its
    whole name. ``strip_channel`` also drops an nnU-Net channel suffix
    (``ct_001_0000.nii.gz`` -> ``ct_001``).

    >>> case_name("a/ct_001.nii.gz"), case_name("b_0001.mhd", strip_channel=True)
    ('ct_001', 'b')
    """
    name = Path(path).name
    ext = extension_of(name)
    stem = name[: -len(ext)] if ext else name
    return _CHANNEL_SUFFIX.sub("", stem) if strip_channel and ext else stem


def side_output_name(case: str, kind: str) -> str:
    """The case name of ``case``'s side output ``kind`` (:data:`SIDE_OUTPUTS`):
    ``side_output_name("ct_1", "uncertainty") == "ct_1_uncertainty"``."""
    if kind not in SIDE_OUTPUTS:
        raise UsageError(f"side output {kind!r}: expected one of {', '.join(SIDE_OUTPUTS)}")
    return f"{case}_{kind}"


def _without_side_outputs(found: dict[str, Path]) -> dict[str, Path]:
    """``found`` less the side outputs of its cases (``<case>_<kind>`` beside ``<case>``)."""
    side = {side_output_name(case, kind) for case in found for kind in SIDE_OUTPUTS}
    return {case: path for case, path in found.items() if case not in side}


def images_by_case(folder: str | os.PathLike, strip_channel: bool = False,
                   predictions: bool = False) -> dict[str, Path]:
    """The image files of ``folder`` keyed by :func:`case_name`, in sorted name order.

    Hidden files and files without a supported extension are skipped; with
    ``predictions`` (a folder ``medseg predict`` wrote) so are the side outputs
    (:data:`SIDE_OUTPUTS`) of its cases.

    Raises
    ------
    DataError
        Two files give one case name (e.g. ``a.nii`` and ``a.nii.gz``); names both.
    """
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        if not (path.is_file() and is_image_path(path)):
            continue
        case = case_name(path, strip_channel)
        if case in found:
            raise DataError(f"two images for case {case!r}: {found[case].name} and {path.name}",
                            folder)
        found[case] = path
    return _without_side_outputs(found) if predictions else found


def pair_folders(
    first: str | os.PathLike,
    second: str | os.PathLike,
    what: tuple[str, str],
    *,
    strip_channel: bool = False,
    missing_first: bool = False,
    predictions: bool = False,
) -> list[tuple[str, Path | None, Path]]:
    """The cases of two folders paired by case name: ``(case, first's file, second's file)``.

    Parameters
    ----------
    first, second : folders of image files (:func:`images_by_case`).
    what : what each folder holds, with its article, for messages
        (``("a prediction", "a ground truth")``).
    strip_channel : the first folder's files may carry nnU-Net's ``_0000`` channel suffix.
    missing_first : a case of ``second`` without a file in ``first`` pairs with None
        instead of being an error.
    predictions : ``first`` is a folder of ``medseg predict``: its side outputs
        (probabilities, uncertainty maps) are not cases.

    Returns
    -------
    One tuple per case of ``second``, in case-name order.

    Raises
    ------
    ImageReadError : ``second`` holds no image files.
    UsageError : unpaired cases, every one listed, on each side.
    """
    firsts = images_by_case(first, strip_channel=strip_channel, predictions=predictions)
    seconds = images_by_case(second)
    if not seconds:
        raise ImageReadError("folder holds no image files", second)
    no_second = sorted(set(firsts) - set(seconds))
    no_first = [] if missing_first else sorted(set(seconds) - set(firsts))
    if no_first or no_second:
        parts = [f"{len(names)} without {name} in {folder}: {', '.join(names)}"
                 for names, name, folder in ((no_first, what[0], first),
                                             (no_second, what[1], second)) if names]
        raise UsageError("unpaired cases: " + "; ".join(parts))
    return [(case, firsts.get(case), seconds[case]) for case in sorted(seconds)]


def find_case_file(folder: str | os.PathLike, case: str) -> Path:
    """The image file of ``case`` in ``folder``: ``<case>.<ext>``, else ``<case>_0000.<ext>``.

    Files are matched as :func:`images_by_case` lists them (any extension of
    the one table, in any letter case), so every case evaluation paired is found.

    Raises
    ------
    ImageReadError
        No such file; the message lists the names tried.
    DataError
        As :func:`images_by_case`.
    """
    images = images_by_case(folder)
    for name in (case, f"{case}_0000"):
        if name in images:
            return images[name]
    tried = ", ".join(f"{case}{ext}" for ext in SUPPORTED_EXTENSIONS)
    raise ImageReadError(f"no file for case {case!r} (tried {tried}, and {case}_0000 with each "
                         "extension)", folder)


# -- reading ----------------------------------------------------------------------------------
def read_case_image(
    case: Case,
    series: str | None = None,
    *,
    tilt: bool = True,
    stack: int | str | Sequence[int | str] | None = None,
) -> Volume:
    """The image of ``case`` as one channel-first (C, x, y, z) Volume.

    One file gives its own channels (C = 1 for a 3D file); one DICOM folder
    is read with ``series`` (a SeriesInstanceUID, when it holds several; a
    single file refuses it); one file per channel are concatenated in order.
    ``tilt``: resample a gantry-tilted DICOM series (True) or refuse it.
    ``stack``: the image stack of a DICOM input holding several (a number from 1
    or a name, :func:`medseg.io.read_volume`), or a sequence of them: one
    channel each, in the order given (``--stack water --stack fat``). A case whose
    manifest names its stack(s) (``case.stack``) is read with those.
    The affine and ``meta`` are those of the first file (or stack); for a DICOM
    input ``meta["channel_stacks"]`` holds ``(label, names)`` of each channel's
    stack (:class:`medseg.io.dicom.stacks.StackInfo`), which the model's channel
    names are checked against.

    Raises
    ------
    GeometryError
        A channel file is not on the grid of the first one (names the file).
    ImageReadError, UsageError
        As :func:`medseg.io.read_volume`; a stack the manifest names that the input
        lacks names the manifest, the entry and the stacks there are; ``stack`` given
        for a case whose manifest names its own, or for a case of one file per channel.
    """
    from medseg.io import read_volume

    stacks = _stacks_of(case, stack)
    if len(case.images) == 1:  # a file refuses series= (UsageError), a DICOM folder uses it
        try:
            vols = [read_volume(case.images[0], series=series, tilt=tilt, stack=s)
                    for s in stacks]
        except UsageError as exc:
            if not case.stack:
                raise
            raise _in_manifest(case, exc) from None
        if len(vols) == 1:
            image = _channel_first(vols[0])
        else:
            channels = [f"stack {s!r}" for s in stacks]
            image = _concatenate(vols, channels, case.images[0], channels[0])
        if all("stack_names" in v.meta for v in vols):
            image.meta["channel_stacks"] = [(v.meta["stack"], v.meta["stack_names"])
                                            for v in vols]
        return image
    if stacks != [None]:
        raise UsageError(f"stack={stacks!r} picks stacks of one DICOM input; this case has one "
                         f"file per channel", case.images[0])
    vols = [read_volume(p) for p in case.images]
    return _concatenate(vols, list(case.images), None, case.images[0].name)


def _stacks_of(case: Case, stack: int | str | Sequence[int | str] | None) -> list:
    """The stacks to read, one per channel (``[None]``: the input's only or own stack)."""
    given = [] if stack is None else [stack] if isinstance(stack, (int, str)) else list(stack)
    if case.stack and given:
        raise UsageError(f"case {case.case_id!r} names its stack(s) {list(case.stack)} in "
                         f"{case.manifest} ({case.entry}) and --stack (stack=) gives "
                         f"{given}: give them in one place", case.images[0])
    return list(case.stack) or given or [None]


def _in_manifest(case: Case, exc: UsageError) -> UsageError:
    """``exc`` (a stack the input lacks) as said of the manifest entry that names it."""
    what = f"{exc.path}: " if exc.path else ""
    return UsageError(f"{case.entry} (case {case.case_id!r}): {what}"
                      f"{exc.message.removeprefix('--')}", case.manifest)


def _concatenate(vols: list[Volume], names: list, source, first: str) -> Volume:
    """Channels of ``vols`` in order; each must be on the grid of the first."""
    import numpy as np

    for name, vol in zip(names, vols):
        if not vol.same_grid(vols[0]):
            raise GeometryError(f"channel {name} is not on the grid of {first}"
                                if source is not None else
                                f"channel file is not on the grid of {first}",
                                source if source is not None else name)
    arrays = [_channel_first(vol).array for vol in vols]
    return Volume(np.concatenate(arrays, axis=0), vols[0].affine, vols[0].meta)


def _channel_first(volume: Volume) -> Volume:
    return volume if volume.has_channels else volume.with_array(volume.array[None])


# -- label names ------------------------------------------------------------------------------
def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """``{label value: name}`` from a JSON label-name file.

    Accepted: ``{"1": "liver"}`` (MSD), ``{"liver": 1}`` or ``{"liver": "1"}``
    (nnU-Net v2), or a JSON object whose ``"labels"`` holds either form (an
    MSD or nnU-Net ``dataset.json``).

    **Background rule**: the result always contains label 0, named as the
    file names 0 when it does, else ``"background"``. Callers that want the
    foreground labels skip 0.

    Raises
    ------
    ImageReadError
        The file does not exist (names it).
    ConfigError
        Not JSON, not an object, region labels (nnU-Net lists of values), or a
        negative / non-integer label value (names the file and the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError("labels file does not exist (expected a JSON file such as "
                             '{"1": "liver"} or a dataset.json)', path)
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"labels file is not valid JSON: {exc}", path) from None
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    return label_names_from_mapping(data, path)


def label_names_of(labels: Any) -> dict[int, str] | None:
    """The ``labels`` argument that evaluate and stats take, as ``{value: name}``:
    None stays None (every label found); a path is a label-name file
    (:func:`read_label_names`); a mapping is parsed like one
    (:func:`label_names_from_mapping`); a list of values gets empty names."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        return read_label_names(labels)
    if isinstance(labels, Mapping):
        return label_names_from_mapping(labels)
    return {int(k): "" for k in labels}


def label_names_from_mapping(raw: Any, path: str | os.PathLike | None = None) -> dict[int, str]:
    """Parse ``{"1": "liver"}`` or ``{"liver": 1}`` into ``{1: "liver"}`` (0 always present).

    ``raw`` is the decoded JSON object (or a Python mapping with int keys);
    ``path`` is the file named in errors. The background rule is that of
    :func:`read_label_names`. Returns the names sorted by label value.

    Raises
    ------
    ConfigError
        ``raw`` is not a non-empty mapping, an entry is a region (a list of
        values), a label value is negative or not an integer, or one value has
        two names.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError('label names: expected a JSON object such as {"1": "liver"} or '
                          '{"liver": 1}, or a dataset.json with a "labels" object, got '
                          f"{_short(raw)}", path)
    names: dict[int, str] = {}
    for key, value in raw.items():
        label, name = _label_entry(key, value, path)
        if names.get(label, name) != name:
            raise ConfigError(f"labels entry {key!r}: label {label} is already named "
                              f"{names[label]!r}", path)
        names[label] = name
    names.setdefault(0, "background")
    return dict(sorted(names.items()))


def _label_entry(key: Any, value: Any, path: str | os.PathLike | None) -> tuple[int, str]:
    """(value, name) of one entry, ``"1": "liver"`` or ``"liver": 1``."""
    if isinstance(value, list):
        raise ConfigError(f"labels entry {key!r}: {value} is a region (a list of label values); "
                          "regions are not supported here: give each label value its own name",
                          path)
    key_int, value_int = _integer(key), _integer(value)
    msd = isinstance(value, str) and key_int is not None
    if msd and (value_int is None or isinstance(key, int)):  # {1: "2"} in Python is MSD
        label, name = key_int, value
    elif value_int is not None:
        label, name = value_int, str(key)
    else:
        raise ConfigError(f"labels entry {key!r}: {value!r} is neither 'value': 'name' (MSD) "
                          "nor 'name': value (nnU-Net v2) with an integer label value", path)
    if label < 0:
        raise ConfigError(f"labels entry {key!r}: label value {label} is negative; label values "
                          "are integers >= 0 (0 = background)", path)
    return label, name


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is an int or an integer string ("-2" too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
