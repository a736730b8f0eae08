"""The CPU engines behind medseg's non-torch backends: an ONNX network in ONNX Runtime or in
OpenVINO, a window batch in, logits out, in NumPy.

One configuration for both users: ``medseg predict --backend onnxruntime|openvino``
(:mod:`medseg.inference.backends` hands the engine the network exported to ONNX in memory)
and the runner of ``medseg export`` (which copies this module: it imports neither torch nor
the rest of medseg, and loads the exported ``.onnx`` or OpenVINO ``.xml`` file).

* ONNX Runtime (:class:`OnnxRuntimeEngine`): a CPU session with ``threads`` intra-op
  threads and ONNX Runtime's default, full graph optimisation. One window batch is one
  ``session.run``.
* OpenVINO (:class:`OpenVinoEngine`): the CPU plugin with the ``THROUGHPUT`` performance
  hint and ``threads`` inference threads: OpenVINO splits the cores into streams, and each
  window of a batch is its own inference request, run side by side on the streams (on 2
  cores, 2 streams of one thread: faster than one window on 2 threads, because the
  convolutions of one window do not keep two threads busy; ``benchmarks/bench_export.py``).
  The network is compiled for the window's shape (``roi_size``, batch 1) when it is given
  (static shapes let the plugin choose its kernels once); a file already shaped so (the
  engine cache of :mod:`medseg.inference.engine_cache`) is compiled straight from its path,
  and with ``cache_dir`` OpenVINO keeps the compiled blob there (``CACHE_DIR``). Precision ``"fp32"`` sets
  ``INFERENCE_PRECISION_HINT`` to f32: OpenVINO's own default on CPUs with AMX or AVX-512
  BF16 is bf16, which moves labels; ``"bf16"`` asks for it (``medseg predict --amp``).

Both map (n, C, x, y, z) float32 to (n, K, x, y, z) float32 logits (a ``--fp16`` export
casts inside its graph).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from medseg.errors import UsageError

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "ENGINES", "INPUT", "OUTPUT", "OnnxRuntimeEngine", "OpenVinoEngine",
           "cache_folder", "cache_root", "load_engine"]

#: The engines, by the name of the package that runs them.
ENGINES = ("onnxruntime", "openvino")
#: Names of the network's input and output in every export.
INPUT, OUTPUT = "image", "logits"
#: OpenVINO's inference precision per medseg precision.
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}

#: Environment variable naming medseg's cache folder; ``off`` turns caching off.
CACHE_ENV = "MEDSEG_CACHE"
#: A model: a file (``.onnx``, or OpenVINO's ``.xml`` beside its ``.bin``) or ONNX bytes.
ModelSource = Union[str, "os.PathLike[str]", bytes]


def cache_root() -> Path | None:
    """medseg's cache folder: ``$MEDSEG_CACHE`` when set (None when it is ``off``), else
    ``$XDG_CACHE_HOME/medseg``, else ``~/.cache/medseg``. It holds ``engines/`` (the
    exported networks of ``medseg predict --backend``,
    :mod:`medseg.inference.engine_cache`) and ``openvino/`` (the compiled blobs of the
    exported runner's OpenVINO networks); deleting it clears both."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "medseg"


def cache_folder(name: str) -> Path | None:
    """``cache_root() / name``, created; None when caching is off or the folder cannot be
    made (logged: the caller runs uncached)."""
    root = cache_root()
    if root is None:
        return None
    try:
        (root / name).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.info("cache folder %s cannot be made (%s): running uncached", root / name,
                 exc.strerror or exc)
        return None
    return root / name


def _missing(package: str, what: str) -> UsageError:
    return UsageError(f"{what} needs {package}: pip install {package}")


class OnnxRuntimeEngine:
    """An ONNX network in an ONNX Runtime CPU session; ``threads`` 0 lets ONNX Runtime
    choose (all cores)."""

    def __init__(self, model: ModelSource, threads: int = 0, what: str = "the runner") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnxruntime", what) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else os.fspath(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch,
                                                                         dtype=np.float32)})
        return out.astype(np.float32, copy=False)


class OpenVinoEngine:
    """A network (ONNX file or bytes, or OpenVINO IR ``.xml``) compiled by OpenVINO's CPU
    plugin; each window of a batch runs as its own request on the plugin's streams (module
    docstring). ``threads`` 0 lets OpenVINO choose (all cores); ``window`` (C, x, y, z)
    compiles for that one input shape, None keeps the model's dynamic axes."""

    def __init__(self, model: ModelSource, threads: int = 0, precision: str = "fp32",
                 window: Sequence[int] | None = None, what: str = "the runner",
                 cache_dir: str | os.PathLike | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise _missing("openvino", what) from None
        if precision not in OPENVINO_PRECISION:
            raise UsageError(f"OpenVINO runs on the CPU in {' or '.join(OPENVINO_PRECISION)}, "
                             f"not {precision}")
        core = ov.Core()
        if isinstance(model, bytes):
            network = ov.convert_model(io.BytesIO(model))
        elif window is None:  # compiled from the file: a cached blob then skips reading it
            network = os.fspath(model)
        else:
            network = core.read_model(os.fspath(model))
        if window is not None:
            network.reshape({INPUT: [1, *(int(s) for s in window)]})
        config = {"PERFORMANCE_HINT": "THROUGHPUT",
                  "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir is not None:
            config["CACHE_DIR"] = os.fspath(cache_dir)
        self.compiled = core.compile_model(network, "CPU", config)
        self.queue = ov.AsyncInferQueue(
            self.compiled, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.classes = self.compiled.output(0).get_partial_shape()[1].get_length()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        out = np.empty((len(batch), self.classes, *batch.shape[2:]), dtype=np.float32)

        def done(request, index: int) -> None:  # each index is written by one request only
            out[index] = request.get_output_tensor(0).data[0]

        self.queue.set_callback(done)
        for index in range(len(batch)):
            self.queue.start_async({0: batch[index:index + 1]}, index)
        self.queue.wait_all()
        return out


def load_engine(engine: str, model: ModelSource, threads: int = 0, precision: str = "fp32",
                window: Sequence[int] | None = None, what: str = "the runner",
                cache_dir: str | os.PathLike | None = None
                ) -> OnnxRuntimeEngine | OpenVinoEngine:
    """The engine named ``engine`` (one of :data:`ENGINES`) for ``model``; ONNX Runtime
    runs float32 only and ignores ``precision``, ``window`` and ``cache_dir`` (OpenVINO's
    folder of compiled blobs, ``CACHE_DIR``: a later process with the same network and
    configuration loads the blob instead of compiling)."""
    if engine == "openvino":
        return OpenVinoEngine(model, threads, precision, window, what, cache_dir)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(model, threads, what)
    raise UsageError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
