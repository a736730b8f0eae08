"""matplotlib, imported on demand: Agg-backed figures rendered to PNG bytes.

matplotlib is the optional ``report`` extra. Figures are built with
:class:`matplotlib.figure.Figure` on an explicit Agg canvas, so reports never
touch pyplot's global state or the user's interactive backend.
"""

from __future__ import annotations

import io
from typing import Any

from medseg.errors import MedsegError

__all__ = ["new_figure", "figure_png"]

INSTALL_HINT = "reports need matplotlib: pip install medseg[report]"


def new_figure(width_in: float, height_in: float, **kwargs: Any) -> Any:
    """A matplotlib Figure of the given size (inches) attached to an Agg canvas."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MedsegError(INSTALL_HINT) from exc
    fig = Figure(figsize=(width_in, height_in), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """The PNG bytes of ``fig``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return buffer.getvalue()
