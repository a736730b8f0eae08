"""``medseg import nnunet:FOLDER -o model.safetensors``: an nnU-Net model as a medseg checkpoint.

The checkpoint holds every selected fold's weights and the model card (nnU-Net's
preprocessing, window, labels and post-processing): ``medseg predict -m model.safetensors``
then gives the labels ``-m nnunet:FOLDER`` gives, with no pickle and no nnU-Net folder.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "import an nnU-Net v2 trained-model folder as one medseg checkpoint (.safetensors)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medseg.cli.predict import add_nnunet_arguments

    parser.add_argument("model", metavar="nnunet:FOLDER",
                        help="nnU-Net v2 trained-model folder (Trainer__Plans__Configuration: "
                             "plans.json, dataset.json, fold_*/checkpoint_final.pth)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT",
                        help="the medseg checkpoint to write (.safetensors)")
    add_nnunet_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from medseg.errors import UsageError
    from medseg.io.atomic import check_parent
    from medseg.sources.nnunet.load import PREFIX, NnunetSource, import_nnunet

    text = args.model if args.model.startswith(PREFIX) else PREFIX + args.model
    source = NnunetSource.parse(text, args.folds, args.checkpoint)
    if args.output.suffix != ".safetensors":
        raise UsageError(f"the output must be a .safetensors file, got {args.output}")
    check_parent(args.output)
    path = import_nnunet(source, args.output)
    log.info("wrote %s", path)
    return 0
