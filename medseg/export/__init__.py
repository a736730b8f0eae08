"""``medseg export``: a model and its whole pipeline as a folder that runs without torch.

:func:`export_model` takes anything ``medseg predict`` takes (a checkpoint, a run folder or
a list of checkpoints: a fold ensemble, ``nnunet:FOLDER``, a
:class:`~medseg.sources.LoadedModel`) and writes ``DIR``::

    DIR/predict.py         python DIR/predict.py INPUT OUTPUT [--tta] [--probabilities P]
    DIR/_runner/           the runner: medseg's NumPy-only modules, copied (medseg.export.vendor)
    DIR/card.json          the model card (ModelCard.to_dict)
    DIR/model.json         the manifest: format, network files, ensemble combine rule,
                           medseg's preprocessing steps resolved (or nnU-Net's reader), fp16
    DIR/networks/member_<i>.onnx   one ONNX network per ensemble member (opset 17,
                           dynamic batch and spatial axes; input "image", output "logits")
    DIR/requirements.txt   what the runner needs: numpy, scipy, nibabel, onnxruntime
                           (and scikit-image for nnU-Net's resampling); never torch or medseg

The runner does what ``medseg predict`` does for NIfTI (:mod:`medseg.export.runtime.pipeline`).
The folder is built beside ``DIR`` and renamed into place, so a failed export leaves
nothing; an earlier export in ``DIR`` is replaced, any other non-empty folder is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medseg.errors import ExportError, UsageError, check_option

__all__ = ["FORMATS", "REQUIREMENTS", "export_model"]

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
#: What the runner imports, by what it does (scikit-image: nnU-Net's resampling matrices).
REQUIREMENTS = ("numpy>=1.24", "scipy>=1.10", "nibabel>=5.0", "onnxruntime>=1.17")
NNUNET_REQUIREMENTS = ("scikit-image>=0.21",)


def export_model(model: Any, output: str | os.PathLike, format: str = "onnx",
                 fp16: bool = False) -> Path:
    """Export ``model`` with its whole pipeline to the folder ``output`` (module docstring).

    Parameters
    ----------
    model : anything :func:`medseg.sources.load_model` takes.
    output : the export folder (created; an earlier export there is replaced).
    format : ``"onnx"``.
    fp16 : store and run the networks in half precision (the runner's labels then agree
        with torch fp32 less closely: see ``benchmarks/bench_export.py``).

    Returns
    -------
    The folder.

    Raises
    ------
    ExportError : a layer ONNX cannot express (named, with the format that runs it).
    UsageError : an unknown format, or ``output`` is a non-empty folder that is no export.
    CheckpointError : the model cannot be loaded.
    """
    from medseg.export.runtime.pipeline import CARD, MANIFEST
    from medseg.export.vendor import write_runner
    from medseg.inference.backends import network_to_onnx
    from medseg.io.atomic import atomic_write_text
    from medseg.runtime import Runtime
    from medseg.sources import load_model

    check_option(format, FORMATS, "export format")
    target = Path(output)
    _check_target(target, MANIFEST)
    loaded = load_model(model, Runtime.cpu())
    card = loaded.card
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        names = []
        for i, network in enumerate(loaded.networks):
            name = f"networks/member_{i}.onnx"
            (build / name).parent.mkdir(exist_ok=True)
            network_to_onnx(network, build / name, card.in_channels, card.window.roi_size, fp16)
            names.append(name)
        atomic_write_text(build / CARD, json.dumps(card.to_dict(), indent=1) + "\n")
        atomic_write_text(build / MANIFEST,
                          json.dumps(_manifest(loaded, names, fp16), indent=1) + "\n")
        atomic_write_text(build / "requirements.txt", "\n".join(requirements(card)) + "\n")
        write_runner(build)
        _replace(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log.info("exported %s (%d network(s)) to %s", loaded.source, len(names), target)
    return target


def requirements(card: Any) -> list[str]:
    """The runner's requirements for ``card`` (:data:`REQUIREMENTS`, and scikit-image for
    nnU-Net's preprocessing)."""
    extra = NNUNET_REQUIREMENTS if card.preprocessing.kind == "nnunet" else ()
    return [*REQUIREMENTS, *extra]


def _manifest(loaded: Any, networks: list[str], fp16: bool) -> dict[str, Any]:
    import medseg
    from medseg.inference.backends import INPUT, OPSET, OUTPUT

    pre = loaded.card.preprocessing
    manifest: dict[str, Any] = {
        "format": "onnx", "opset": OPSET, "fp16": bool(fp16), "input": INPUT,
        "output": OUTPUT, "networks": networks, "combine": loaded.combine,
        "source": str(loaded.source), "medseg_version": medseg.__version__,
    }
    if pre.kind == "nnunet":
        from medseg.transforms.nnunet import READERS

        manifest["reader_reorients"] = READERS[pre.reader]
    else:
        manifest["steps"] = pre.step_list()
    return manifest


def _check_target(target: Path, manifest: str) -> None:
    if target.exists() and not target.is_dir():
        raise UsageError(f"export folder {target} is a file")
    if target.is_dir() and any(target.iterdir()) and not (target / manifest).is_file():
        raise UsageError(f"export folder {target} holds other files; give a new or empty "
                         "folder (an earlier export there is replaced)")


def _replace(build: Path, target: Path) -> None:
    """``build`` renamed to ``target``; an earlier export there is removed afterwards."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(build, target)
    except OSError as exc:
        if old is not None:
            os.replace(old, target)
        raise ExportError(f"cannot move the export into place ({exc.strerror or exc})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
