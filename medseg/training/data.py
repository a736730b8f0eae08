"""Training data from a pipeline config: phantom generation, manifest, split, cache.

Returns cached train and validation cases plus the label names and channel
count the model and checkpoint need. In a DDP job the main rank generates and
caches; the others wait and then open the same cache entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medseg.config import PipelineConfig
from medseg.data.phantom_dataset import PhantomConfig
from medseg.data.cache import CachedCase, build_cache
from medseg.data.manifest import Manifest, load_manifest
from medseg.data.splits import cv_cases, fold_cases, read_splits, split_train_val
from medseg.data.phantom_dataset import write_phantom_dataset
from medseg.errors import ConfigError, MedsegError
from medseg.io.cases import Case
from medseg.runtime import Runtime
from medseg.training.distributed import barrier

__all__ = ["TrainingData", "manifest_path", "prepare_data", "write_phantom_dataset"]

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Cached cases and what describes them. ``label_names``: value -> name, 0 included;
    ``train_cases``: the training cases' files (the cohort is measured from them);
    ``val_cases``: the validation cases' files (``train.calibrate`` predicts them);
    ``modality``: the manifest's channel names ("CT", "MRI"), None when it names none;
    ``channels``: those names one per input channel (the model card's), empty when the
    manifest names none or not one per channel."""

    train: list[CachedCase]
    val: list[CachedCase]
    label_names: dict[int, str]
    in_channels: int
    train_cases: list[Case] = field(default_factory=list)
    modality: str | None = None
    channels: tuple[str, ...] = ()
    val_cases: list[Case] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return max(self.label_names) + 1


def _phantom_folder(cfg: PhantomConfig, cache_dir: Path) -> Path:
    key = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / f"phantoms-{key}"


def manifest_path(cfg: PipelineConfig, cache_dir: Path, info: Runtime) -> Path:
    """The manifest of ``cfg.data``: its file, or the generated phantoms' ``dataset.json``
    (written under ``cache_dir`` by the main rank, once)."""
    if cfg.data.phantom is None:
        return Path(cfg.data.manifest)
    folder = _phantom_folder(cfg.data.phantom, cache_dir)
    if info.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_phantom_dataset(cfg.data.phantom, folder)
    barrier(info)
    return folder / "dataset.json"


def _split(cfg: PipelineConfig, manifest: Manifest) -> tuple[list, list]:
    """Train and validation cases: fold ``data.fold`` of ``data.split_file``, else the
    manifest's ``val`` split or a ``data.val_fraction`` share."""
    d = cfg.data
    if d.split_file is None:
        return split_train_val(manifest.cases, d.val_fraction, cfg.train.seed)
    cases = cv_cases(manifest.cases)
    splits = read_splits(d.split_file, [c.case_id for c in cases])
    return fold_cases(cases, splits, int(d.fold or 0), d.split_file)


def prepare_data(cfg: PipelineConfig, preprocessing, cache_dir: Path, info: Runtime,
                 progress: bool = False) -> TrainingData:
    """Cases ready for sampling and validation, cached under ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_file = manifest_path(cfg, cache_dir, info)
    manifest = load_manifest(manifest_file)
    train_cases, val_cases = _split(cfg, manifest)
    if not train_cases:
        raise ConfigError("the manifest has no training cases (split 'train')", manifest_file)
    cases = train_cases + val_cases
    cached: list[CachedCase] = []
    if info.is_main:
        cached = _cache(cases, preprocessing, cache_dir, cfg, progress)
    barrier(info)
    if not info.is_main:
        cached = _cache(cases, preprocessing, cache_dir, cfg, False)
    label_names = dict(manifest.label_names) or _names_from_cache(cached)
    in_channels = int(cached[0].image.shape[0])
    _check_labels(cached, label_names, manifest_file)
    names = [n for n in manifest.channel_names if n != "image"]
    channels = tuple(names) if len(names) == in_channels else ()
    return TrainingData(cached[: len(train_cases)], cached[len(train_cases) :], label_names,
                        in_channels, list(train_cases), ", ".join(names) or None, channels,
                        list(val_cases))


def _cache(cases, preprocessing, cache_dir, cfg, progress) -> list[CachedCase]:
    try:
        return build_cache(cases, preprocessing, cache_dir, cfg.data.max_indices_per_class,
                           progress=progress)
    except MedsegError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot build the preprocessing cache: {exc}", cache_dir) from exc


def _names_from_cache(cached: list[CachedCase]) -> dict[int, str]:
    values = sorted({v for c in cached for v in c.classes})
    top = max(values, default=1)
    return {0: "background", **{v: f"label_{v}" for v in range(1, top + 1)}}


def _check_labels(cached: list[CachedCase], names: dict[int, str], manifest: Path) -> None:
    for case in cached:
        unknown = sorted(set(case.classes) - set(names))
        if unknown:
            raise ConfigError(f"case {case.case_id!r} has label values {unknown} not in the "
                              f"manifest's labels {sorted(names)} (run 'medseg validate')",
                              manifest)
