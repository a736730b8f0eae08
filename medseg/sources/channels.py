"""DICOM stacks given as a model's input channels, checked against its model card.

A series or object holding several image stacks (Dixon water / fat, echoes,
magnitude / phase; :mod:`medseg.io.dicom.stacks`) gives a multi-channel model
its input as ``--stack water --stack fat``: one stack per channel, **in the order
given**. Two checks keep that order honest:

* the number of stacks must be the card's channel count (:func:`check_stack_count`,
  before any case is read);
* where the card names its channels (``ModelCard.channels``, from the training
  manifest's ``channel_names``) and a given stack carries one of those names at
  another position, the image is refused in one line that says which stack is
  which channel and gives the option in the model's order
  (:func:`stack_order_problem`). medseg does not reorder the stacks itself:
  the order given is the order used, so ``--stack 2 --stack 1`` never reads as
  ``--stack 1 --stack 2``, and a mismatch is said rather than repaired silently.
  Where the names do not say (the card names no channels, or names them
  "T1" / "T2" while the stacks are "echo1" / "echo2"), the order given is used as given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from medseg.card import ModelCard
from medseg.errors import UsageError

__all__ = ["check_stack_count", "stack_order_problem", "channels_text"]


def channels_text(card: ModelCard) -> str:
    """``"2 input channels (water, fat)"``: the card's channel count and names."""
    count = f"{card.in_channels} input channel{'s' if card.in_channels != 1 else ''}"
    return f"{count} ({', '.join(card.channels)})" if card.channels else count


def check_stack_count(stacks: Sequence[int | str], card: ModelCard, model: str,
                      source: str | os.PathLike | None = None) -> None:
    """Refuse ``--stack`` given a number of times other than the model's channel count.

    Parameters
    ----------
    stacks : the stacks given (``--stack``, in order); none is always accepted (each
        input then gives its only stack, or a manifest its own).
    card : the model's card; ``model``: where the model came from (for the message).
    source : the input, named in the message.

    Raises
    ------
    UsageError
        one line: the stacks given, the channels the model takes (named when the card
        names them).
    """
    if stacks and len(stacks) != card.in_channels:
        given = " ".join(f"--stack {s}" for s in stacks)
        raise UsageError(f"{given} gives {len(stacks)} stack(s) as channels, but the model "
                         f"{model} takes {channels_text(card)}: give one --stack per channel, "
                         "in the model's channel order", source)


def stack_order_problem(stacks: Sequence[tuple[str, Sequence[str]]],
                        channels: Sequence[str]) -> str | None:
    """What is wrong with the order of ``stacks`` given the model's ``channels``, or None.

    Parameters
    ----------
    stacks : per input channel, in order, the stack read into it: its label and the
        names ``--stack`` takes (``meta["channel_stacks"]`` of
        :func:`medseg.io.cases.read_case_image`).
    channels : the model card's channel names (empty: nothing to check).

    Returns
    -------
    None when no stack carries a channel name at another position than that channel's,
    else one sentence naming the first such stack and giving the option in the model's
    order (the channel names themselves when every channel is among the stacks given).

    >>> stack_order_problem([("fat", ("2", "fat", "f")), ("water", ("1", "water", "w"))],
    ...                     ["Water", "Fat"])  # doctest: +NORMALIZE_WHITESPACE
    "channel 1 is stack 'fat', which is the model's channel 2 (Fat): the model takes
     Water, Fat in this order; give --stack water --stack fat"
    """
    wanted = [_norm(c) for c in channels]
    if not wanted or len(wanted) != len(stacks):
        return None
    names = [{_norm(n) for n in stack_names} for _, stack_names in stacks]
    for i, (label, _) in enumerate(stacks):
        for j, name in enumerate(wanted):
            if j != i and not name.isdigit() and name in names[i]:
                return (f"channel {i + 1} is stack {label!r}, which is the model's channel "
                        f"{j + 1} ({channels[j]}): the model takes {', '.join(channels)} in "
                        f"this order; give {_in_order(stacks, names, wanted)}")
    return None


def _in_order(stacks, names: list[set[str]], wanted: list[str]) -> str:
    """``--stack A --stack B`` in the model's order, or a plain request when some channel
    names no stack given."""
    if all(any(w in n for n in names) for w in wanted):
        return " ".join(f"--stack {w}" for w in wanted)
    return "the stacks in the model's channel order"


def _norm(name: str) -> str:
    """A channel or stack name compared without case, spaces or hyphens ("In-phase" is
    "in_phase")."""
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")
