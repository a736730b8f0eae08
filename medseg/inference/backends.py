"""Where the network runs: torch, or an ONNX export of it in ONNX Runtime.

``medseg predict --backend torch|onnxruntime|auto`` picks how each network of a
:class:`~medseg.sources.LoadedModel` becomes the sliding window's predictor (a window
batch (B, C, x, y, z) in, float32 logits (B, K, x, y, z) out):

* ``"torch"``: the module itself, in the runtime's precision
  (:func:`medseg.inference.precision.make_predictor`);
* ``"onnxruntime"``: the module exported to ONNX (:func:`network_to_onnx`: opset
  :data:`OPSET`, dynamic batch and spatial axes) and run by an ONNX Runtime CPU session,
  float32; the export and the session are made once per network and kept while it lives;
* ``"auto"``: on the CPU, ONNX Runtime when it is installed and measurably faster on one
  window batch of this model (:data:`FASTER`), else torch; torch on GPUs.

:func:`network_to_onnx` is also what ``medseg export`` writes; a network with a layer ONNX
cannot express raises :class:`~medseg.errors.ExportError` naming the layer and the format
that can run it.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import time
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ExportError, UsageError, check_option
from medseg.inference.precision import Predictor, make_predictor
from medseg.runtime import Runtime

__all__ = ["BACKENDS", "OPSET", "member_predictors", "network_to_onnx", "onnx_predictor",
           "resolve_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "auto")
#: ONNX opset of every export.
OPSET = 17
#: ``auto`` takes ONNX Runtime when its window batch takes at most this fraction of torch's.
FASTER = 0.9
INPUT, OUTPUT = "image", "logits"

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CHOICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def onnx_predictor(network: nn.Module, in_channels: int, roi_size: Sequence[int]
                   ) -> Predictor:
    """``network`` as an ONNX Runtime CPU session: window batch (B, C, x, y, z) -> float32
    logits (B, K, x, y, z) as torch tensors on the CPU. The export and session are cached
    per network."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("--backend onnxruntime needs onnxruntime: pip install onnxruntime") \
            from None
    session = _SESSIONS.get(network)
    if session is None:
        buffer = io.BytesIO()
        network_to_onnx(network, buffer, in_channels, roi_size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        session = ort.InferenceSession(buffer.getvalue(), options,
                                       providers=["CPUExecutionProvider"])
        _SESSIONS[network] = session

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = session.run([OUTPUT], {INPUT: array})
        return torch.from_numpy(out).to(batch.device)

    return run


def resolve_backend(backend: str, network: nn.Module, runtime: Runtime, in_channels: int,
                    roi_size: Sequence[int], batch_size: int = 1) -> str:
    """``"torch"`` or ``"onnxruntime"`` for ``backend``; ``"auto"`` times one window batch
    of ``network`` both ways on the CPU (after one warm-up call each) and takes ONNX Runtime
    when it needs at most :data:`FASTER` of torch's time (cached per network)."""
    backend = check_option(backend, BACKENDS, "backend")
    if backend != "auto":
        if backend == "onnxruntime" and runtime.device.type != "cpu":
            raise UsageError(f"--backend onnxruntime runs on the CPU; the runtime is "
                             f"{runtime.device}: use --device cpu or --backend torch")
        return backend
    if runtime.device.type != "cpu" or runtime.precision != "fp32":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    chosen = _CHOICES.get(network)
    if chosen is None:
        chosen = _time_both(network, runtime, in_channels, roi_size, batch_size)
        _CHOICES[network] = chosen
    return chosen


def _time_both(network: nn.Module, runtime: Runtime, in_channels: int,
               roi_size: Sequence[int], batch_size: int) -> str:
    batch = torch.randn((int(batch_size), int(in_channels), *(int(r) for r in roi_size)),
                        generator=torch.Generator().manual_seed(0))
    try:
        candidates = {"torch": make_predictor(network, runtime),
                      "onnxruntime": onnx_predictor(network, in_channels, roi_size)}
    except ExportError as exc:
        log.info("backend auto: torch (%s)", exc.message)
        return "torch"
    seconds: dict[str, float] = {}
    with torch.inference_mode():
        for name, predictor in candidates.items():
            predictor(batch)  # warm-up (allocations, ONNX Runtime's graph optimisation)
            start = time.perf_counter()
            predictor(batch)
            seconds[name] = time.perf_counter() - start
    chosen = "onnxruntime" if seconds["onnxruntime"] <= FASTER * seconds["torch"] else "torch"
    log.info("backend auto: %s (one batch of %d windows %s: torch %.3f s, onnxruntime %.3f s)",
             chosen, batch_size, "x".join(map(str, roi_size)), seconds["torch"],
             seconds["onnxruntime"])
    return chosen


def member_predictors(networks: Sequence[nn.Module], runtime: Runtime, backend: str,
                      in_channels: int, roi_size: Sequence[int], batch_size: int = 1
                      ) -> list[Predictor]:
    """One logits predictor per network, each on the backend ``backend`` resolves to."""
    predictors: list[Predictor] = []
    for network in networks:
        chosen = resolve_backend(backend, network, runtime, in_channels, roi_size, batch_size)
        predictors.append(onnx_predictor(network, in_channels, roi_size)
                          if chosen == "onnxruntime" else make_predictor(network, runtime))
    return predictors


