"""Image stacks: the 3D volumes a DICOM series or object holds, and how a user picks one.

Scanners put more than one volume into what looks like one input: a series
whose files repeat the same slice positions as magnitude and phase, as several
echoes or as Dixon water / fat / in-phase / opposed-phase images; an enhanced
multi-frame object whose frames are two stacks at the same positions (Philips
field maps); several objects or mosaics sharing a SeriesInstanceUID (one time
point each). A **stack** is one of those volumes: image planes at distinct
positions of one geometry.

Each image plane is a :class:`Member` (a single-frame file, a frame of a
multi-frame object, or a whole Siemens mosaic) with the attributes that tell
stacks apart (:data:`ATTRIBUTES`, in the order they name a stack):

============  =================================================================
attribute     from
============  =================================================================
series        SeriesNumber (files that share a SeriesInstanceUID, as an
              anonymiser or ``dcmodify`` leaves them)
type          ImageType (FrameType per frame): M / P, WATER / FAT / IN_PHASE /
              OPP_PHASE, FIELD_MAP, ...
component     ComplexImageComponent of a frame (MAGNITUDE, PHASE, REAL, ...)
echo          EchoNumbers (a file), the rank of EffectiveEchoTime (a frame)
bvalue        the diffusion b-value (s/mm^2): DiffusionBValue (a file; of the
              MRDiffusionSequence for a frame), B_value of a Siemens mosaic's
              CSA header
temporal      TemporalPositionIdentifier (a file), TemporalPositionIndex (a frame)
dimension     the other values of a frame's DimensionIndexValues (in-stack
              position left out); private dimensions such as Philips' image type
acquisition   AcquisitionNumber, used only when the above leave positions repeated
syntax        the file's transfer syntax, used only when nothing above tells
              apart files repeating positions (one image saved in several syntaxes)
============  =================================================================

:func:`group_stacks` keeps the frames of one object (or a mosaic) together and
splits a group only when its positions repeat, so a series or object that read
as one volume before still does. Stacks are numbered from 1 and named by the
attributes that tell them apart (``magnitude``, ``phase``, ``echo2``, ``water``,
``b1000``, ``t3``, ``series7``); :func:`choose_stack` takes a number or a name, and an
input with several stacks and none chosen is refused in one line that lists them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import ImageReadError, UsageError, closest

__all__ = [
    "ATTRIBUTES", "FALLBACK", "Member", "StackInfo", "group_stacks", "choose_stack",
    "describe_stacks", "image_type", "own_stack", "slice_attributes", "type_names",
]

#: Attributes that split a group with repeated positions, in naming order.
ATTRIBUTES = ("series", "type", "component", "echo", "bvalue", "temporal", "dimension")
#: Used only when :data:`ATTRIBUTES` leave a stack with repeated positions.
FALLBACK = ("acquisition", "syntax")
#: The order in which attributes name stacks: a file's name before its transfer syntax.
_NAMING = ATTRIBUTES + ("acquisition", "file", "syntax")
#: Numbered attributes that order the stacks (then the order the input holds them in).
_ORDER = ("series", "echo", "bvalue", "temporal", "dimension", "acquisition")
#: Two planes closer than this along the slice normal (mm) share a position.
SAME_POSITION_MM = 0.01

#: ImageType / FrameType values with a readable name and the names ``--stack`` takes.
_TYPE_NAMES: dict[str, tuple[str, ...]] = {
    "M": ("magnitude", "mag", "m"), "MAGNITUDE": ("magnitude", "mag", "m"),
    "P": ("phase", "pha", "p"), "PHASE": ("phase", "pha", "p"),
    "R": ("real", "r"), "REAL": ("real", "r"),
    "I": ("imaginary", "imag", "i"), "IMAGINARY": ("imaginary", "imag", "i"),
    "W": ("water", "w"), "WATER": ("water", "w"),
    "F": ("fat", "f"), "FAT": ("fat", "f"),
    "IP": ("in_phase", "ip", "inphase"), "IN_PHASE": ("in_phase", "ip", "inphase"),
    "OP": ("opposed_phase", "op", "out_phase", "opp_phase"),
    "OUT_PHASE": ("opposed_phase", "op", "out_phase", "opp_phase"),
    "OPP_PHASE": ("opposed_phase", "op", "out_phase", "opp_phase"),
    "FIELD_MAP": ("field_map", "fieldmap", "b0"), "B0_MAP": ("field_map", "fieldmap", "b0"),
}
_TYPE_ORDER = list(dict.fromkeys(names[0] for names in _TYPE_NAMES.values()))


@dataclass(frozen=True)
class Member:
    """One image plane of an input: a single-frame file, a frame of an object, or a mosaic.

    Attributes
    ----------
    file : the file it is in.
    frame : 0-based frame index in a multi-frame object; None for a single-frame file.
    position : ImagePositionPatient (LPS mm), None for a mosaic (a whole volume).
    normal : the slice normal (LPS, unit), None for a mosaic.
    attributes : ``{name: value}`` for the names in :data:`ATTRIBUTES` and
        :data:`FALLBACK` (None where the file does not say).
    unit : the file whose members stay together (a multi-frame object or a
        mosaic); None for the single-frame files of a series.
    """

    file: str
    frame: int | None
    position: tuple[float, float, float] | None
    normal: tuple[float, float, float] | None
    attributes: dict = field(hash=False, compare=False)
    unit: str | None = None


@dataclass(frozen=True)
class StackInfo:
    """One stack of an input: its number, what distinguishes it, its members.

    Attributes
    ----------
    index : 1-based number (``--stack K``).
    label : what distinguishes it from the other stacks ("magnitude", "echo 2",
        "series 7 phase"; "" when it is the only one).
    names : lower-case names ``--stack NAME`` takes.
    members : its image planes, in input order.
    """

    index: int
    label: str
    names: tuple[str, ...]
    members: tuple[Member, ...]

    @property
    def files(self) -> tuple[str, ...]:
        """The distinct files of the stack, in member order."""
        return tuple(dict.fromkeys(m.file for m in self.members))

    @property
    def frames(self) -> tuple[int, ...] | None:
        """0-based frame indices when the stack is frames of one object, else None."""
        if self.members and all(m.frame is not None for m in self.members):
            return tuple(int(m.frame) for m in self.members)
        return None

    def __str__(self) -> str:
        count = len(self.members)
        what = "mosaic" if count == 1 and self.members[0].position is None else \
            f"{count} {'frames' if self.frames is not None else 'slices'}"
        return f"{self.index} {self.label or 'the image'} ({what})"


# -- attributes of a plane ----------------------------------------------------------------------
def image_type(value) -> tuple[str, ...]:
    """ImageType / FrameType as a tuple of upper-case values (a single string becomes one)."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values if str(v).strip())


def slice_attributes(header, b_value: float | None = None) -> dict:
    """The stack attributes of a single-frame file's (or a mosaic's) header, None where a
    tag is absent; ``b_value`` (s/mm^2, from a Siemens CSA header) where the header has no
    DiffusionBValue."""
    bvalue = _number(header.get("DiffusionBValue"))
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "series": _number(header.get("SeriesNumber")),
        "type": image_type(header.get("ImageType")) or None,
        "component": None,
        "echo": _number(header.get("EchoNumbers")),
        "bvalue": bvalue if bvalue is not None else _number(b_value),
        "temporal": _number(header.get("TemporalPositionIdentifier")),
        "dimension": None,
        "acquisition": _number(header.get("AcquisitionNumber")),
        "syntax": (syntax.keyword or str(syntax)) if syntax else None,
    }


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (int, float, str)):  # a multi-valued element: its first value
        value = list(value)[0] if len(value) else None
        if value is None:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else number


# -- grouping -----------------------------------------------------------------------------------
def group_stacks(members: Sequence[Member]) -> list[StackInfo]:
    """The stacks of ``members`` (see the module notes), numbered from 1 and named.

    Members of one unit (an object, a mosaic) never join another unit's; the
    single-frame files form one group. A group is split by the attributes in
    :data:`ATTRIBUTES` that vary within it only when its positions repeat, then
    by :data:`FALLBACK` when that is not enough; a group that still repeats
    positions stays whole (reading it names the problem).
    """
    groups: dict[str | None, list[Member]] = {}
    for member in members:
        groups.setdefault(member.unit, []).append(member)
    parts: list[list[Member]] = []
    for group in groups.values():
        parts.extend(_split(group))
    return _named(parts)


def _split(group: list[Member]) -> list[list[Member]]:
    if not _repeats(group):
        return [group]
    parts = _by(group, ATTRIBUTES)
    if any(_repeats(part) for part in parts):
        parts = _by(group, ATTRIBUTES + FALLBACK)
    return parts


def _by(group: list[Member], names: tuple[str, ...]) -> list[list[Member]]:
    """``group`` split by the attributes of ``names`` that vary in it, in :data:`_ORDER`."""
    varying = [n for n in names if len({_key(m.attributes.get(n)) for m in group}) > 1]
    parts: dict[tuple, list[Member]] = {}
    for member in group:
        parts.setdefault(tuple(_key(member.attributes.get(n)) for n in varying), []).append(member)
    ordered = [n for n in _ORDER if n in varying]

    def order(key: tuple) -> tuple:
        first = parts[key][0].attributes
        return tuple(_key(first.get(n)) for n in ordered) + (_type_rank(first.get("type")),
                                                              list(parts).index(key))

    return [parts[key] for key in sorted(parts, key=order)]


def _type_rank(kind: tuple[str, ...] | None) -> int:
    """Known image types in the order of :data:`_TYPE_NAMES` (magnitude, phase, ..., water,
    fat, in-phase, opposed-phase, field map), others after them."""
    names = [_TYPE_NAMES[v.replace(" ", "_")][0] for v in kind or ()
             if v.replace(" ", "_") in _TYPE_NAMES]
    return min((_TYPE_ORDER.index(n) for n in names), default=len(_TYPE_ORDER))


def _key(value) -> tuple:
    """A sort key for attribute values of any type (numbers, then text, then None)."""
    if value is None:
        return (4,)
    if isinstance(value, (int, float)):
        return (1, float(value))
    if isinstance(value, tuple):
        return (2, tuple(_key(v) for v in value))
    return (3, str(value))


def _repeats(group: list[Member]) -> bool:
    """True when two members share a position along the slice normal."""
    placed = [m for m in group if m.position is not None and m.normal is not None]
    if len(placed) < 2:
        return False
    along = np.sort(np.array([m.position for m in placed]) @ np.array(placed[0].normal))
    return bool(np.any(np.diff(along) <= SAME_POSITION_MM))


# -- names --------------------------------------------------------------------------------------
def _named(parts: list[list[Member]]) -> list[StackInfo]:
    if len(parts) == 1:
        return [StackInfo(1, "", ("1",), tuple(parts[0]))]
    values = [{n: _common(part, n) for n in ATTRIBUTES + FALLBACK} for part in parts]
    for value, part in zip(values, parts):
        value["file"] = Path(part[0].file).name if len({m.file for m in part}) == 1 else None
    varying = [n for n in _NAMING
               if len({_key(v[n]) for v in values}) > 1]
    types = [v["type"] or () for v in values]
    shown = _distinguishing(values, varying)
    stacks = []
    for index, (value, part, kind) in enumerate(zip(values, parts, types), start=1):
        labels = [_label(n, value[n], kind, types) for n in shown]
        names = {str(index)}
        for n in varying:
            if n in shown or n not in ("dimension", "acquisition", "syntax"):
                names.update(_names(n, value[n], kind, types))
        label = " ".join(label for label in labels if label)
        names.update({label.lower(), label.lower().replace(" ", "_")} - {""})
        stacks.append(StackInfo(index, label, tuple(sorted(names)), tuple(part)))
    return stacks


def _common(part: list[Member], name: str):
    values = {_key(m.attributes.get(name)): m.attributes.get(name) for m in part}
    return next(iter(values.values())) if len(values) == 1 else None


def _distinguishing(values: list[dict], varying: list[str]) -> list[str]:
    """The varying attributes that each tell more stacks apart than the ones before them."""
    shown: list[str] = []
    distinct = 1
    for name in varying:
        count = len({tuple(_key(v[n]) for n in shown + [name]) for v in values})
        if count > distinct:
            shown.append(name)
            distinct = count
        if distinct == len(values):
            break
    return shown


def type_names(kind: tuple[str, ...], all_kinds: Sequence[tuple[str, ...]]) -> list[str]:
    """Readable names of the ImageType values of ``kind`` that not every stack has."""
    common = set.intersection(*(set(k) for k in all_kinds)) if all_kinds else set()
    return [_TYPE_NAMES.get(v.replace(" ", "_"), (v.lower(),))[0] for v in kind if v not in common]


def _label(name: str, value, kind: tuple[str, ...], types) -> str:
    if value is None:
        return f"no {name}"
    if name == "type":
        return "_".join(type_names(kind, types)) or "type " + "\\".join(kind)
    if name == "component":
        return str(value).lower()
    if name == "dimension":
        return "dimension " + ",".join(str(v) for v in value)
    if name == "file":
        return str(value)
    if name in ("temporal", "bvalue"):
        return f"{'t' if name == 'temporal' else 'b'}{value}"
    return f"{name} {value}"


def _names(name: str, value, kind: tuple[str, ...], types) -> set[str]:
    if value is None:
        return set()
    if name == "type":
        common = set.intersection(*(set(k) for k in types))
        out = set()
        for v in kind:
            if v not in common:
                out.update(_TYPE_NAMES.get(v.replace(" ", "_"), (v.lower(),)))
        return out
    if name == "component":
        return set(_TYPE_NAMES.get(str(value).upper(), (str(value).lower(),)))
    if name == "file":
        return {str(value).lower(), Path(str(value)).stem.lower()}
    if name == "dimension":
        return {_label(name, value, kind, types).replace(" ", "")}
    if name == "syntax":
        return {str(value).lower(), f"syntax_{str(value).lower()}"}
    prefixes = {"series": ("series",), "echo": ("echo", "e"), "bvalue": ("b",),
                "temporal": ("t", "time"), "acquisition": ("acquisition", "acq")}
    return {f"{p}{value}" for p in prefixes[name]}


def own_stack(stacks: Sequence[StackInfo], path: str | os.PathLike) -> int | None:
    """The number of the stack a single-frame file ``path`` is a slice of (None if none)."""
    path = os.fspath(path)
    for info in stacks:
        if any(m.file == path and m.unit is None for m in info.members):
            return info.index
    return None


# -- choosing -----------------------------------------------------------------------------------
def describe_stacks(stacks: Sequence[StackInfo]) -> str:
    """'1 magnitude (32 frames), 2 field_map (32 frames)'."""
    return ", ".join(str(s) for s in stacks)


def choose_stack(
    source: str | os.PathLike,
    stacks: Sequence[StackInfo],
    stack: int | str | None,
    default: int | None = None,
) -> StackInfo:
    """The stack ``stack`` names (a 1-based number or a name), or the only one.

    Parameters
    ----------
    source : the file or folder the user gave (named in errors).
    stacks : as :func:`group_stacks` gives them.
    stack : a number (1 .. len(stacks)), a name from a stack's ``names`` (case
        insensitive; several space-separated names must all match), or None.
    default : the stack number to take when ``stack`` is None (a single file's own).

    Raises
    ------
    ImageReadError
        several stacks, ``stack`` None and no default: one line listing them.
    UsageError
        a number out of range or an unknown / ambiguous name (lists the stacks;
        an unknown name suggests the closest).
    """
    listing = describe_stacks(stacks)
    if stack is None:
        if default is not None:
            return stacks[default - 1]
        if len(stacks) == 1:
            return stacks[0]
        raise ImageReadError(f"holds {len(stacks)} image stacks; pick one with --stack K or "
                             f"--stack NAME (stack= in Python): {listing}", source)
    text = str(stack).strip().lower()
    if re.fullmatch(r"[+-]?\d+", text):
        number = int(text)
        if 1 <= number <= len(stacks):
            return stacks[number - 1]
        raise UsageError(f"--stack {number} is out of range: it holds {len(stacks)} stack(s), "
                         f"numbered from 1: {listing}", source)
    matches = [s for s in stacks if text in s.names
               or all(part in s.names for part in text.split())]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"--stack {stack!r} matches {len(matches)} stacks "
                         f"({describe_stacks(matches)}); give its number or more names", source)
    names = sorted({n for s in stacks for n in s.names if not n.isdigit()})
    hint = closest(text, names)
    suggestion = f"; did you mean {hint!r}?" if hint else ""
    raise UsageError(f"no stack named {stack!r}{suggestion}; it holds: {listing}", source)
