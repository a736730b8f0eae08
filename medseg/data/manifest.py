"""Dataset manifests: which image and label files make up a dataset, and their label names.

Two forms are read (see ``data_manifests/README.md``):

* the Medical Segmentation Decathlon ``dataset.json`` as MONAI and nnU-Net
  read it: a ``training`` list of ``{"image": ..., "label": ...}``, optional
  ``validation`` (same form) and ``test`` (paths or ``{"image": ...}``),
  ``labels`` either ``{"0": "background", "1": "liver"}`` (MSD) or
  ``{"background": 0, "liver": 1}`` (nnU-Net v2), and ``modality`` (MSD) or
  ``channel_names`` (nnU-Net v2). An nnU-Net v2 file without a ``training``
  list is expanded from ``imagesTr/<case>_<XXXX><file_ending>`` and
  ``labelsTr/<case><file_ending>``;
* a CSV with the header ``image,label,split`` (``split`` optional:
  ``train``, ``val`` or ``test``; ``case_id`` optional). Several channel files
  of one case are joined with ``;`` in the ``image`` column.

A case whose image is one DICOM series or object holding several image stacks
(magnitude / phase, echoes, Dixon water / fat; :mod:`medseg.io.dicom.stacks`)
names the one to read: an optional ``stack`` column in the CSV, a ``"stack"``
key in a ``dataset.json`` entry. A stack is a number from 1 or a name
(``phase``, ``echo2``, ``water``); several (``water;fat`` in the CSV, a list in
JSON) are the case's channels, in that order.

Relative paths are resolved against the manifest's folder.
:func:`validate_manifest` checks every case and returns every problem found,
each with its fix.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, MedsegError, check_option, closest
from medseg.io.cases import Case, case_name, label_names_from_mapping, read_case_image
from medseg.io.cases import read_label_names
from medseg.volume import Volume

__all__ = [
    "Manifest",
    "Problem",
    "load_manifest",
    "read_case",
    "read_case_label",
    "validate_manifest",
]

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class Manifest:
    """A dataset: its cases, label names (value -> name, 0 = background) and channel names."""

    path: Path
    cases: list[Case]
    label_names: dict[int, str]
    channel_names: list[str] = field(default_factory=lambda: ["image"])

    def split(self, name: str) -> list[Case]:
        """Cases of one split (``train``, ``val`` or ``test``)."""
        check_option(name, SPLITS, "split")
        return [c for c in self.cases if c.split == name]

    @property
    def num_classes(self) -> int:
        """Classes including background: max label value + 1."""
        return max(self.label_names) + 1 if self.label_names else 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one case, and how to fix it."""

    case_id: str
    path: Path | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"[{self.case_id}] {where}{self.message} -> fix: {self.fix}"


#: Keys of a dataset.json entry and columns of a CSV manifest.
_ENTRY_KEYS = ("image", "label", "case_id", "stack")
_CSV_COLUMNS = ("image", "label", "split", "case_id", "stack")


# -- loading ----------------------------------------------------------------------------------
def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read an MSD/nnU-Net ``dataset.json`` or a CSV manifest (chosen by the extension)."""
    path = Path(path)
    if path.is_dir() and (path / "dataset.json").is_file():
        path = path / "dataset.json"
    if not path.is_file():
        raise ConfigError("manifest file does not exist (expected a dataset.json or a .csv)", path)
    if path.suffix.lower() == ".csv":
        return _load_csv(path)
    if path.suffix.lower() == ".json":
        return _load_json(path)
    raise ConfigError(f"manifest extension {path.suffix!r}: expected .json (MSD dataset.json) "
                      "or .csv (image,label,split)", path)


def _resolve(base: Path, value: Any, path: Path, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a file path string, got {value!r}", path)
    p = Path(value.strip())
    return p if p.is_absolute() else (base / p).resolve()


def _channel_names(doc: dict[str, Any]) -> list[str]:
    raw = doc.get("channel_names", doc.get("modality"))
    if isinstance(raw, dict) and raw:
        return [str(raw[k]) for k in sorted(raw, key=lambda k: int(k) if str(k).isdigit() else 0)]
    return ["image"]


def _entries(doc: dict[str, Any], key: str, split: str, base: Path, path: Path) -> list[Case]:
    cases = []
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise ConfigError(f"'{key}' must be a list of {{image, label}} entries", path)
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict) or "image" not in item:
            raise ConfigError(f"{where}: expected {{\"image\": ..., \"label\": ...}}, got {item!r}",
                              path)
        unknown = set(item) - set(_ENTRY_KEYS)
        if unknown:
            key0 = sorted(unknown)[0]
            hint = closest(key0, list(_ENTRY_KEYS))
            raise ConfigError(f"{where}: unknown key {key0!r}"
                              + (f"; did you mean {hint!r}?" if hint else ""), path)
        raw_images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        images = tuple(_resolve(base, v, path, f"{where}.image") for v in raw_images)
        label = item.get("label")
        label_path = None if label is None else _resolve(base, label, path, f"{where}.label")
        if split != "test" and label_path is None:
            raise ConfigError(f"{where}: a {split} case needs a 'label'", path)
        case_id = str(item.get("case_id") or case_name(images[0], strip_channel=True))
        stack = _stack_entry(item.get("stack"), images, path, where)
        cases.append(Case(case_id, images, label_path, split, stack, path, where))
    return cases


def _stack_entry(value: Any, images: tuple[Path, ...], path: Path, where: str
                 ) -> tuple[int | str, ...]:
    """The ``stack`` of an entry (a number from 1, a name, or a list of them: one per
    channel) as a tuple; empty when the entry names none.

    Raises
    ------
    ConfigError
        Not a positive integer, a name or a non-empty list of them, or named for a case of
        several image files (stacks are of one DICOM input), naming the manifest and entry.
    """
    if value is None or value == "":
        return ()
    values = value if isinstance(value, list) else [value]
    good = values and all(
        (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
        or (isinstance(v, str) and v.strip()) for v in values)
    if not good:
        raise ConfigError(f"{where}: stack {value!r}: expected a stack number from 1, a name "
                          "('phase', 'echo2', 'water') or a list of them (one per channel)", path)
    if len(images) != 1:
        raise ConfigError(f"{where}: stack {value!r} picks stacks of one DICOM input; this case "
                          f"lists {len(images)} image files (one per channel)", path)
    return tuple(v.strip() if isinstance(v, str) else v for v in values)


def _nnunet_v2_cases(doc: dict[str, Any], base: Path, n_channels: int) -> list[Case]:
    ending = str(doc.get("file_ending", ".nii.gz"))
    cases = []
    for label in sorted((base / "labelsTr").glob(f"*{ending}")):
        case_id = label.name[: -len(ending)]
        images = tuple(base / "imagesTr" / f"{case_id}_{c:04d}{ending}" for c in range(n_channels))
        cases.append(Case(case_id, images, label, "train"))
    for image in sorted((base / "imagesTs").glob(f"*_0000{ending}")):
        case_id = image.name[: -len(f"_0000{ending}")]
        images = tuple(base / "imagesTs" / f"{case_id}_{c:04d}{ending}" for c in range(n_channels))
        cases.append(Case(case_id, images, None, "test"))
    return cases


def _load_json(path: Path) -> Manifest:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid JSON: {exc}", path) from exc
    if not isinstance(doc, dict):
        raise ConfigError("a dataset.json is a JSON object with 'training' and 'labels'", path)
    if "labels" not in doc:
        raise ConfigError("dataset.json lacks 'labels' (value -> name of every label)", path)
    base = path.resolve().parent
    labels = label_names_from_mapping(doc["labels"], path)
    channels = _channel_names(doc)
    if "training" in doc:
        cases = (_entries(doc, "training", "train", base, path)
                 + _entries(doc, "validation", "val", base, path)
                 + _entries(doc, "test", "test", base, path))
    elif "file_ending" in doc or "channel_names" in doc:
        cases = _nnunet_v2_cases(doc, base, len(channels))
    else:
        raise ConfigError("dataset.json lacks a 'training' list of {image, label}", path)
    if not cases:
        raise ConfigError("manifest lists no cases", path)
    return Manifest(path, cases, labels, channels)


def _load_csv(path: Path) -> Manifest:
    base = path.resolve().parent
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "image" not in columns:
            hint = closest(columns[0], ["image"]) if columns else None
            raise ConfigError(f"CSV header {columns}: expected columns image,label[,split]"
                              + (f"; did you mean 'image' for {columns[0]!r}?" if hint else ""),
                              path)
        for col in columns:
            if col not in _CSV_COLUMNS:
                hint = closest(col, list(_CSV_COLUMNS))
                raise ConfigError(f"unknown CSV column {col!r}"
                                  + (f"; did you mean {hint!r}?" if hint else ""), path)
        cases = []
        for row_no, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            where = f"row {row_no}"
            split = row.get("split") or "train"
            check_option(split, SPLITS, f"split in {where}", ConfigError, path)
            images = tuple(_resolve(base, v, path, f"{where} image")
                           for v in row["image"].split(";"))
            label = (_resolve(base, row["label"], path, f"{where} label") if row.get("label")
                     else None)
            if split != "test" and label is None:
                raise ConfigError(f"{where}: a {split} case needs a label", path)
            case_id = row.get("case_id") or case_name(images[0], strip_channel=True)
            stack = [v.strip() for v in row.get("stack", "").split(";")] if row.get("stack") \
                else None
            stack = _stack_entry(stack, images, path, where)
            cases.append(Case(case_id, images, label, split, stack, path, where))
    if not cases:
        raise ConfigError("manifest lists no cases", path)
    labels_file = path.with_suffix(".labels.json")
    labels = read_label_names(labels_file) if labels_file.is_file() else {}
    return Manifest(path, cases, labels, ["image"])


# -- reading and validating cases ---------------------------------------------------------------
def read_case(case: Case) -> tuple[Volume, Volume | None]:
    """Read a case: image as (C, x, y, z) channel-first Volume, label (x, y, z) or None.

    The image is read by :func:`medseg.io.cases.read_case_image` (several
    channel files must share one grid, else GeometryError naming the file).
    """
    image = read_case_image(case)
    return image, None if case.label is None else read_case_label(case)


def read_case_label(case: Case) -> Volume:
    """The label map of ``case``: its label file, or a DICOM-SEG / RTSTRUCT read onto the
    case's image (a DICOM series folder) as reference (:func:`medseg.io.labels.read_labels`)."""
    from medseg.io import read_volume
    from medseg.io.labels import is_dicom_labels, read_labels

    if case.label is not None and is_dicom_labels(case.label):
        return read_labels(case.label, reference=case.images[0])
    return read_volume(case.label)


def validate_manifest(manifest: Manifest) -> list[Problem]:
    """Check every case; return every problem (empty list: the dataset is usable).

    Checks: files exist and are readable (with the stacks a case names), channel files
    share a grid, the channel count matches ``channel_names``, image and label share a grid
    (:meth:`Volume.same_grid`), label values are integers listed in ``labels``.
    """
    problems: list[Problem] = []
    for case in manifest.cases:
        problems.extend(_check_case(case, manifest))
    return problems


def _check_case(case: Case, manifest: Manifest) -> list[Problem]:
    from medseg.io import read_volume

    folder = manifest.path.parent
    found = []
    for path in [*case.images, *([case.label] if case.label else [])]:
        if not path.exists():
            found.append(Problem(case.case_id, path, "file does not exist",
                                 f"correct the path in {manifest.path.name} (relative paths are "
                                 f"resolved against {folder}) or add the file"))
    if found:
        return found
    vols: dict[Path, Volume] = {}
    for path in [*case.images, *([case.label] if case.label else [])]:
        try:
            vols[path] = (read_case_label(case) if path == case.label
                          else read_case_image(case) if case.stack else read_volume(path))
        except MedsegError as exc:
            fix = (f"name one of the stacks listed in the 'stack' of {manifest.path.name}"
                   if case.stack and "stack" in exc.message else
                   "re-export it as NIfTI (.nii.gz), NRRD or MHA, or replace it")
            found.append(Problem(case.case_id, path, f"cannot be read: {exc.message}", fix))
    if found:
        return found
    first = vols[case.images[0]]
    for path in case.images[1:]:
        if not vols[path].same_grid(first):
            found.append(Problem(case.case_id, path,
                                 f"channel grid {_grid(vols[path])} differs from "
                                 f"{case.images[0].name} {_grid(first)}",
                                 "register/resample all channels onto one grid"))
    n_channels = sum(v.shape[0] if v.has_channels else 1 for p, v in vols.items()
                     if p in case.images)
    if len(manifest.channel_names) > 1 and n_channels != len(manifest.channel_names):
        found.append(Problem(case.case_id, case.images[0],
                             f"{n_channels} image channel(s), manifest names "
                             f"{len(manifest.channel_names)} ({', '.join(manifest.channel_names)})",
                             "list one image file per channel, or correct channel_names"))
    if case.label is not None:
        found.extend(_check_label(case, first, vols[case.label], manifest))
    return found


def _grid(vol: Volume) -> str:
    sp = "x".join(f"{s:.3g}" for s in vol.spacing_mm)
    org = ", ".join(f"{o:.1f}" for o in vol.origin_mm)
    return f"(shape {vol.spatial_shape}, spacing {sp} mm, origin ({org}) mm, {vol.orientation})"


def _check_label(case: Case, image: Volume, label: Volume, manifest: Manifest) -> list[Problem]:
    found = []
    if label.has_channels:
        found.append(Problem(case.case_id, case.label, f"label has channels, shape {label.shape}",
                             "save the label as one (x, y, z) integer map"))
        return found
    if not label.same_grid(image):
        found.append(Problem(case.case_id, case.label,
                             f"label grid {_grid(label)} differs from image grid {_grid(image)}",
                             "resample the label onto the image grid with nearest-neighbour "
                             "interpolation (or fix its header if only the affine is off)"))
    values = np.unique(np.asarray(label.array))
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.mod(values, 1) == 0):
        found.append(Problem(case.case_id, case.label,
                             "label holds non-integer values (interpolated?)",
                             "re-create it with nearest-neighbour interpolation"))
        return found
    if manifest.label_names:
        unknown = sorted(int(v) for v in values if int(v) not in manifest.label_names)
        if unknown:
            known = ", ".join(str(k) for k in manifest.label_names)
            found.append(Problem(case.case_id, case.label,
                                 f"label values {unknown} are not in the manifest's labels "
                                 f"({known})",
                                 f"add them to 'labels' in {manifest.path.name} or remap them "
                                 "in the label file"))
    return found
