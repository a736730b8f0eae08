"""Where the network runs: torch, or an ONNX export of it in ONNX Runtime or OpenVINO.

``medseg predict --backend torch|onnxruntime|openvino|auto`` picks how each network of a
:class:`~medseg.sources.LoadedModel` becomes the sliding window's predictor (a window
batch (B, C, x, y, z) in, float32 logits (B, K, x, y, z) out):

* ``"torch"``: the module itself, in the runtime's precision
  (:func:`medseg.inference.precision.make_predictor`);
* ``"onnxruntime"``, ``"openvino"``: the module exported to ONNX (:func:`network_to_onnx`:
  opset :data:`OPSET`, dynamic batch and spatial axes) and run on the CPU by that engine
  (:mod:`medseg.inference.engines`: the runner of ``medseg export`` runs the same code);
  ONNX Runtime in float32, OpenVINO in the runtime's precision (fp32, or bf16 with
  ``--amp``); the export is kept on disk across processes (the engine cache,
  :mod:`medseg.inference.engine_cache`) and the engine once per network while it lives;
* ``"auto"``: the first installed backend of :data:`PREFERENCE` for the device, an order
  measured by ``benchmarks/bench_export.py`` (not a race at run time): on the CPU OpenVINO
  (whole predict, engine cache warm, 2 shared cores: 0.16x-0.77x torch's time on the
  384 x 384 x 200 phantom, 0.94x on small left-atrium MRIs where importing torch
  dominates), then torch; ONNX Runtime is not in it, because it gains less (0.53x-0.91x on
  the phantom, 1.07x on the MRIs); on GPUs torch. A network ONNX cannot express runs in
  torch under ``auto``.

:func:`network_to_onnx` is also what ``medseg export`` writes; a network with a layer ONNX
cannot express raises :class:`~medseg.errors.ExportError` naming the layer and the format
that can run it.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import os
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medseg.errors import ExportError, UsageError, check_option
from medseg.inference.engines import INPUT, OUTPUT
from medseg.inference.precision import Predictor, make_predictor
from medseg.runtime import Runtime

__all__ = ["BACKENDS", "OPSET", "PREFERENCE", "engine_predictor", "member_predictors",
           "network_to_onnx", "onnx_to_openvino", "resolve_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino", "auto")
#: ``auto``'s order per device type, fastest first (``benchmarks/bench_export.py``); the
#: first installed is taken (torch always is).
PREFERENCE = {"cpu": ("openvino", "torch"), "cuda": ("torch",)}
#: ONNX opset of every export.
OPSET = 17

#: network -> {(engine, precision, roi): engine}
_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Fp16(nn.Module):
    """A half-precision network taking and giving float32 (``--fp16`` exports)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.half()).float()


def network_to_onnx(network: nn.Module, target: str | os.PathLike | io.BytesIO,
                    in_channels: int, roi_size: Sequence[int], fp16: bool = False,
                    opset: int = OPSET) -> None:
    """Write ``network`` (eval mode, on the CPU, a copy) as ONNX: input ``image``
    (B, C, x, y, z) float32, output ``logits`` (B, K, x, y, z) float32, batch and spatial
    axes dynamic, traced on one window of ``roi_size`` (x, y, z voxels). ``fp16`` stores
    half-precision weights and computes in half (cast in and out inside the graph).

    Raises
    ------
    ExportError : a layer ONNX cannot express, named (module path and class) with the
        first line of the exporter's reason and the format that runs it (:func:`_culprit`).
    """
    module = copy.deepcopy(network).cpu().float().eval()
    if fp16:
        module = _Fp16(module)
    example = torch.zeros((1, int(in_channels), *(int(r) for r in roi_size)))
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    target = os.fspath(target) if isinstance(target, (str, os.PathLike)) else target
    try:
        with torch.no_grad():
            torch.onnx.export(module, (example,), target, opset_version=opset, dynamo=False,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: axes, OUTPUT: axes})
    except Exception as exc:  # the exporter raises many kinds; each is reported as one line
        raise ExportError(_culprit(module, example, exc, opset)) from exc


def _culprit(module: nn.Module, example: torch.Tensor, error: Exception, opset: int) -> str:
    """One line: the deepest layer that fails to export on its own input, why, and whether
    TorchScript can trace it (the format that would work)."""
    calls: dict[str, tuple[nn.Module, tuple]] = {}

    def record(name: str):
        def hook(layer: nn.Module, args: tuple, output: object) -> None:
            calls.setdefault(name, (layer, args))  # returns None: the output is kept
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in module.named_modules() if name]
    try:
        with torch.no_grad():
            module(example)
    except Exception:  # noqa: BLE001 - the forward itself fails: reported below as the reason
        pass
    finally:
        for hook in hooks:
            hook.remove()
    reason = _first_line(error)
    for name in sorted(calls, key=lambda n: -n.count(".")):
        layer, args = calls[name]
        try:
            with torch.no_grad():
                torch.onnx.export(layer, args, io.BytesIO(), opset_version=opset, dynamo=False)
        except Exception as exc:  # noqa: BLE001 - this layer is the one
            return (f"layer {name!r} ({type(layer).__name__}) cannot be expressed in ONNX "
                    f"opset {opset}: {_first_line(exc)}; {_working_format(layer, args)}")
    return (f"the network ({type(module).__name__}) cannot be expressed in ONNX opset {opset}: "
            f"{reason}; {_working_format(module, (example,))}")


def _working_format(layer: nn.Module, args: tuple) -> str:
    try:
        with torch.no_grad():
            torch.jit.trace(layer, args, check_trace=False)
    except Exception:  # noqa: BLE001 - not traceable either
        return "it runs only in torch: use medseg predict --backend torch"
    return ("TorchScript (torch.jit.trace) expresses it: run the model with medseg predict "
            "--backend torch, or save the network with torch.jit")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def engine_predictor(engine: str, network: nn.Module, in_channels: int,
                     roi_size: Sequence[int], runtime: Runtime) -> Predictor:
    """``network`` exported to ONNX and run by ``engine`` (``"onnxruntime"`` or
    ``"openvino"``, :mod:`medseg.inference.engines`) on the CPU with the runtime's threads
    (``torch.get_num_threads()``) and, for OpenVINO, its precision: window batch
    (B, C, x, y, z) -> float32 logits (B, K, x, y, z) as torch tensors on the batch's
    device. The export comes from the on-disk engine cache
    (:mod:`medseg.inference.engine_cache`: made once per network, engine and window, across
    processes; in memory when the cache is off or unwritable), and the engine is made once
    per network and kept while it lives."""
    from medseg.inference.engines import load_engine

    roi = tuple(int(r) for r in roi_size)
    key = (engine, runtime.precision, roi)
    engines = _ENGINES.setdefault(network, {})
    if key not in engines:
        model, window, compiled = _engine_model(engine, network, int(in_channels), roi)
        engines[key] = load_engine(engine, model, torch.get_num_threads(), runtime.precision,
                                   window, what=f"--backend {engine}", cache_dir=compiled)
    run_engine = engines[key]

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(run_engine(array)).to(batch.device)

    return run


def _engine_model(engine: str, network: nn.Module, in_channels: int, roi: tuple[int, ...]
                  ) -> tuple[str | bytes, tuple[int, ...] | None, str | None]:
    """(the model the engine loads, the window to compile it for or None when the model
    is already shaped for it, OpenVINO's compiled-blob folder or None): the cached entry's
    file, or ONNX bytes when there is no cache."""
    from medseg.inference.engine_cache import cached_network

    window = (in_channels, *roi)

    def write(module: nn.Module, path: os.PathLike) -> None:
        if engine == "openvino":
            onnx = Path(path).with_suffix(".onnx")
            network_to_onnx(module, onnx, in_channels, roi)
            onnx_to_openvino(onnx, path, window)
            onnx.unlink()
        else:
            network_to_onnx(module, path, in_channels, roi)

    path = cached_network(network, engine, in_channels, roi, OPSET, write)
    if path is None:
        buffer = io.BytesIO()
        network_to_onnx(network, buffer, in_channels, roi)
        return buffer.getvalue(), window, None
    if engine == "openvino":
        return os.fspath(path), None, os.fspath(path.parent / "compiled")
    return os.fspath(path), window, None


def onnx_to_openvino(onnx: str | os.PathLike, xml: str | os.PathLike,
                     window: Sequence[int] | None = None) -> None:
    """The ONNX file ``onnx`` as OpenVINO IR ``xml`` (and its ``.bin``), float32 weights
    kept float32 (``save_model`` would halve them by default); ``window`` (C, x, y, z)
    fixes the input to one window (batch 1), None keeps the dynamic axes.

    Raises
    ------
    UsageError : openvino is not installed.
    """
    try:
        import openvino as ov
    except ImportError:
        raise UsageError("OpenVINO IR (--format or --backend openvino) needs openvino: "
                         "pip install openvino "
                         "(or medseg[deploy])") from None
    model = ov.convert_model(os.fspath(onnx))
    if window is not None:
        model.reshape({INPUT: [1, *(int(s) for s in window)]})
    ov.save_model(model, os.fspath(xml), compress_to_fp16=False)


def resolve_backend(backend: str, runtime: Runtime) -> str:
    """``"torch"``, ``"onnxruntime"`` or ``"openvino"`` for ``backend``: ``"auto"`` is the
    first of :data:`PREFERENCE` for the runtime's device that is installed."""
    backend = check_option(backend, BACKENDS, "backend")
    device = runtime.device.type
    if backend == "auto":
        return next(name for name in PREFERENCE.get(device, ("torch",)) if _installed(name))
    if backend != "torch" and device != "cpu":
        raise UsageError(f"--backend {backend} runs on the CPU; the runtime is "
                         f"{runtime.device}: use --device cpu or --backend torch")
    if backend == "onnxruntime" and runtime.precision != "fp32":
        raise UsageError(f"--backend onnxruntime runs float32; the runtime asks for "
                         f"{runtime.precision}: use --no-amp or --backend openvino|torch")
    return backend


def _installed(name: str) -> bool:
    return name == "torch" or importlib.util.find_spec(name) is not None


def member_predictors(networks: Sequence[nn.Module], runtime: Runtime, backend: str,
                      in_channels: int, roi_size: Sequence[int]) -> list[Predictor]:
    """One logits predictor per network, on the backend ``backend`` resolves to; under
    ``"auto"``, a network that ONNX cannot express runs in torch (logged)."""
    chosen = resolve_backend(backend, runtime)
    predictors: list[Predictor] = []
    for network in networks:
        if chosen == "torch":
            predictors.append(make_predictor(network, runtime))
            continue
        try:
            predictors.append(engine_predictor(chosen, network, in_channels, roi_size, runtime))
        except ExportError as exc:
            if backend != "auto":
                raise
            log.info("backend auto: torch (%s)", exc.message)
            predictors.append(make_predictor(network, runtime))
    return predictors
