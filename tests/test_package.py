"""The public names of ``import medseg``: ``__all__`` is written out and each name resolves."""

from __future__ import annotations

import medseg


def test_all_lists_every_lazy_name_and_each_resolves():
    assert medseg.__all__ == sorted(medseg._LAZY) + ["__version__"]
    for name in medseg.__all__:
        assert getattr(medseg, name) is not None, name
    assert medseg.Volume.__module__ == "medseg.volume"
