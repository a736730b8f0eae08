"""What the node does with one complete series: choose a route, predict, write the result.

Nothing here is the node's own: the series is read by :func:`medseg.io.read_volume`, the
labels come from :func:`medseg.inference.predict.predict_case` with the route's model
loaded once by :func:`medseg.sources.load_model`, and the result is written by the
DICOM-SEG / RTSTRUCT writers of :mod:`medseg.io.dicom`, as ``medseg predict`` does. The
node only adds the result's UIDs, derived from the source series and the route's model
(:func:`result_uids`), so that the same series gives the same SOP Instance UID however
often it is processed or sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import DataError, MedsegError
from medseg.serve.config import Route, ServeConfig, route_options

__all__ = ["SERIES_ERRORS", "RouteModel", "load_routes", "match_route", "result_uids", "segment_series",
           "series_header", "write_result"]

log = logging.getLogger(__name__)

#: What reading, predicting or writing one series may raise without stopping the others
#: (the node's next series, a batch's next series): medseg's one-line errors, and what a
#: decoder or the network raises on data it cannot take (RuntimeError, ValueError, OSError).
SERIES_ERRORS = (MedsegError, RuntimeError, ValueError, OSError)


@dataclass
class RouteModel:
    """A route with its model loaded (kept for the node's lifetime) and its options."""

    route: Route
    loaded: Any  # medseg.sources.LoadedModel
    options: Any  # medseg.inference.predict.PredictOptions
    algorithm: str


def load_routes(cfg: ServeConfig, runtime) -> list[RouteModel]:
    """Load every route's model once (routes naming the same model share it)."""
    from medseg.inference.batch import algorithm_name
    from medseg.sources import load_model

    cache: dict[str, Any] = {}
    routes = []
    for route in cfg.routes:
        if route.model not in cache:
            parts = [p for p in route.model.split(",") if p]
            cache[route.model] = load_model(parts if len(parts) > 1 else parts[0], runtime)
        loaded = cache[route.model]
        routes.append(RouteModel(route, loaded, route_options(route), algorithm_name(loaded)))
        log.info("route %d: %s (%s)", len(routes) - 1, route.model, route.format)
    return routes


def series_header(ds) -> dict[str, str]:
    """What routes match on and the log reports, from one instance's dataset."""
    return {
        "modality": str(ds.get("Modality", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "body_part": str(ds.get("BodyPartExamined", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "sop_class": str(ds.get("SOPClassUID", "")),
    }


def match_route(routes: Sequence[Route], header: dict[str, str]) -> int | None:
    """Index of the first route whose match fits ``header``, or None."""
    return next((i for i, route in enumerate(routes) if route.match.fits(header)), None)


def result_uids(series_uid: str, route: Route) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the result of ``series_uid`` by ``route``:
    the same for the same source series, model and format (pydicom's ``generate_uid`` with
    these as its entropy sources), so a result written or sent again replaces the first."""
    from pydicom.uid import generate_uid

    sources = ["medseg serve", series_uid, route.model, route.format]
    return (generate_uid(entropy_srcs=[*sources, "series"]),
            generate_uid(entropy_srcs=[*sources, "instance"]))


def segment_series(folder: Path, series_uid: str, route_model: RouteModel, out_folder: Path,
                   runtime) -> tuple[Path, int]:
    """Predict the series in ``folder`` and write its DICOM-SEG / RTSTRUCT into ``out_folder``.

    Returns the written file, ``<SOP Instance UID>.dcm``, and how many of the folder's
    instances the image holds (the reader leaves out non-image objects, localizers and
    slices of another orientation, each noted in the log).

    Raises
    ------
    MedsegError
        whatever reading the series raises (no image objects, missing slices, mixed
        geometries, undecodable pixel data: each names the folder and what is wrong), or
        DataError when the prediction has no foreground (there is nothing to send).
    """
    from medseg.inference.predict import predict_case
    from medseg.io import read_volume

    image = read_volume(folder)
    if image.meta.get("series_uid") != series_uid:
        raise DataError(f"the instances read as series {image.meta.get('series_uid')!r}, "
                        f"expected {series_uid!r}", folder)
    prediction = predict_case(route_model.loaded, image, route_model.options, runtime)
    path = write_result(prediction.labels, image, route_model, out_folder)
    return path, len(image.meta.get("dicom_files") or ())


def write_result(labels, image, route_model: RouteModel, out_folder: Path) -> Path:
    """Write ``labels`` (a label map on the grid of ``image``, a DICOM series read by
    :func:`medseg.io.read_volume`) as the route's DICOM-SEG / RTSTRUCT of that series,
    ``out_folder/<SOP Instance UID>.dcm``, its UIDs from :func:`result_uids`.

    Raises
    ------
    DataError : ``image`` is not a DICOM series, or the labels have no foreground.
    """
    from medseg.io.dicom.derived import DerivedSeries

    series_uid, files = image.meta.get("series_uid"), image.meta.get("dicom_files")
    if not series_uid or not files:
        raise DataError("a DICOM-SEG / RTSTRUCT needs a DICOM series as input",
                        image.meta.get("source"))
    route = route_model.route
    series, instance = result_uids(series_uid, route)
    derived = DerivedSeries(files, route_model.loaded.card.labels, route_model.algorithm,
                            series_uid=series, instance_uid=instance)
    if route.format == "seg":
        from medseg.io.dicom.seg import write_dicom_seg as writer
    else:
        from medseg.io.dicom.rtstruct import write_rtstruct as writer
    return writer(labels, out_folder / f"{instance}.dcm", derived)
