"""Hostile DICOM bytes: a seeded, bounded fuzz of one real CT slice through medseg's readers.

Every mutated file (truncated, bytes or words overwritten in the header) must read, or fail
with one MedsegError naming the file: never a library exception that the CLI would report as
"internal error". Skipped without the shared TotalSegmentator CT series.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.io import read_volume
from medseg.io.dicom.image import list_stacks

CT_DICOM = Path(__file__).resolve().parents[3] / "../shared/data/totalsegmentator/ct_dicom"
MUTATIONS = 90
HEADER_BYTES = 4000  # the header of the slice lies within its first 4000 bytes


def _mutated(data: bytes, rng: random.Random, kind: int) -> bytes:
    """``data`` truncated (kind 0), with up to 20 bytes overwritten (1), or a 4-byte word (2)."""
    out = bytearray(data)
    if kind == 0:
        return bytes(out[: rng.randrange(0, len(out))])
    if kind == 1:
        for _ in range(rng.randrange(1, 20)):
            out[rng.randrange(0, HEADER_BYTES)] = rng.randrange(256)
        return bytes(out)
    at = rng.randrange(0, HEADER_BYTES)
    out[at:at + 4] = bytes(rng.randrange(256) for _ in range(4))
    return bytes(out)


@pytest.mark.skipif(not CT_DICOM.is_dir(), reason=f"{CT_DICOM} is absent (shared data)")
def test_mutated_slices_read_or_fail_in_one_named_line(tmp_path):
    source = sorted(CT_DICOM.glob("*.dcm"))[0].read_bytes()
    rng = random.Random(20261206)
    escaped, read = [], 0
    for i in range(MUTATIONS):
        path = tmp_path / "slice.dcm"
        path.write_bytes(_mutated(source, rng, i % 3))
        for reader in (read_volume, list_stacks):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reader(path)
                read += reader is read_volume
            except MedsegError as exc:
                assert path.name in str(exc) and "\n" not in str(exc), str(exc)
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                escaped.append(f"mutation {i}, {reader.__name__}: {type(exc).__name__}: {exc}")
    assert not escaped, "\n".join(escaped[:5])
    assert 0 < read < MUTATIONS  # some mutations are harmless, most are not
