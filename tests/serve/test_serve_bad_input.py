"""What a hostile or broken modality sends: each bad series ends its job as failed with a
one-line reason, nothing partial reaches the PACS (a real Orthanc), and the node goes on
to segment the next good series."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from .orthanc_server import wait_until
from .serve_helpers import (
    WAIT_S,
    copy_series,
    non_image_object,
    push,
    segs_for,
    start_node,
    wait_done,
)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _text_report() -> Dataset:
    """A Basic Text SR document: a non-image object."""
    ds = non_image_object(BASIC_TEXT_SR, "SR", generate_uid(), generate_uid())
    ds.ValueType = "CONTAINER"
    return ds


def _series(ct_files, tmp_path, key, change=None, keep=None) -> tuple[list[Dataset], str]:
    files, uid = copy_series(ct_files, tmp_path / key, key, keep)
    datasets = [pydicom.dcmread(f) for f in files]
    if change is not None:
        change(datasets)
    return datasets, uid


def _other_spacing(datasets) -> None:
    datasets[5].PixelSpacing = [0.5, 0.5]


def _corrupt_pixels(datasets) -> None:
    datasets[7].PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])


def _mr(datasets) -> None:
    for ds in datasets:
        ds.Modality = "MR"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_series_fail_with_reasons_and_the_node_goes_on(orthanc, serve_model, ct_files,
                                                           nodes, tmp_path):
    routes = [{"match": {"modality": "CT"}, "model": str(serve_model)},
              {"match": {"modality": "SR"}, "model": str(serve_model)}]
    node = start_node(nodes, tmp_path, serve_model, orthanc, routes=routes)
    report = _text_report()
    bad = {
        "missing": _series(ct_files, tmp_path, "missing", keep=lambda i: i != 10),
        "geometry": _series(ct_files, tmp_path, "geometry", _other_spacing),
        "pixels": _series(ct_files, tmp_path, "pixels", _corrupt_pixels),
        "route": _series(ct_files, tmp_path, "route", _mr),
        "report": ([report], str(report.SeriesInstanceUID)),
    }
    for datasets, _ in bad.values():
        assert set(push(node.port, datasets)) == {0x0000}
    # UIDs that are not UIDs never become paths: refused (0xC000), nothing written
    evil = _series(ct_files, tmp_path, "evil", keep=lambda i: i == 0)[0]
    evil[0].SeriesInstanceUID = "../../../escaped"
    assert push(node.port, evil) == [0xC000]
    assert not list(tmp_path.rglob("escaped*"))

    ends = {name: wait_until(lambda uid=uid: node.finished(uid), WAIT_S, f"the {name} job")
            for name, (_, uid) in bad.items()}
    assert {name: end["event"] for name, end in ends.items()} == dict.fromkeys(bad, "failed")
    reasons = {name: end["reason"] for name, end in ends.items()}
    assert "uneven slice spacing" in reasons["missing"] and "missing" in reasons["missing"]
    assert "different PixelSpacing" in reasons["geometry"]
    assert "cannot decode pixel data" in reasons["pixels"]
    assert reasons["route"].startswith("no route matches modality 'MR'")
    assert "Structured Report" in reasons["report"] and "no image series" in reasons["report"]
    assert all("\n" not in reason for reason in reasons.values())
    # the node still listens and segments a good series; nothing of the bad ones was sent
    good, good_uid = _series(ct_files, tmp_path, "good")
    assert set(push(node.port, good)) == {0x0000}
    wait_done(node, good_uid)
    assert len(segs_for(orthanc, good_uid)) == 1
    assert len(orthanc.seg_instances()) == 1
    status = node.status().splitlines()
    assert status[0] == "receiving 0  queued 0  running 0  sending 0  done 1  failed 5"
    assert sum(line.startswith("failed") for line in status[1:]) == 5


def test_a_full_spool_refuses_the_series_and_the_node_goes_on(orthanc, serve_model, ct_files,
                                                              nodes, tmp_path):
    """1 MB of spool holds 6 of the 20 slices (about 157 kB each): the 7th is refused with
    A700 (out of resources), the series fails, its instances leave the spool."""
    node = start_node(nodes, tmp_path, serve_model, orthanc, max_spool_gb=0.001)
    datasets, uid = _series(ct_files, tmp_path, "big")
    statuses = push(node.port, datasets)
    sizes = [f.stat().st_size for f in sorted((tmp_path / "big").glob("*.dcm"))]
    fits = next(k for k in range(len(sizes) + 1) if sum(sizes[:k + 1]) > 1e6)
    assert statuses == [0x0000] * fits + [0xA700] * (len(datasets) - fits)
    end = wait_until(lambda: node.finished(uid), WAIT_S, "the failed job")
    assert end["event"] == "failed" and "max_spool_gb" in end["reason"]
    assert not list((node.folder / "spool" / "series" / uid).rglob("*.dcm"))
    assert orthanc.seg_instances() == []
    assert orthanc.post("/modalities/medseg/echo", {}).ok
    assert node.status().splitlines()[0].endswith("done 0  failed 1")


@pytest.mark.parametrize("raw, message", [
    ({"allowed_calling_aet": ["X"]}, "unknown key 'allowed_calling_aet'; did you mean "
                                     "'allowed_calling_aets'?"),
    ({"routes": [{"model": "m.safetensors", "format": "segg"}]},
     "unknown routes[0].format 'segg': expected one of 'seg', 'rtstruct'; did you mean 'seg'?"),
    ({"routes": [{"model": "m", "options": {"overlapp": 0.5}}]},
     "unknown option 'overlapp' for routes[0].options"),
    ({"allowed_calling_aets": []}, "allowed_calling_aets is empty"),
    ({"destination": {"ae_title": "PACS", "host": "h"}}, "destination lacks port"),
    ({"ae_title": "A_TITLE_OF_MORE_THAN_16"}, "ae_title = 'A_TITLE_OF_MORE_THAN_16': expected"),
    ({"routes": [{"model": "m", "match": {"series_description": "(["}}]},
     "not a regular expression"),
])
def test_config_errors_name_the_key(tmp_path, raw, message):
    import yaml

    from medseg.cli import main

    config = {"allowed_calling_aets": ["ORTHANC"], "routes": [{"model": "m.safetensors"}],
              "destination": {"ae_title": "PACS", "host": "h", "port": 104}}
    config.update(raw)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    from medseg.errors import ConfigError
    from medseg.serve.config import load_serve_config

    with pytest.raises(ConfigError) as info:
        load_serve_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert main(["serve", str(path)]) == 1
