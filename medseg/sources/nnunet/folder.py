"""An nnU-Net v2 trained-model folder: plans, dataset description, folds and checkpoints.

nnU-Net writes one folder per trained model, ``<Trainer>__<Plans>__<configuration>``, under
its results folder ``nnUNet_results/DatasetXXX_Name/``::

    plans.json  dataset.json  fold_0/checkpoint_final.pth  fold_1/checkpoint_best.pth ...
    crossval_results_folds_0_1_2_3_4/postprocessing.{json,pkl}   (after
                                                      nnUNetv2_find_best_configuration)

:meth:`NnunetFolder.open` checks it, picks the folds and checkpoint files, and refuses what
medseg cannot run (nnU-Net v1 folders, unknown plans formats, cascades) with one line naming
the path. Only 3d_fullres-like and 2d configurations are run: ``3d_lowres`` and cascade stages
(``previous_stage``) are refused.

Labels. ``dataset.json["labels"]`` maps names to label values, or, for region-based models,
names to lists of label values (regions, possibly overlapping). A label-based model has one
output channel per label value (background included, ``"ignore"`` left out) and channel ``k``
is the ``k``-th smallest value. A region-based model has one sigmoid output per foreground
region, in dataset.json order, and ``regions_class_order[i]`` is the label value written where
region ``i`` wins (later regions overwrite earlier ones).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import CheckpointError, DataError, UsageError
from medseg.models.nnunet_network import OLD_STYLE_KEYS, architecture_of
from medseg.sources.nnunet.safe_load import (NnunetCheckpoint, read_checkpoint, read_json,
                                     read_postprocessing)

__all__ = ["NnunetFolder", "CHECKPOINT_NAMES", "REFUSED_CONFIGURATIONS", "regions_of"]

log = logging.getLogger(__name__)

#: ``checkpoint=`` shorthands and the file each one names in every fold folder.
CHECKPOINT_NAMES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}

#: Configurations medseg refuses by name (cascade stages are refused by ``previous_stage``).
REFUSED_CONFIGURATIONS = ("3d_lowres",)

_AUTO_FOLDS = "all-available"


@dataclass(frozen=True)
class NnunetFolder:
    """A checked nnU-Net v2 trained-model folder and the folds selected from it.

    Attributes
    ----------
    path : Path
        The trained-model folder (``Trainer__Plans__configuration``).
    plans : dict
        ``plans.json``.
    dataset : dict
        ``dataset.json``.
    configuration : str
        The configuration the folder was trained with, e.g. ``"3d_fullres"`` or ``"2d"``.
    trainer : str
        The trainer class name, e.g. ``"nnUNetTrainer"``.
    checkpoints : tuple of Path
        One checkpoint file per selected fold, in fold order.
    folds : tuple of str
        The selected folds: ``"0"``, ``"1"``, ... or ``"all"`` (``fold_all``).
    """

    path: Path
    plans: dict = field(repr=False)
    dataset: dict = field(repr=False)
    configuration: str
    trainer: str
    checkpoints: tuple[Path, ...]
    folds: tuple[str, ...]

    @classmethod
    def open(cls, path: str | os.PathLike,
             folds: Sequence[int | str] | str | None = None,
             checkpoint: str = "final") -> NnunetFolder:
        """Check an nnU-Net v2 trained-model folder and select folds and checkpoints.

        Parameters
        ----------
        path : str or os.PathLike
            The trained-model folder (holding ``plans.json``, ``dataset.json``, ``fold_*``).
        folds : sequence of int or str, or str, optional
            Folds to use, e.g. ``[0, 1]`` or ``["all"]`` (``fold_all``). None or
            ``"all-available"``: every ``fold_<number>`` holding the checkpoint, as nnU-Net
            picks them (``fold_all`` only when there is no numbered fold). A single string
            is one fold (``"all"`` is ``fold_all``).
        checkpoint : str
            ``"final"`` (``checkpoint_final.pth``), ``"best"`` (``checkpoint_best.pth``), or a
            file name ending in ``.pth``.

        Raises
        ------
        CheckpointError
            Naming the path: not an nnU-Net v2 model folder (the message lists the model
            folders when ``path`` is a dataset folder holding them), an unreadable or unknown
            plans/dataset format, a refused configuration, a missing fold or checkpoint file.
        UsageError
            A bad ``folds`` or ``checkpoint`` argument.
        """
        root = Path(path)
        _check_model_folder(root)
        plans = read_json(root / "plans.json")
        dataset = read_json(root / "dataset.json")
        _check_plans(plans, root / "plans.json")
        file_name = _checkpoint_file_name(checkpoint)
        selected = _select_folds(root, folds, file_name)
        files = tuple(root / f"fold_{fold}" / file_name for fold in selected)
        trainer, configuration = _identity(root, files[0])
        folder = cls(path=root, plans=plans, dataset=dataset, configuration=configuration,
                     trainer=trainer, checkpoints=files, folds=selected)
        folder.configuration_plans  # noqa: B018 - fail now on a bad configuration
        _check_labels(dataset, root / "dataset.json")
        return folder

    @property
    def configuration_plans(self) -> dict:
        """``plans["configurations"][configuration]`` with ``inherits_from`` resolved.

        A configuration that ``inherits_from`` another starts from that one's (resolved)
        entries and overrides them with its own. The network description is always in the
        new style (``"architecture"``; an old-style description is mapped to it, see
        :mod:`medseg.models.nnunet_network`).

        Raises
        ------
        CheckpointError
            The configuration is not in the plans, inherits in a circle, is refused
            (3d_lowres, a cascade stage), or describes its network in an unknown way.
        """
        source = self.path / "plans.json"
        resolved = _resolve(self.plans["configurations"], self.configuration, (), source)
        if self.configuration in REFUSED_CONFIGURATIONS or resolved.get("previous_stage"):
            raise CheckpointError(
                f"configuration {self.configuration!r} is a low-resolution or cascade stage, "
                "which medseg does not run: use a 3d_fullres or 2d model folder", source)
        resolved["architecture"] = architecture_of(resolved, source)
        for key in OLD_STYLE_KEYS:
            resolved.pop(key, None)
        return resolved

    @property
    def num_inputs(self) -> int:
        """Input channels: ``len(dataset.json["channel_names"])`` (or ``"modality"``)."""
        return len(_channel_names(self.dataset, self.path / "dataset.json"))

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The input channels' names in channel order (``dataset.json["channel_names"]``:
        ``{"0": "T2", "1": "ADC"}`` -> ``("T2", "ADC")``)."""
        names = _channel_names(self.dataset, self.path / "dataset.json")
        return tuple(str(names[k]) for k in sorted(names, key=lambda k: int(k)
                                                   if str(k).isdigit() else 0))

    @property
    def num_outputs(self) -> int:
        """Output channels: the foreground regions, or else the label values (with 0)."""
        regions = regions_of(self.dataset)
        return len(regions) if regions is not None else len(_label_values(self.dataset))

    def label_names(self) -> dict[int, str]:
        """Label value to name, background included, ``"ignore"`` left out.

        For a region-based model, region ``i`` (in dataset.json order) is named at the label
        value ``regions_class_order[i]`` that prediction writes for it.
        """
        labels = _labels(self.dataset)
        regions = regions_of(self.dataset)
        background = {0: next(n for n, v in labels.items() if _values(v) == (0,))}
        if regions is None:
            return {**background, **{_values(v)[0]: name for name, v in labels.items()
                                     if name != "ignore"}}
        names = [name for name, v in labels.items() if name != "ignore" and any(_values(v))]
        order = [int(v) for v in self.dataset["regions_class_order"]]
        return {**background, **dict(zip(order, names))}

    def read_checkpoints(self) -> list[NnunetCheckpoint]:
        """Read each selected fold's checkpoint (safely, see :mod:`medseg.sources.nnunet.safe_load`).

        Raises
        ------
        CheckpointError
            A checkpoint is unreadable or unsafe, or says it was trained with another
            configuration than the folder's.
        """
        checkpoints = [read_checkpoint(path) for path in self.checkpoints]
        for checkpoint in checkpoints:
            if checkpoint.configuration not in (None, self.configuration):
                raise CheckpointError(
                    f"trained with configuration {checkpoint.configuration!r}, but the model "
                    f"folder {self.path.name} is {self.configuration!r}", checkpoint.path)
        return checkpoints

    def postprocessing(self) -> list[dict] | None:
        """The post-processing nnU-Net chose for this model, or None when there is none.

        Read from ``postprocessing.json`` (preferred) or ``postprocessing.pkl`` (read with an
        allow-list, nothing executed) in the model folder or, as
        ``nnUNetv2_find_best_configuration`` writes them, in
        ``crossval_results_folds_<folds>`` (the one of the selected folds, else the only one).

        Returns
        -------
        list of dict or None
            The steps in order, as :func:`~medseg.sources.nnunet.safe_load.read_postprocessing`
            gives them.

        Raises
        ------
        CheckpointError
            The file is unreadable, unsafe, or names a step medseg does not know.
        """
        found = _postprocessing_file(self.path, self.folds)
        return None if found is None else read_postprocessing(found)


def regions_of(dataset: Mapping) -> tuple[tuple[int, ...], ...] | None:
    """The foreground regions of a region-based dataset.json (None for a label-based one).

    A dataset is region-based when some ``labels`` entry lists more than one value. Every
    non-background entry is then a region (a single value is a one-value region), in
    dataset.json order; ``"ignore"`` is left out.
    """
    labels = _labels(dataset)
    if not any(len(_values(v)) > 1 for v in labels.values()):
        return None
    return tuple(_values(v) for name, v in labels.items()
                 if name != "ignore" and any(_values(v)))


def _values(value: Any) -> tuple[int, ...]:
    """A dataset.json label entry as a tuple of label values."""
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def _labels(dataset: Mapping) -> dict:
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise DataError(f"dataset.json 'labels' is {labels!r}: expected a mapping of names to "
                        "label values")
    return dict(labels)


def _label_values(dataset: Mapping) -> list[int]:
    """The distinct label values of a label-based dataset.json, sorted, without "ignore"."""
    return sorted({_values(v)[0] for name, v in _labels(dataset).items() if name != "ignore"})


def _channel_names(dataset: Mapping, source: Path) -> Mapping:
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, Mapping) or not names:
        raise CheckpointError(f"'channel_names' is {names!r}: expected a mapping of channel "
                              "numbers to names", source)
    return names


def _check_labels(dataset: Mapping, source: Path) -> None:
    """Fail at open on the dataset.json label descriptions medseg could not follow."""
    _channel_names(dataset, source)
    try:
        labels = _labels(dataset)
        backgrounds = [name for name, v in labels.items() if _values(v) == (0,)]
        regions = regions_of(dataset)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"'labels' holds a value that is not a label number or a "
                              f"list of them: {exc}", source) from exc
    if not backgrounds:
        raise CheckpointError(f"'labels' has no background (value 0): {labels}", source)
    order = dataset.get("regions_class_order")
    if regions is not None and (not isinstance(order, list) or len(order) != len(regions)):
        raise CheckpointError(f"a region-based model needs 'regions_class_order' with one "
                              f"label value per region ({len(regions)}), found {order!r}", source)


def _check_model_folder(root: Path) -> None:
    """Refuse a path that is not an nnU-Net v2 trained-model folder, saying what it is."""
    if not root.is_dir():
        raise CheckpointError("nnU-Net model folder not found", root)
    if (root / "plans.json").is_file() and (root / "dataset.json").is_file():
        return
    if (root / "plans.pkl").is_file() or any(root.glob("*plans*.pkl")):
        raise CheckpointError("an nnU-Net v1 model folder (plans pickled as .pkl): medseg runs "
                              "nnU-Net v2 folders (plans.json, dataset.json)", root)
    models = sorted(p.name for p in root.iterdir() if (p / "plans.json").is_file())
    if models:
        raise CheckpointError("a dataset folder, not a trained-model folder: pass one of the "
                              f"model folders in it: {', '.join(models)}", root)
    if root.name.startswith("fold_") and (root.parent / "plans.json").is_file():
        raise CheckpointError(f"a fold folder: pass the model folder {root.parent} and select "
                              f"the fold with folds={root.name[5:]!r}", root)
    raise CheckpointError("not an nnU-Net v2 model folder: expected plans.json, dataset.json "
                          "and fold_* folders", root)


def _check_plans(plans: Mapping, source: Path) -> None:
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping) or not configurations:
        raise CheckpointError("unknown plans format: no 'configurations' (an nnU-Net v2 "
                              "plans.json has one entry per configuration)", source)


def _resolve(configurations: Mapping, name: str, seen: tuple[str, ...], source: Path) -> dict:
    """One configuration with ``inherits_from`` resolved, parents first."""
    if name not in configurations:
        raise CheckpointError(f"configuration {name!r} is not in the plans (they have "
                              f"{', '.join(map(repr, configurations))})", source)
    if name in seen:
        raise CheckpointError(f"configurations inherit in a circle: {' -> '.join(seen)} -> "
                              f"{name}", source)
    own = copy.deepcopy(dict(configurations[name]))
    parent = own.get("inherits_from")
    if parent is None:
        return own
    return {**_resolve(configurations, parent, (*seen, name), source), **own}


def _checkpoint_file_name(checkpoint: str) -> str:
    if checkpoint in CHECKPOINT_NAMES:
        return CHECKPOINT_NAMES[checkpoint]
    if isinstance(checkpoint, str) and checkpoint.endswith(".pth") and "/" not in checkpoint:
        return checkpoint
    raise UsageError(f"checkpoint is {checkpoint!r}: expected 'final', 'best' or a file name "
                     "ending in .pth (e.g. 'checkpoint_latest.pth')")


def _select_folds(root: Path, folds: Sequence[int | str] | str | None,
                  file_name: str) -> tuple[str, ...]:
    """The fold names to use, each with ``file_name`` present."""
    present = {p.name[5:] for p in root.glob("fold_*") if p.is_dir()}
    if folds is None or folds == _AUTO_FOLDS:
        usable = sorted((f for f in present if f.isdigit() and (root / f"fold_{f}" /
                                                                 file_name).is_file()), key=int)
        if not usable and (root / "fold_all" / file_name).is_file():
            usable = ["all"]
        if not usable:
            raise CheckpointError(f"no fold_* folder holds {file_name}", root)
        return tuple(usable)
    selected = _fold_names([folds] if isinstance(folds, (str, int)) else folds)
    for fold in selected:
        if fold not in present:
            raise CheckpointError(f"fold {fold!r} not found: the folder has "
                                  f"{', '.join(_sorted_folds(present)) or 'no fold_* folders'}",
                                  root)
        if not (root / f"fold_{fold}" / file_name).is_file():
            has = sorted(p.name for p in (root / f"fold_{fold}").glob("*.pth"))
            raise CheckpointError(f"checkpoint file {file_name} not found (the fold has "
                                  f"{', '.join(has) or 'no .pth files'})", root / f"fold_{fold}")
    return selected


def _fold_names(folds: Sequence[int | str]) -> tuple[str, ...]:
    names = tuple(str(f).strip() for f in folds)
    bad = [f for f in names if not (f.isdigit() or f == "all")]
    if bad or not names or len(set(names)) != len(names):
        raise UsageError(f"folds is {list(folds)!r}: expected distinct fold numbers or 'all', "
                         f"or {_AUTO_FOLDS!r}")
    return names


def _sorted_folds(folds: set[str]) -> list[str]:
    return sorted(folds, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def _identity(root: Path, first_checkpoint: Path) -> tuple[str, str]:
    """(trainer, configuration) from the folder name, else from the first checkpoint."""
    parts = root.name.split("__")
    if len(parts) == 3 and all(parts):
        return parts[0], parts[2]
    checkpoint = read_checkpoint(first_checkpoint)
    if not checkpoint.configuration:
        raise CheckpointError("cannot tell the configuration: the folder is not named "
                              "<Trainer>__<Plans>__<configuration> and its checkpoint does not "
                              "say", root)
    log.info("%s: configuration %r read from %s", root, checkpoint.configuration,
             first_checkpoint)
    return checkpoint.trainer_name, checkpoint.configuration


def _postprocessing_file(root: Path, folds: tuple[str, ...]) -> Path | None:
    """The post-processing file of a model folder (JSON before pickle), or None."""
    candidates = [root, root / f"crossval_results_folds_{'_'.join(folds)}"]
    others = sorted(root.glob("crossval_results_folds_*"))
    if len(others) == 1:
        candidates.append(others[0])
    for folder in candidates:
        for name in ("postprocessing.json", "postprocessing.pkl"):
            if (folder / name).is_file():
                return folder / name
    if others:
        log.warning("%s: post-processing of several cross-validations (%s), none of the "
                    "selected folds; none applied", root, ", ".join(p.name for p in others))
    return None
