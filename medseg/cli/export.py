"""``medseg export MODEL -o DIR``: the model and its whole pipeline, runnable without torch.

``MODEL`` is anything ``medseg predict -m`` takes: a checkpoint, a cross-validation run
folder (the fold ensemble), several checkpoints (a comma list), or ``nnunet:FOLDER``.
``DIR`` gets the networks as ONNX (or OpenVINO IR with ``--format openvino``), the model
card, ``predict.py`` (``python DIR/predict.py INPUT OUTPUT [--tta]``: NIfTI in, the label map
on the input's grid out, as ``medseg predict``) and ``requirements.txt`` (numpy, scipy,
nibabel, and onnxruntime or openvino).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model with its whole pipeline to a folder that runs without torch or medseg"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medseg.cli.predict import add_nnunet_arguments

    parser.add_argument("model", metavar="MODEL",
                        help="checkpoint (.safetensors), run folder (fold ensemble), comma "
                             "list of checkpoints, or nnunet:FOLDER")
    add_nnunet_arguments(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                        help="export folder (created; an earlier export there is replaced)")
    parser.add_argument("--format", default="onnx", choices=["onnx", "openvino"],
                        help="network format: onnx (default; the runner uses onnxruntime) or "
                             "openvino (OpenVINO IR; the runner uses openvino, about 3x "
                             "faster per window on a CPU: benchmarks/bench_export.py)")
    parser.add_argument("--fp16", action="store_true", help="half-precision networks "
                        "(smaller; labels agree with fp32 less closely: see the README)")


def run(args: argparse.Namespace) -> int:
    from medseg.cli.predict import model_argument
    from medseg.export import export_model

    folder = export_model(model_argument([args.model], args), args.output, args.format,
                          args.fp16)
    print(f"exported to {folder}; run: python {folder / 'predict.py'} INPUT OUTPUT")
    return 0
