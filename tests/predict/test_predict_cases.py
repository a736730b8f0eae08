"""Output naming and torchrun sharding of ``medseg predict`` (listing: tests/io/test_cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.inference.batch import outputs_for, shard_cases
from medseg.io.cases import Case


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7, 9])
def test_shard_every_case_exactly_once(world_size):
    cases = [Case(f"c{i}", (Path(f"c{i}.nii.gz"),)) for i in range(7)]
    shards = [shard_cases(cases, rank, world_size) for rank in range(world_size)]
    flat = [c.case_id for shard in shards for c in shard]
    assert sorted(flat) == sorted(c.case_id for c in cases)
    assert len(flat) == len(set(flat)) == 7
    for rank, shard in enumerate(shards):  # case i -> rank i % world_size
        assert [int(c.case_id[1:]) % world_size for c in shard] == [rank] * len(shard)




def test_outputs_for(tmp_path):
    case = Case("liver_7", (tmp_path / "liver_7.nii.gz",))
    folder = outputs_for(case, tmp_path / "out", file_mode=False)
    assert folder.prediction == tmp_path / "out" / "liver_7.nii.gz"
    assert folder.probabilities == tmp_path / "out" / "liver_7_probabilities.nii.gz"
    assert folder.preview == tmp_path / "out" / "liver_7_preview.png"
    single = outputs_for(case, tmp_path / "seg.dcm", file_mode=True)
    assert single.prediction == tmp_path / "seg.dcm"
    assert single.probabilities == tmp_path / "seg_probabilities.nii.gz"
