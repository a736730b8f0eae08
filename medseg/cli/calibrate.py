"""``medseg calibrate MODEL --images DIR --labels DIR``: fit a model's temperature (and one per
label where it helps, :mod:`medseg.inference.calibration`) on labelled
cases and give it a training cohort for QC when it has none.

``MODEL`` is anything ``medseg predict -m`` takes (a checkpoint, a cross-validation run
folder, ``nnunet:FOLDER``). The temperature (:mod:`medseg.inference.calibration`) and, unless
the card has one already (or with ``--cohort``), the cohort of the given cases
(:mod:`medseg.data.cohort`) are stored with the model: in its checkpoint(s), or as
``medseg_confidence.json`` in an nnU-Net folder. The expected calibration error before and
after, and the reliability curves, go to ``--report`` (JSON) and the log.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = ("fit the temperature of a model's probabilities on labelled cases (and record its "
        "training cohort for --qc)")
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medseg.cli.predict import add_nnunet_arguments

    parser.add_argument("model", metavar="MODEL",
                        help="checkpoint, cross-validation run folder or nnunet:FOLDER")
    add_nnunet_arguments(parser)
    parser.add_argument("--images", required=True, type=Path, metavar="DIR",
                        help="folder of images (nnU-Net's _0000 suffix allowed)")
    parser.add_argument("--labels", required=True, type=Path, metavar="DIR",
                        help="folder of their label maps, paired by case name")
    parser.add_argument("--cohort", action=argparse.BooleanOptionalAction, default=None,
                        help="record these cases as the model's cohort for --qc (default: "
                             "only when the model has none); --no-cohort never does")
    parser.add_argument("--no-temperature", dest="temperature", action="store_false",
                        help="record the cohort only, keep the temperature")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="write the temperature, the expected calibration error (15 bins, "
                             "foreground-near voxels) before and after, and the reliability "
                             "curves here")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--seed", type=int, default=0, help="voxel sampling seed (default 0)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from medseg.cli.predict import model_argument
    from medseg.confidence import Confidence
    from medseg.io.atomic import atomic_write_text, check_parent
    from medseg.io.cases import Case, pair_folders
    from medseg.runtime import Runtime
    from medseg.sources import load_model, save_confidence

    if args.report is not None:
        check_parent(args.report)
    pairs = pair_folders(args.images, args.labels, ("an image", "a label"), strip_channel=True)
    cases = [Case(name, (image,), label) for name, image, label in pairs]
    runtime = Runtime.resolve(args.device)
    model = model_argument([args.model], args)
    loaded = load_model(model, runtime)
    confidence = loaded.card.confidence or Confidence()
    progress = sys.stderr.isatty() and not args.quiet
    if args.cohort or (args.cohort is None and confidence.cohort is None):
        from medseg.data.cohort import measure_cohort

        modality = None if confidence.cohort is None else confidence.cohort.modality
        cohort = measure_cohort(cases, list(loaded.card.labels), modality, progress,
                                confidence.thresholds.component_fraction)
        confidence = confidence.replace(cohort=cohort)
    if args.temperature:
        from medseg.inference.calibration import calibrate

        result = calibrate(loaded, cases, runtime, seed=args.seed, progress=progress)
        confidence = result.apply(confidence)
        log.info("temperature %.4f, per label %s; expected calibration error %.4f -> %.4f",
                 result.temperature, result.label_temperatures or "none", result.before.ece,
                 result.after.ece)
        if args.report is not None:
            atomic_write_text(args.report, json.dumps(result.to_dict(), indent=1) + "\n")
    for path in save_confidence(model, confidence):
        log.info("wrote %s", path)
    return 0
