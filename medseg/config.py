"""Pipeline configs: dataclasses for the YAML files in ``pipelines/``, validated on load.

A pipeline YAML has six sections; every key is optional except where noted::

    data:           # where the cases come from (a manifest, or generated phantoms)
    preprocessing:  # Preprocessing.from_config() input (orientation, spacing_mm, intensity, ...)
    model:          # name + kwargs for medseg.models.create
    loss:           # name + kwargs for medseg.losses.create
    train:          # optimiser, schedule, patches, epochs, sampling, augmentation
    inference:      # sliding window for validation and for the saved checkpoint

Unknown keys and wrong types raise :class:`~medseg.errors.ConfigError` naming
the file, the key and the closest valid key. ``--set section.key=value``
overrides (values parsed as YAML) are applied before validation, see
:func:`apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from medseg.card import ModelCard, NetworkSpec, Postprocess, WindowSettings
from medseg.data.augment_config import AugmentConfig, check_augment
from medseg.data.phantom_dataset import PhantomConfig
from medseg.errors import ConfigError, UsageError, check_option, closest

__all__ = [
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "AugmentConfig",
    "SelectConfig",
    "TrainConfig",
    "InferenceConfig",
    "PipelineConfig",
    "load_config",
    "parse_config",
    "apply_overrides",
    "build_section",
    "read_yaml",
]


@dataclass
class DataConfig:
    """Where the cases come from: ``manifest`` (MSD dataset.json or CSV) or ``phantom``.

    ``val_fraction`` holds out that share of the training cases for validation
    when the manifest has no validation split. ``cache_dir`` defaults to
    ``RUN_DIR/cache``; point several runs at one folder to share it.
    ``split_file`` and ``fold``: train on fold ``fold`` (from 0) of a cross-validation
    ``splits.json`` (a list of ``{"train": [case ids], "val": [...]}``) instead of
    ``val_fraction``; ``medseg train --folds K`` sets both for each fold.
    """

    manifest: str | None = None
    phantom: PhantomConfig | None = None
    val_fraction: float = 0.2
    cache_dir: str | None = None
    max_indices_per_class: int = 200_000
    split_file: str | None = None
    fold: int | None = None


@dataclass
class ModelConfig:
    """``medseg.models.create(name, in_channels, out_channels, **kwargs)``."""

    name: str = "unet3d"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """``medseg.losses.create(name, **kwargs)``; ``deep_supervision_weights`` halve per level."""

    name: str = "dice_ce"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelectConfig:
    """``train.select``: screen this config against others and continue the better one.

    ``candidates``: pipeline YAMLs (relative paths from this YAML's folder) trained beside
    this one on the same split; ``screen_fraction``: the share of the time budget
    (``train.max_minutes``) the screening takes in all, split equally between this config
    and its candidates. The candidate with the highest mean validation Dice at its last
    screening validation (ties: this config) continues from its screening state for the rest
    of the budget (:mod:`medseg.training.screening`). ``medseg plan --time-budget`` writes it for highly
    anisotropic data, with ``plan_2d.yaml`` as the candidate.
    """

    candidates: list[str] = field(default_factory=list)
    screen_fraction: float = 0.2


@dataclass
class TrainConfig:
    """Optimisation and sampling.

    ``patch_size`` in voxels (x, y, z). ``iterations_per_epoch`` optimiser
    steps per epoch (each of ``batch_size`` patches per rank). Sampling: give
    ``class_probabilities`` (one per class, background first, summing to 1) or
    ``foreground_ratio`` (nnU-Net oversampling: that share of patches is centred
    on a random foreground voxel, the rest anywhere). ``lr`` is the peak learning
    rate; ``schedule`` decays it per iteration (``poly``: (1 - t)^0.9, ``cosine``).
    ``amp``: mixed precision, the policy of :mod:`medseg.runtime` (null = auto: bf16 or
    fp16 on GPUs, fp32 on the CPU; true also runs bf16 on the CPU; false fp32);
    ``medseg train --amp/--no-amp`` overrides it. ``val_every`` in epochs.
    ``max_minutes``: a wall-clock contract for the whole run (null: none): training stops
    after the last epoch whose training, validation and checkpoints still fit, validates and
    saves, and says so; the learning-rate schedule follows the larger of the steps' and the
    budget's share (:func:`medseg.training.optim.lr_at`), so a slow machine still ends on a
    decayed rate. ``medseg plan --time-budget`` writes it; ``medseg train --max-minutes``
    takes the smaller of the two.
    ``fill_budget``: with a budget, the budget is the schedule: training goes on past
    ``epochs`` (then only the planned estimate: the validation rhythm and the ETA) for as
    long as another epoch fits, and the learning rate's progress is the budget's share alone,
    so a machine faster than planned spends the hour too (budgeted training with a
    budget-aware decay, Li et al., ICLR 2020). ``medseg plan --time-budget`` writes true.
    ``select``: candidates screened against this config within the budget
    (:class:`SelectConfig`); null: this config alone.
    ``calibrate``: a run with validation cases (not a fold: folds calibrate out of fold) ends
    by calibrating ``best`` on them (:func:`medseg.inference.calibration.calibrate`: its
    temperature and QC's reference, so ``medseg predict --qc`` trusts it without a
    ``medseg calibrate``); within a budget its time is reserved. ``medseg plan`` writes true.
    """

    epochs: int = 100
    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [96, 96, 96])
    iterations_per_epoch: int = 250
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.99
    weight_decay: float = 1e-4
    schedule: str = "poly"
    poly_exponent: float = 0.9
    warmup_iterations: int = 0
    grad_clip: float | None = 12.0
    amp: bool | None = None
    val_every: int = 1
    foreground_ratio: float = 0.33
    class_probabilities: list[float] | None = None
    num_workers: int = 2
    seed: int = 0
    deep_supervision: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    deterministic: bool = True
    max_minutes: float | None = None
    fill_budget: bool = False
    select: SelectConfig | None = None
    calibrate: bool = False

    def amp_with(self, override: bool | None) -> bool | None:
        """The precision policy of a run: ``override`` (``medseg train --amp/--no-amp``)
        where given, else this config's ``amp``.

        >>> TrainConfig(amp=True).amp_with(None), TrainConfig(amp=True).amp_with(False)
        (True, False)
        """
        return self.amp if override is None else override


@dataclass
class InferenceConfig:
    """How the trained model predicts: the card's window and post-processing settings.

    Every key here is stored in the checkpoint's :class:`~medseg.card.ModelCard` and used
    by validation and ``medseg predict``: ``roi_size`` in voxels (x, y, z; default the
    training patch size), ``overlap`` in [0, 1), ``batch_size`` windows per network call,
    ``blend`` (gaussian or constant), ``mirror_axes`` mirrored for test-time
    augmentation by default (``[]``: none; ``medseg predict --tta/--no-tta`` overrides),
    and ``keep_largest``: keep only the largest connected component of each label (for
    organs that are one piece).
    """

    roi_size: list[int] | None = None
    overlap: float = 0.5
    batch_size: int = 4
    blend: str = "gaussian"
    mirror_axes: list[int] = field(default_factory=list)
    keep_largest: bool = False


@dataclass
class PipelineConfig:
    """A whole pipeline YAML. ``source`` is the file it was read from (for messages)."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: dict[str, Any] = field(
        default_factory=lambda: {
            "orientation": "RAS",
            "spacing_mm": None,
            "intensity": {"mode": "ct", "window": [-200, 300]},
            "crop_foreground": False,
        }
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict (without ``source``)."""
        out = dataclasses.asdict(self)
        out.pop("source", None)
        return out

    def window(self) -> WindowSettings:
        """The sliding-window settings of ``inference`` (roi: the patch size by default)."""
        i = self.inference
        return WindowSettings(tuple(i.roi_size or self.train.patch_size), i.overlap, i.blend,
                              i.batch_size, tuple(i.mirror_axes))

    def model_card(self, network: NetworkSpec, labels: Mapping[int, str],
                   channels: Sequence[str] = ()) -> ModelCard:
        """The card of a model trained with this config: ``network`` (the built model's
        spec), ``labels`` (value -> name) and ``channels`` (the input channels' names, in
        order; empty when the data names none) come from the data; the rest from here."""
        return ModelCard(network, dict(self.preprocessing), dict(labels), self.window(),
                         Postprocess(self.inference.keep_largest), channels=tuple(channels))


# -- validation --------------------------------------------------------------------------------
_CHOICES = {
    ("train", "optimizer"): ("adamw", "sgd"),
    ("train", "schedule"): ("poly", "cosine", "constant"),
}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (dataclasses built)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if tp is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            _bad(value, f"a list of {_type_name(item)}", where, source)
        return [_convert(v, item, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            _bad(value, "a mapping", where, source)
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _bad(value, "a number", where, source)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            _bad(value, "an integer", where, source)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _bad(value, "true or false", where, source)
        return value
    if tp is str:
        if not isinstance(value, str):
            _bad(value, "a string", where, source)
        return value
    raise TypeError(f"unsupported annotation {tp!r}")  # programming error, not user input


def _bad(value: Any, expected: str, where: str, source: str | None) -> None:
    raise ConfigError(f"{where} = {value!r} ({type(value).__name__}): expected {expected}", source)


def _build(cls: type, raw: Any, where: str, source: str | None) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        _bad(raw, f"a mapping of {cls.__name__} keys", where, source)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    values = {}
    prefix = f"{where}." if where else ""
    for key, value in raw.items():
        if key not in names:
            hint = closest(str(key), names)
            suggestion = f"; did you mean '{prefix}{hint}'?" if hint else ""
            raise ConfigError(
                f"unknown key '{prefix}{key}'{suggestion} (valid keys"
                f"{' of ' + where if where else ''}: {', '.join(names)})",
                source,
            )
        values[key] = _convert(value, hints[key], f"{prefix}{key}", source)
    return cls(**values)


def build_section(cls: type, raw: Any, where: str = "",
                  source: str | os.PathLike | None = None) -> Any:
    """Build the dataclass ``cls`` from a parsed YAML mapping, checking every key and type.

    The one typed reading of YAML sections (pipeline configs here, ``medseg serve``'s
    config too): a key that is not a field of ``cls`` raises :class:`ConfigError` naming
    it, ``where`` (its section, e.g. ``"routes[0]"``), ``source`` and the closest valid
    key; values are checked against the field annotations (nested dataclasses, lists,
    unions, ``int`` / ``float`` / ``str`` / ``bool``).
    """
    return _build(cls, raw, where, None if source is None else os.fspath(source))


def _check_values(cfg: PipelineConfig, source: str | None) -> None:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        check_option(value, choices, f"{section}.{key}", ConfigError, source)
    t = cfg.train
    _require(len(t.patch_size) == 3 and min(t.patch_size) > 0, "train.patch_size",
             t.patch_size, "three positive voxel counts", source)
    for key in ("epochs", "batch_size", "iterations_per_epoch", "val_every"):
        _require(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), ">= 1", source)
    _require(t.lr > 0, "train.lr", t.lr, "> 0", source)
    _require(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes", t.max_minutes,
             "a positive number of minutes, or null for no budget", source)
    _require(0.0 <= t.foreground_ratio <= 1.0, "train.foreground_ratio", t.foreground_ratio,
             "a share in [0, 1]", source)
    if t.class_probabilities is not None:
        probs = t.class_probabilities
        _require(min(probs) >= 0 and abs(sum(probs) - 1.0) < 1e-6, "train.class_probabilities",
                 probs, "non-negative numbers summing to 1", source)
    _require(t.num_workers >= 0, "train.num_workers", t.num_workers, ">= 0", source)
    check_augment(t.augment, source)
    if t.select is not None:
        _require(bool(t.select.candidates), "train.select.candidates", t.select.candidates,
                 "at least one pipeline YAML to screen against", source)
        _require(0.0 < t.select.screen_fraction < 1.0, "train.select.screen_fraction",
                 t.select.screen_fraction, "a share of the budget in (0, 1)", source)
    try:
        cfg.window()
    except UsageError as exc:
        raise ConfigError(f"inference: {exc.message}", source) from None
    d = cfg.data
    if (d.manifest is None) == (d.phantom is None):
        raise ConfigError("data needs exactly one of 'data.manifest' (a dataset.json or CSV "
                          "path) or 'data.phantom' (generated cases)", source)
    _require(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "[0, 1)", source)
    if (d.split_file is None) != (d.fold is None):
        raise ConfigError("data.split_file and data.fold go together: give both (a splits.json "
                          "and a fold index from 0) or neither", source)
    _require(d.fold is None or d.fold >= 0, "data.fold", d.fold, "a fold index >= 0", source)


def _require(ok: bool, key: str, value: Any, expected: str, source: str | None) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected {expected}", source)


def parse_config(raw: Any, source: str | os.PathLike | None = None) -> PipelineConfig:
    """Validate a parsed YAML mapping and build a :class:`PipelineConfig`.

    A relative ``data.manifest`` / ``data.cache_dir`` / ``data.split_file`` (and each of
    ``train.select.candidates``) is resolved against the YAML file's folder (when ``source``
    is given).
    """
    src = None if source is None else os.fspath(source)
    if raw is None:
        raw = {}
    cfg = _build(PipelineConfig, raw, "", src)
    cfg.source = src
    _check_values(cfg, src)
    if src is not None:
        base = Path(src).resolve().parent
        for key in ("manifest", "cache_dir", "split_file"):
            value = getattr(cfg.data, key)
            if value and not Path(value).is_absolute():
                setattr(cfg.data, key, str(base / value))
        if cfg.train.select is not None:
            cfg.train.select.candidates = [str(base / c) for c in cfg.train.select.candidates]
    return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML, apply ``--set section.key=value`` overrides and validate it."""
    raw = apply_overrides(read_yaml(path, "pipeline config"), overrides, path)
    return parse_config(raw, path)


def read_yaml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The mapping a YAML config file holds (``{}`` when empty).

    Raises
    ------
    ConfigError
        naming ``path``: missing, not valid YAML, or not a mapping (``what`` names the
        kind of config, e.g. ``"pipeline config"``).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file does not exist", path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {' '.join(str(exc).split())}", path) from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"a {what} is a mapping of sections, got {type(raw).__name__}", path)
    return raw or {}


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str],
                    source: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``section.key[.sub]=value`` overrides applied.

    Values are parsed as YAML (``train.lr=3e-4``, ``train.patch_size=[64,64,64]``,
    ``train.grad_clip=null``). Unknown keys are caught by the validation afterwards.
    """
    import copy

    import yaml

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not sep or len(parts) < 2:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4",
                              source)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}", source) from exc
        node = out
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section", source)
            node = node[part]
        node[parts[-1]] = value
    return out
