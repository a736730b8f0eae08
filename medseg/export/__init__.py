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
                           dynamic batch and spatial axes; input "image", output "logits"),
                           or member_<i>.xml and .bin with ``format="openvino"``: OpenVINO IR,
                           converted from that ONNX network (``openvino.convert_model``,
                           weights kept in float32 unless ``fp16``)
    DIR/requirements.txt   what the runner needs: numpy, scipy, nibabel, and onnxruntime or
                           openvino (and scikit-image for nnU-Net's resampling); never torch
                           or medseg

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

FORMATS = ("onnx", "openvino")
#: What the runner imports, by what it does (scikit-image: nnU-Net's resampling matrices;
#: the engine of the export's format: :data:`ENGINE_REQUIREMENTS`).
REQUIREMENTS = ("numpy>=1.24", "scipy>=1.10", "nibabel>=5.0")
ENGINE_REQUIREMENTS = {"onnx": "onnxruntime>=1.17", "openvino": "openvino>=2024.0"}
NNUNET_REQUIREMENTS = ("scikit-image>=0.21",)


def export_model(model: Any, output: str | os.PathLike, format: str = "onnx",
                 fp16: bool = False) -> Path:
    """Export ``model`` with its whole pipeline to the folder ``output`` (module docstring).

    Parameters
    ----------
    model : anything :func:`medseg.sources.load_model` takes.
    output : the export folder (created; an earlier export there is replaced).
    format : ``"onnx"`` (the runner uses ONNX Runtime) or ``"openvino"`` (OpenVINO IR;
        the runner uses OpenVINO, and the export needs openvino installed).
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
        (build / "networks").mkdir()
        names = [_write_network(network, build / "networks" / f"member_{i}", card, format,
                                fp16) for i, network in enumerate(loaded.networks)]
        names = [path.relative_to(build).as_posix() for path in names]
        atomic_write_text(build / CARD, json.dumps(card.to_dict(), indent=1) + "\n")
        atomic_write_text(build / MANIFEST,
                          json.dumps(_manifest(loaded, names, format, fp16), indent=1) + "\n")
        atomic_write_text(build / "requirements.txt",
                          "\n".join(requirements(card, format)) + "\n")
        write_runner(build)
        _replace(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log.info("exported %s (%d network(s)) to %s", loaded.source, len(names), target)
    return target


def requirements(card: Any, format: str = "onnx") -> list[str]:
    """The runner's requirements for ``card`` in ``format`` (:data:`REQUIREMENTS`, the
    format's engine, and scikit-image for nnU-Net's preprocessing)."""
    extra = NNUNET_REQUIREMENTS if card.preprocessing.kind == "nnunet" else ()
    return [*REQUIREMENTS, ENGINE_REQUIREMENTS[format], *extra]


def _write_network(network: Any, stem: Path, card: Any, format: str, fp16: bool) -> Path:
    """``network`` as ``stem.onnx``, or for ``"openvino"`` as OpenVINO IR ``stem.xml`` (and
    ``.bin``) converted from that ONNX file, which is then removed; returns the file the
    manifest names."""
    from medseg.inference.backends import network_to_onnx, onnx_to_openvino

    onnx = stem.with_suffix(".onnx")
    network_to_onnx(network, onnx, card.in_channels, card.window.roi_size, fp16)
    if format == "onnx":
        return onnx
    xml = stem.with_suffix(".xml")
    onnx_to_openvino(onnx, xml)
    onnx.unlink()
    return xml


def _manifest(loaded: Any, networks: list[str], format: str, fp16: bool
              ) -> dict[str, Any]:
    import medseg
    from medseg.inference.backends import OPSET
    from medseg.inference.engines import INPUT, OUTPUT

    pre = loaded.card.preprocessing
    manifest: dict[str, Any] = {
        "format": format, "opset": OPSET, "fp16": bool(fp16), "input": INPUT,
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
