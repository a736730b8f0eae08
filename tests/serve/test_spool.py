"""The spool without a network: UIDs checked before they name paths, durable instances,
the size limit, job records, and --status's lines."""

from __future__ import annotations

from collections import Counter

import pytest
from pydicom.uid import generate_uid

from medseg.errors import DataError
from medseg.serve.jobs import DONE, FAILED, QUEUED, Job, status_lines
from medseg.serve.spool import Spool, SpoolFullError, check_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "0.0", "2.25.0", "1"])
def test_valid_uids_pass(uid):
    assert check_uid(uid, "SeriesInstanceUID") == uid


@pytest.mark.parametrize("uid", ["../1.2", "1.2/3", "1.02.3", "1..2", "1.2.", ".1", "", None,
                                 "1.2 ", "1." + "2" * 63, "1.2\x00"])
def test_uids_outside_the_grammar_are_refused(uid):
    with pytest.raises(DataError, match="SeriesInstanceUID .* is not a DICOM UID"):
        check_uid(uid, "SeriesInstanceUID")


def test_instances_count_against_the_limit_and_replace_themselves(tmp_path):
    spool = Spool(tmp_path, max_bytes=250)
    series = generate_uid()
    first = spool.store_instance(series, "1.2.3", b"a" * 100)
    assert first == tmp_path / "series" / series / "instances" / "1.2.3.dcm"
    assert first.read_bytes() == b"a" * 100
    spool.store_instance(series, "1.2.3", b"b" * 120)  # the same instance again: replaced
    assert spool.used_bytes == 120
    spool.store_instance(series, "1.2.4", b"c" * 130)
    assert spool.used_bytes == 250
    with pytest.raises(SpoolFullError, match="max_spool_gb"):
        spool.store_instance(series, "1.2.5", b"d")
    assert [p.name for p in spool.instance_files(series)] == ["1.2.3.dcm", "1.2.4.dcm"]
    assert not [p for p in (tmp_path / "series" / series / "instances").iterdir()
                if p.name.startswith(".")]  # no temporary file left behind
    spool.discard(series)
    assert spool.used_bytes == 0 and spool.instance_files(series) == []
    assert Spool(tmp_path, 250).used_bytes == 0


def test_jobs_round_trip_and_status_counts(tmp_path):
    spool = Spool(tmp_path, 10**6)
    jobs = [Job(generate_uid(), state=s, header={"series_description": "CT Body"}) for s in
            (DONE, DONE, QUEUED)]
    jobs.append(Job(generate_uid(), state=FAILED, reason="no route matches modality 'MR'"))
    for job in jobs:
        spool.save(job)
    (tmp_path / "series" / "not-a-uid").mkdir()  # ignored, never parsed
    loaded = {j.series_uid: j for j in Spool(tmp_path, 10**6).jobs()}
    assert loaded == {j.series_uid: j for j in jobs}
    lines = status_lines(loaded.values(), Counter(rejected=3, refused=1))
    assert lines[0] == "receiving 0  queued 1  running 0  sending 0  done 2  failed 1"
    assert lines[1] == "associations rejected 3  aborted 0  instances refused 1"
    assert lines[2:] == [f"queued    {jobs[2].series_uid}  CT Body",
                         f"failed    {jobs[3].series_uid}  (no route matches modality 'MR')"]


def test_torn_temporary_files_of_a_kill_are_removed_and_uncounted(tmp_path):
    """What a kill -9 inside atomic_path leaves: the temporary file beside the final name
    (counted by nothing once removed); complete instances and job records stay."""
    spool = Spool(tmp_path, 10**6)
    series = generate_uid()
    kept = spool.store_instance(series, "1.2.3", b"a" * 100)
    spool.save(Job(series))
    folder = kept.parent
    (folder / ".1.2.4.dcm.k3j_x.tmp.dcm").write_bytes(b"b" * 40)      # an instance, torn
    (folder.parent / ".job.json.q9z1.tmp.json").write_text("{")      # a job record, torn
    restarted = Spool(tmp_path, 10**6)
    assert restarted.used_bytes == 140  # the torn instance counts until it is removed
    assert restarted.remove_torn_writes() == 2
    assert restarted.used_bytes == 100
    assert sorted(p.name for p in (tmp_path / "series").rglob("*")) == sorted(
        ["1.2.3.dcm", "instances", "job.json", series])
    assert restarted.jobs() == [Job.from_json((folder.parent / "job.json").read_text())]
