"""Training logs: ``log.csv`` (one row per epoch), TensorBoard when installed, ``curves.png``.

The CSV is rewritten atomically from the full history after every epoch, so a
crash never leaves half a row and a resumed run continues the same file.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_path, atomic_write_text

__all__ = ["write_csv", "plot_curves", "TensorBoard", "append_param_hash"]

log = logging.getLogger(__name__)


def write_csv(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Write every epoch's row (union of keys, in first-seen order) to ``path``."""
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


@functools.lru_cache(maxsize=1)
def _say_no_matplotlib() -> None:
    """Say once per process (not every epoch) why there is no curves.png."""
    log.info("matplotlib is not installed: no curves.png (pip install matplotlib)")


def plot_curves(path: Path, history: Sequence[dict[str, Any]]) -> bool:
    """Loss and validation Dice per epoch as a PNG; False (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say_no_matplotlib()
        return False
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker=".")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    val = [(r["epoch"], r["val_mean_dice"]) for r in history
           if isinstance(r.get("val_mean_dice"), float) and not math.isnan(r["val_mean_dice"])]
    if val:
        ax_dice.plot(*zip(*val), marker="o")
    ax_dice.set(xlabel="epoch", ylabel="mean Dice", title="validation Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True


class TensorBoard:
    """Scalars to TensorBoard when ``tensorboard`` is installed; silently nothing otherwise."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("tensorboard not installed: only log.csv is written")
            return
        self.writer = SummaryWriter(str(folder))

    def scalars(self, row: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if isinstance(value, float) and not math.isnan(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def append_param_hash(path: Path, model: Any, epoch: int, step: int) -> None:
    """Append ``epoch step sha256(parameters)`` to ``path`` (checks that DDP ranks agree)."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as handle:
        handle.write(f"{epoch} {step} {digest.hexdigest()}\n")
