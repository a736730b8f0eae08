"""Training / validation splits of a manifest's cases: one hold-out share, or k folds.

* :func:`split_train_val` -- the manifest's ``val`` split, else a seeded random share;
* :func:`kfold_splits` -- k-fold cross-validation splits of case ids (a seeded shuffle,
  then k nearly equal parts, as scikit-learn's ``KFold(shuffle=True)`` makes them);
* :func:`read_splits` / :func:`write_splits` -- ``splits.json`` in nnU-Net's form, a list
  of ``{"train": [case ids], "val": [case ids]}``, one entry per fold;
* :func:`fold_cases` -- the cases of one fold.

Cross-validation folds the manifest's ``train`` and ``val`` cases together
(:func:`cv_cases`); ``test`` cases never enter a split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.io.cases import Case

__all__ = ["cv_cases", "fold_cases", "kfold_splits", "read_splits", "split_train_val",
           "write_splits"]

Split = dict[str, list[str]]


def split_train_val(cases: Sequence[Case], val_fraction: float, seed: int = 0
                    ) -> tuple[list[Case], list[Case]]:
    """Train and validation cases: the manifest's ``val`` split, else a seeded random share.

    At least one case is held out when ``val_fraction > 0`` and there are >= 2 cases.
    """
    train = [c for c in cases if c.split == "train"]
    val = [c for c in cases if c.split == "val"]
    if val or val_fraction <= 0 or len(train) < 2:
        return train, val
    n_val = max(1, int(round(val_fraction * len(train))))
    order = np.random.default_rng(seed).permutation(len(train))
    held = set(order[:n_val].tolist())
    return ([c for i, c in enumerate(train) if i not in held],
            [c for i, c in enumerate(train) if i in held])


def cv_cases(cases: Sequence[Case]) -> list[Case]:
    """The cases cross-validation folds: every ``train`` and ``val`` case, in manifest order."""
    return [c for c in cases if c.split in ("train", "val")]


def kfold_splits(case_ids: Sequence[str], k: int, seed: int = 0) -> list[Split]:
    """``k`` folds of ``case_ids``: each case is in exactly one fold's ``val``.

    The sorted ids are shuffled with ``numpy.random.default_rng(seed)`` and cut into
    ``k`` parts whose sizes differ by at most one (the first ``n % k`` parts are one
    larger). Fold ``i`` validates on part ``i`` and trains on the rest; both lists
    are sorted. The result depends only on the set of ids, ``k`` and ``seed``.

    Examples
    --------
    >>> splits = kfold_splits(["a", "b", "c", "d", "e"], 2, seed=0)
    >>> sorted(len(s["val"]) for s in splits), sorted(sum((s["val"] for s in splits), []))
    ([2, 3], ['a', 'b', 'c', 'd', 'e'])
    """
    ids = sorted(set(case_ids))
    if not 2 <= k <= len(ids):
        raise ConfigError(f"{k} folds of {len(ids)} cases: expected 2 <= folds <= {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = [set(part.tolist()) for part in np.array_split(order, k)]
    return [{"train": sorted(ids[i] for i in range(len(ids)) if i not in held),
             "val": sorted(ids[i] for i in held)} for held in folds]


def write_splits(path: str | os.PathLike, splits: Sequence[Split]) -> Path:
    """Write ``splits`` as JSON (atomically; the folder is created)."""
    from medseg.io.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps([dict(s) for s in splits], indent=1) + "\n")
    return path


def read_splits(path: str | os.PathLike, case_ids: Sequence[str] | None = None) -> list[Split]:
    """Read a ``splits.json``; with ``case_ids``, check that its folds cover exactly them.

    Raises ConfigError naming the file when it is not a list of ``{"train", "val"}``
    lists of case ids, when a case is in two folds' ``val`` or in a fold's ``train``
    and ``val``, or when its cases differ from ``case_ids`` (those missing and unknown).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("splits file does not exist", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"splits file is not readable JSON: {exc}", path) from exc
    splits = [_split(entry, i, path) for i, entry in enumerate(_list(raw, path))]
    _check_partition(splits, path)
    if case_ids is not None:
        _check_cases(splits, set(case_ids), path)
    return splits


def _list(raw: Any, path: Path) -> list[Any]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError('a splits file is a non-empty list of {"train": [...], "val": [...]}',
                          path)
    return raw


def _split(entry: Any, index: int, path: Path) -> Split:
    ok = (isinstance(entry, dict) and set(entry) == {"train", "val"}
          and all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                  for v in entry.values()))
    if not ok:
        raise ConfigError(f'fold {index}: expected {{"train": [case ids], "val": [case ids]}}, '
                          f"got {str(entry)[:80]}", path)
    both = sorted(set(entry["train"]) & set(entry["val"]))
    if both:
        raise ConfigError(f"fold {index}: case {both[0]!r} is in both train and val", path)
    return {"train": list(entry["train"]), "val": list(entry["val"])}


def _check_partition(splits: list[Split], path: Path) -> None:
    seen: dict[str, int] = {}
    for index, split in enumerate(splits):
        for case in split["val"]:
            if case in seen:
                raise ConfigError(f"case {case!r} is validated in folds {seen[case]} and "
                                  f"{index}: each case belongs to one fold's val", path)
            seen[case] = index


def _check_cases(splits: list[Split], expected: set[str], path: Path) -> None:
    held = {c for s in splits for c in s["val"]}
    missing, unknown = sorted(expected - held), sorted(held - expected)
    if missing or unknown:
        parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                 for v, what in ((missing, "cases not in it"), (unknown, "unknown cases"))
                 if v]
        raise ConfigError(f"splits do not match the manifest's training cases: "
                          f"{'; '.join(parts)}; delete the file to make new splits", path)


def fold_cases(cases: Sequence[Case], splits: Sequence[Split], fold: int,
               path: str | os.PathLike | None = None) -> tuple[list[Case], list[Case]]:
    """The ``(train, val)`` cases of fold ``fold`` (from 0), in the order of ``cases``."""
    if not 0 <= fold < len(splits):
        raise ConfigError(f"data.fold = {fold}: the splits hold folds 0 to {len(splits) - 1}",
                          path)
    train, val = set(splits[fold]["train"]), set(splits[fold]["val"])
    return ([c for c in cases if c.case_id in train], [c for c in cases if c.case_id in val])
