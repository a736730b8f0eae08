"""Pipeline configs: validation on load, did-you-mean errors, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medseg.config import apply_overrides, load_config, parse_config
from medseg.errors import ConfigError

from .training_helpers import REPO, tiny_config, write_config


def test_valid_config_types_and_defaults(tmp_path):
    cfg = load_config(write_config(tmp_path / "p.yaml", tiny_config(lr=1)))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.patch_size == [16, 16, 16]
    assert cfg.data.phantom.n_train == 2 and cfg.data.phantom.spacing_mm == [12.0, 12.0, 16.0]
    assert cfg.train.augment.affine_prob == 0.5 and cfg.train.augment.gamma_prob == 0.15
    assert cfg.train.optimizer == "adamw" and cfg.train.grad_clip == 12.0
    assert cfg.window().roi_size == (16, 16, 16) and cfg.source.endswith("p.yaml")
    # round trip through to_dict
    assert parse_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda c: c.update(trian=c.pop("train")), r"unknown key 'trian'; did you mean 'train'"),
        (lambda c: c["train"].update(bach_size=2), r"'train.bach_size'; did you mean 'train.batch_size'"),
        (lambda c: c["train"]["augment"].update(flip_prb=0.1),
         r"'train.augment.flip_prb'; did you mean 'train.augment.flip_prob'"),
        (lambda c: c["data"]["phantom"].update(n_trian=1), r"did you mean 'data.phantom.n_train'"),
        (lambda c: c["train"].update(epochs="ten"), r"train.epochs = 'ten' \(str\): expected an integer"),
        (lambda c: c["train"].update(patch_size=16), r"train.patch_size = 16 .*expected a list of int"),
        (lambda c: c["train"].update(amp="yes"), r"train.amp = 'yes' .*expected true or false"),
        (lambda c: c["train"].update(optimizer="adam"), r"unknown train.optimizer 'adam'.*did you mean 'adamw'"),
        (lambda c: c["train"].update(schedule="cosin"), r"did you mean 'cosine'"),
        (lambda c: c["train"].update(patch_size=[16, 16]), r"train.patch_size = \[16, 16\]: expected three"),
        (lambda c: c["train"].update(class_probabilities=[0.5, 0.6]), r"summing to 1"),
        (lambda c: c["inference"].update(overlap=1.0), r"inference: overlap must be a number in \[0, 1\), got 1.0"),
        (lambda c: c["data"].update(manifest="x.json"), r"exactly one of 'data.manifest'"),
        (lambda c: c["train"]["augment"].update(blur_prob=1.5),
         r"train.augment.blur_prob = 1.5: expected a probability in \[0, 1\]"),
        (lambda c: c["train"]["augment"].update(lowres_scale=[0.5, 2]),
         r"train.augment.lowres_scale = \[0.5, 2.0\]: expected \[low, high\].*high <= 1"),
        (lambda c: c["train"]["augment"].update(gamma_range=[1.5, 0.7]),
         r"train.augment.gamma_range = \[1.5, 0.7\]: expected \[low, high\] with low <= high"),
    ],
)
def test_config_errors_name_file_key_and_closest(tmp_path, mutate, pattern):
    raw = tiny_config()
    mutate(raw)
    path = write_config(tmp_path / "bad.yaml", raw)
    with pytest.raises(ConfigError, match=pattern) as exc:
        load_config(path)
    assert str(exc.value).startswith(str(path))


def test_yaml_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_set_overrides_are_yaml_parsed_and_validated(tmp_path):
    path = write_config(tmp_path / "p.yaml", tiny_config())
    cfg = load_config(path, ["train.lr=3e-4", "train.patch_size=[32, 32, 24]",
                             "train.grad_clip=null", "data.phantom.n_train=5",
                             "train.augment.enabled=false"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.patch_size == [32, 32, 24] and cfg.train.grad_clip is None
    assert cfg.data.phantom.n_train == 5 and cfg.train.augment.enabled is False
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        load_config(path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["train.lr"])
    raw = {"train": {"lr": 1}}
    assert apply_overrides(raw, ["train.lr=2"]) == {"train": {"lr": 2}} and raw["train"]["lr"] == 1


def test_manifest_path_relative_to_yaml(tmp_path):
    raw = tiny_config()
    raw["data"] = {"manifest": "data/dataset.json"}
    cfg = load_config(write_config(tmp_path / "p.yaml", raw))
    assert Path(cfg.data.manifest) == tmp_path / "data" / "dataset.json"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "pipelines").glob("*.yaml")))
def test_shipped_pipelines_load(name):
    cfg = load_config(REPO / "pipelines" / name)
    from medseg.transforms import Preprocessing

    Preprocessing.from_config(cfg.preprocessing)
    assert yaml.safe_dump(cfg.to_dict())


def test_augment_section_of_an_older_yaml_gets_nnunet_defaults(tmp_path):
    # a YAML written before noise, blur, brightness, contrast, low resolution and inverted
    # gamma existed: it loads, and the new keys take nnU-Net v2's values
    raw = tiny_config()
    raw["train"]["augment"] = {"enabled": True, "flip_prob": 0.5, "affine_prob": 0.2,
                               "rotate_deg": 15.0, "scale": 0.1, "intensity_prob": 0.15,
                               "intensity_scale": 0.1, "intensity_shift": 0.1,
                               "gamma_prob": 0.15, "gamma_range": [0.7, 1.5]}
    aug = load_config(write_config(tmp_path / "old.yaml", raw)).train.augment
    assert (aug.noise_prob, aug.noise_std) == (0.1, [0.0, 0.1])
    assert (aug.blur_prob, aug.blur_sigma) == (0.2, [0.5, 1.0])
    assert (aug.brightness_prob, aug.brightness_range) == (0.15, [0.75, 1.25])
    assert (aug.contrast_prob, aug.contrast_range) == (0.15, [0.75, 1.25])
    assert (aug.lowres_prob, aug.lowres_scale) == (0.25, [0.5, 1.0])
    assert aug.inverted_gamma_prob == 0.1 and aug.gamma_range == [0.7, 1.5]
