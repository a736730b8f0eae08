"""``medseg predict``: segment images with a checkpoint.

``IN`` is an image file, a DICOM series folder, a folder of image files (or of
DICOM series folders), or a manifest (MSD ``dataset.json``: its ``test`` cases,
else its training cases; ``.csv`` with an ``image`` column). ``OUT`` is a file
for a single case (``.nii.gz`` ..., or ``.dcm`` for a DICOM-SEG, or an RTSTRUCT
with ``--dicom-format rtstruct``, of a DICOM input) or a folder
(``<case>.nii.gz`` per case). Under ``torchrun`` the cases are shared out by
rank: case ``i`` goes to rank ``i % WORLD_SIZE``. ``-m`` takes a checkpoint, a
cross-validation run folder (the ensemble of its folds), or several checkpoints
(``-m a -m b`` or ``-m a,b``): an ensemble averages its members' softmax. ``-m
nnunet:FOLDER`` runs an nnU-Net v2 trained-model folder (``--folds``, ``--checkpoint``)
with nnU-Net's own preprocessing, window and export, so that its labels and probabilities
are nnUNetPredictor's.

``IN`` may also be a study (or one series) on a DICOMweb service,
``dicomweb://HOST[:PORT]/PATH?StudyInstanceUID=UID[&SeriesInstanceUID=UID]``
(``dicomwebs://`` for https), and ``OUT`` the service ``dicomweb://HOST[:PORT]/PATH``:
QIDO-RS lists the series, WADO-RS fetches each image series into a temporary folder, and
STOW-RS stores its DICOM-SEG (or RTSTRUCT) with UIDs derived from the series, the model and
the format, so a re-run replaces it (:mod:`medseg.serve.pull`). A series that is no image
series is skipped, one that fails is one line on stderr, and the others go on; the exit
code is 1 when any series failed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medseg.cli._options import add_stack

HELP = ("segment images (files, DICOM series, folders, manifests) with a checkpoint or an "
        "ensemble of them")
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, action="append", metavar="CHECKPOINT",
                        help="medseg checkpoint (.safetensors), or a cross-validation run "
                             "folder (its fold_*/best.safetensors, else last): the fold "
                             "ensemble; repeat -m or give a comma list to ensemble checkpoints "
                             "(their softmax is averaged); nnunet:FOLDER = an nnU-Net v2 "
                             "trained-model folder (plans.json, dataset.json, fold_*)")
    add_nnunet_arguments(parser)
    parser.add_argument("-i", "--input", required=True, metavar="IN",
                        help="image file, DICOM folder, folder of images, manifest (.json/.csv), "
                             "or a study on a DICOMweb service: dicomweb://HOST[:PORT]/PATH?"
                             "StudyInstanceUID=UID[&SeriesInstanceUID=UID] (dicomwebs:// for "
                             "https)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output file (one case; .dcm = DICOM-SEG / RTSTRUCT for DICOM input) "
                             "or folder, or dicomweb://HOST[:PORT]/PATH: each DICOM series' "
                             "DICOM-SEG / RTSTRUCT stored with STOW-RS (a re-run replaces it)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="sliding-window overlap in [0, 1) (default: the checkpoint's)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="mirroring test-time augmentation (up to 8x the time); default: "
                             "as the checkpoint's inference.mirror_axes say (none unless "
                             "trained with them)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <case>_probabilities.nii.gz (K channels, float32)")
    parser.add_argument("--qc", action="store_true",
                        help="also write qc.csv beside the outputs: per case and label the "
                             "estimated Dice, volume, uncertain fraction, components, z "
                             "scores against the training cohort and a flag ok/review/fail "
                             "with its reasons (an extra mirrored pass when --tta is off)")
    parser.add_argument("--save-uncertainty", action="store_true",
                        help="also write <case>_uncertainty.nii.gz: the entropy of the "
                             "members' mean probabilities and their disagreement (2 channels, "
                             "0-1, float16 values) on the input grid")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per network call (default: the checkpoint's)")
    parser.add_argument("--preview", action="store_true",
                        help="also write <case>_preview.png (needs matplotlib)")
    parser.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                        help="also keep only the largest connected component of each "
                             "label; --no-keep-largest drops every largest-component step, "
                             "an nnU-Net folder's post-processing included (default: as the "
                             "checkpoint says)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision (medseg.runtime's table): bf16/fp16 on CUDA, "
                             "bf16 on the CPU (about 2x faster on CPUs with AVX-512 BF16/AMX, "
                             "slower elsewhere); default: on for CUDA, off (exact fp32) on "
                             "the CPU")
    parser.add_argument("--backend", default="torch",
                        help="where the networks run: torch (default), onnxruntime (an ONNX "
                             "export in ONNX Runtime; CPU, fp32), openvino (the ONNX export "
                             "in OpenVINO; CPU, fp32 or bf16 with --amp) or auto (the fastest "
                             "installed for the device, as benchmarks/bench_export.py "
                             "measured: openvino, then torch, on the CPU; torch on GPUs)")
    parser.add_argument("--label-interp", choices=["linear", "nearest"], default="linear",
                        help="when the checkpoint resamples the image: bring the label map "
                             "back by interpolating class probabilities (linear, default, as "
                             "nnU-Net) or by nearest neighbour (faster, blocky; not for "
                             "nnunet: models)")
    parser.add_argument("--dicom-format", choices=["seg", "rtstruct"], default="seg",
                        help="what a .dcm output is: DICOM-SEG (default) or RTSTRUCT")
    parser.add_argument("--series", default=None, metavar="UID",
                        help="Series Instance UID to read when a DICOM folder holds several")
    add_stack(parser, channels=True)
    parser.add_argument("--no-tilt", dest="tilt", action="store_false",
                        help="refuse a gantry-tilted DICOM series instead of resampling it")


def run(args: argparse.Namespace) -> int:
    import sys

    from medseg.inference.batch import CaseFiles, predict_cases
    from medseg.inference.predict import PredictOptions
    from medseg.runtime import Runtime
    from medseg.serve.dicomweb import is_dicomweb

    runtime = Runtime.resolve(args.device, args.amp)
    options = PredictOptions(
        overlap=args.overlap, batch_size=args.batch_size, tta=args.tta,
        keep_largest=args.keep_largest, save_probabilities=args.save_probabilities,
        label_interp=args.label_interp, progress=sys.stderr.isatty() and not args.quiet,
        qc=args.qc, uncertainty=args.save_uncertainty,
        backend=args.backend,
    )
    files = CaseFiles(series=args.series, tilt=args.tilt, preview=args.preview,
                      dicom_format=args.dicom_format, stack=tuple(args.stack or ()))
    model = model_argument(args.model, args)
    if is_dicomweb(args.input) or is_dicomweb(args.output):
        from medseg.serve.pull import predict_dicomweb

        report = predict_dicomweb(model, args.input, args.output, options, runtime, files)
        return 1 if report.failed else 0
    predict_cases(model, args.input, args.output, options, runtime, files)
    return 0


def add_nnunet_arguments(parser: argparse.ArgumentParser) -> None:
    """``--folds`` and ``--checkpoint`` of an ``nnunet:FOLDER`` model (predict, import)."""
    parser.add_argument("--folds", default=None, metavar="0,1,...|all",
                        help="nnunet: models: the folds to ensemble; 'all' is fold_all, as in "
                             "nnUNetv2_predict (default: every numbered fold_* holding the "
                             "checkpoint, else fold_all)")
    parser.add_argument("--checkpoint", choices=["final", "best"], default="final",
                        help="nnunet: models: checkpoint_final.pth (default) or "
                             "checkpoint_best.pth")


def model_argument(values: list[str], args: argparse.Namespace | None = None):
    """The ``-m`` values (repeated, or comma lists) as one model, or a list for an ensemble;
    ``nnunet:FOLDER`` becomes a :class:`medseg.sources.nnunet.load.NnunetSource` with ``args``'
    ``--folds`` and ``--checkpoint``."""
    from medseg.sources.nnunet.load import NnunetSource

    folds = getattr(args, "folds", None)
    checkpoint = getattr(args, "checkpoint", "final")
    models = []
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if part:
                nnunet = NnunetSource.parse(part, folds, checkpoint)
                models.append(nnunet if nnunet is not None else Path(part))
    return models[0] if len(models) == 1 else models
