"""The kinds of preprocessing a model card can carry, read from their JSON form.

A model card's preprocessing is typed: each kind has ``kind`` (its name), ``apply(image,
label=None, device=None) -> Preprocessed`` (the network input and the History that undoes
it), ``to_dict()`` and ``resamples_logits`` (whether the network's outputs return to the
input grid as logits, activated afterwards). Two kinds exist:

* medseg's :class:`~medseg.transforms.pipeline.Preprocessing` (JSON: its config, no
  ``kind`` key, as every medseg checkpoint has always stored it);
* nnU-Net's :class:`~medseg.transforms.nnunet.NnunetPreprocessing` (``"kind": "nnunet"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medseg.transforms.nnunet import NnunetPreprocessing
from medseg.transforms.pipeline import Preprocessing

__all__ = ["KINDS", "preprocessing_from_dict"]

#: Preprocessing kinds by the name their JSON form carries under ``"kind"``.
KINDS: dict[str, type] = {NnunetPreprocessing.kind: NnunetPreprocessing}


def preprocessing_from_dict(data: Mapping[str, Any] | Any) -> Any:
    """The typed preprocessing of a model card from its JSON form (a typed object is
    returned as it is): ``"kind"`` names one of :data:`KINDS`; no ``kind`` is medseg's
    :class:`Preprocessing` config.

    Raises
    ------
    ConfigError / CheckpointError : the form is not valid for its kind.
    """
    if isinstance(data, (Preprocessing, *KINDS.values())):
        return data
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind in KINDS:
        return KINDS[kind].from_dict(data)
    return Preprocessing.from_config(data)
