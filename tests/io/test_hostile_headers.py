"""Hostile NIfTI headers, built with nibabel: one line ``medseg: error: <file>: <what>``.

Three headers used to reach the CLI's last-resort handler ("internal error"):
``scl_inter`` NaN or inf beside a valid ``scl_slope`` (nibabel's HeaderDataError),
and an sform whose axis columns are nearly parallel yet not singular (nibabel's
orientation rule names no direction for one axis, and joining the axis codes met
None). Each now stops the read with an error naming the file and the field, exit
code 1, and ``convert`` writes nothing. A seeded fuzz over header fields checks that
no other header gets that far.
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import GeometryError, ImageReadError, MedsegError
from medseg.io import read_volume

AFFINE = np.diag([1.0, 2.0, 3.0, 1.0])
#: An sform that is not singular (|det| 1e-3 mm^3) but whose axes 0 and 1 are parallel to
#: 1e-15: nibabel's aff2axcodes gives ("R", None, "S").
PARALLEL_SROWS = {"srow_x": [1e6, 1e6, 0.0, 0.0], "srow_y": [0.0, 1e-9, 0.0, 0.0],
                  "srow_z": [0.0, 0.0, 1.0, 0.0]}
SCALING = ("but scl_slope 2 asks for scaling (value = scl_slope * stored + scl_inter); set "
           "scl_inter to 0, or scl_slope to 0 for none")


def write_header(path: Path, fields: dict[str, Any]) -> Path:
    """A 2 x 3 x 4 int16 NIfTI-1 (sform and qform code 1) with ``fields`` set in its header.

    The fields are set on a header read back without checks, so values nibabel would
    repair or refuse on saving reach the file as a hostile writer would leave them.
    """
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), AFFINE)
    image.header.set_sform(AFFINE, code=1)
    image.header.set_qform(AFFINE, code=1)
    nib.save(image, path)
    raw = bytearray(path.read_bytes())
    header = nib.Nifti1Header(bytes(raw[:348]), check=False)
    for name, value in fields.items():
        header[name] = value
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    return path


def run_cli(args: list[str]) -> tuple[int, list[str]]:
    """Exit code and stderr lines of ``medseg args`` (stdout discarded)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue().splitlines()


HOSTILE = [
    ("inter_nan.nii", {"scl_slope": 2.0, "scl_inter": np.nan}, ImageReadError,
     f"scl_inter nan is not a finite number, {SCALING}"),
    ("inter_inf.nii", {"scl_slope": 2.0, "scl_inter": np.inf}, ImageReadError,
     f"scl_inter inf is not a finite number, {SCALING}"),
    ("inter_neg_inf.nii", {"scl_slope": 2.0, "scl_inter": -np.inf}, ImageReadError,
     f"scl_inter -inf is not a finite number, {SCALING}"),
    ("parallel_axes.nii", PARALLEL_SROWS, GeometryError,
     "the sform (sform_code 1): affine axis 1 is nearly parallel to another axis: no world "
     "direction can be named for it (axis columns (1e+06, 0, 0; 1e+06, 1e-09, 0; 0, 0, 1) mm)"),
]


@pytest.mark.parametrize(("name", "fields", "error", "message"), HOSTILE,
                         ids=[case[0] for case in HOSTILE])
def test_hostile_header_is_one_line_naming_file_and_field(tmp_path, name, fields, error,
                                                          message):
    path = write_header(tmp_path / name, fields)
    out = tmp_path / "out" / "converted.nii.gz"
    for args in (["info", str(path)], ["convert", str(path), str(out)]):
        assert run_cli(args) == (1, [f"medseg: error: {path}: {message}"])
    assert not out.parent.exists()  # nothing written, not even the folder
    with pytest.raises(error) as info:
        read_volume(path)
    assert info.value.path == str(path) and info.value.message == message


def test_scaling_without_a_slope_ignores_the_intercept(tmp_path):
    """nibabel's rule: scl_slope 0 (or NaN) means no scaling, so a NaN intercept is harmless."""
    path = write_header(tmp_path / "unscaled.nii", {"scl_slope": 0.0, "scl_inter": np.nan})
    volume = read_volume(path)
    assert volume.array.dtype == np.int16
    assert np.array_equal(volume.array, np.arange(24, dtype=np.int16).reshape(2, 3, 4))


# -- fuzz ---------------------------------------------------------------------------------------
#: Values per header field (or group of fields set together), valid and hostile.
FUZZ_VALUES: dict[str, list[dict[str, Any]]] = {
    "dim": [{"dim": d} for d in ([3, 2, 3, 4, 1, 1, 1, 1], [0, 2, 3, 4, 1, 1, 1, 1],
                                 [8, 2, 3, 4, 1, 1, 1, 1], [4, 2, 3, 4, 1, 1, 1, 1],
                                 [3, 0, 3, 4, 1, 1, 1, 1], [2, 2, 3, 4, 1, 1, 1, 1],
                                 [5, 2, 3, 4, 1, 1, 1, 1], [3, 2, 3, 2, 1, 1, 1, 1])],
    "pixdim": [{"pixdim": p} for p in ([1, 0, 2, 3, 1, 1, 1, 1], [1, np.nan, 2, 3, 1, 1, 1, 1],
                                       [1, np.inf, 2, 3, 1, 1, 1, 1], [-1, 1, 2, 3, 1, 1, 1, 1],
                                       [1, 1e30, 1e-30, 3, 1, 1, 1, 1],
                                       [1, 1e-20, 1, 1, 1, 1, 1, 1])],
    "xform_codes": [{"qform_code": q, "sform_code": s}
                    for q, s in ((0, 0), (1, 0), (0, 2), (5, 5), (-1, 1), (1, 99))],
    "srows": [PARALLEL_SROWS,
              {"srow_x": [0.0, 0.0, 0.0, 0.0]},
              {"srow_x": [np.nan, 0.0, 0.0, 0.0]},
              {"srow_x": [1e30, 0.0, 0.0, 0.0]},
              {"srow_x": [1.0, 1.0, 0.0, 0.0], "srow_y": [1.0, 1.0, 0.0, 0.0]},
              {"srow_z": [0.0, 1.0, 1e-7, 0.0]}],
    "quaternion": [{"sform_code": 0, "quatern_b": b, "quatern_c": c, "quatern_d": d}
                   for b, c, d in ((1.0, 0.0, 0.0), (0.8, 0.8, 0.0), (np.nan, 0.0, 0.0),
                                   (1e-8, 0.0, 0.0), (0.5, 0.5, 0.5))],
    "qoffset": [{"qoffset_x": v} for v in (np.nan, np.inf, -1e30)],
    "xyzt_units": [{"xyzt_units": u} for u in (0, 2, 10, 7, 255)],
    "intent": [{"intent_code": c, "intent_name": n}
               for c, n in ((1002, b""), (1007, b"vector"), (2003, b"\xff"), (9999, b"x" * 16))],
    "descrip": [{"descrip": d} for d in (b"", b"\xff\xfe\x00", b"x" * 79)],
    "datatype": [{"datatype": t} for t in (2, 8, 16, 64, 128, 256, 512, 768, 0, 1, 32, 2304)],
    "bitpix": [{"bitpix": b} for b in (0, 7, 64)],
    "scaling": [{"scl_slope": s, "scl_inter": i}
                for s, i in ((2.0, np.nan), (np.nan, np.nan), (np.inf, 1.0), (0.0, np.inf),
                             (-1.0, 5.0), (1e38, 1e38), (2.0, -np.inf))],
    "vox_offset": [{"vox_offset": v} for v in (0.0, 348.0, 1e9, np.nan)],
    "magic": [{"magic": m} for m in (b"ni1", b"xx")],
    "calibration": [{"cal_min": np.nan, "cal_max": np.inf}, {"toffset": np.nan}],
    "slicing": [{"slice_code": 9, "dim_info": 255, "slice_start": -5, "slice_end": 99}],
}


def fuzz_cases(seed: int, pairs: int) -> list[dict[str, Any]]:
    """Every value of :data:`FUZZ_VALUES` alone, then ``pairs`` seeded random pairs of groups."""
    rng = random.Random(seed)
    cases = [dict(value) for group in sorted(FUZZ_VALUES) for value in FUZZ_VALUES[group]]
    for _ in range(pairs):
        fields: dict[str, Any] = {}
        for group in rng.sample(sorted(FUZZ_VALUES), 2):
            fields.update(rng.choice(FUZZ_VALUES[group]))
        cases.append(fields)
    return cases


def test_fuzzed_headers_never_reach_the_last_resort_handler(tmp_path):
    path, out = tmp_path / "fuzz.nii", tmp_path / "out.nii.gz"
    outcomes = {"read": 0, "refused": 0}
    for fields in fuzz_cases(seed=26, pairs=150):
        write_header(path, fields)
        try:
            volume = read_volume(path)
        except MedsegError:
            volume = None
        for args in (["info", str(path)], ["convert", str(path), str(out)]):
            code, err = run_cli(args)
            assert not any("internal error" in line for line in err), (fields, err)
            if volume is None:  # refused: one line naming the file, exit 1, nothing written
                assert code == 1 and len(err) == 1, (fields, err)
                assert err[0].startswith(f"medseg: error: {path}: "), (fields, err)
                assert not out.exists(), fields
            else:  # read: the CLI agrees, and the converted copy holds the same voxels
                assert code == 0, (fields, err)
        if volume is not None:
            assert np.array_equal(read_volume(out).array, volume.array), fields
            out.unlink()
        outcomes["refused" if volume is None else "read"] += 1
    # both outcomes occur: the fuzz reaches the reader's success path and its refusals
    assert outcomes["read"] >= 20 and outcomes["refused"] >= 20, outcomes
