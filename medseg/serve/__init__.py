"""``medseg serve``: a DICOM node that a PACS sends series to and that sends DICOM-SEG or
RTSTRUCT back.

A service on top of the library, like the CLI: it calls the functions a user calls
(:func:`medseg.sources.load_model`, :func:`medseg.inference.predict.predict_case`, the
DICOM readers and the SEG / RTSTRUCT writers of :mod:`medseg.io.dicom`) and adds nothing to
the stages below it.

* :mod:`~medseg.serve.config`: the YAML config, every key checked;
* :mod:`~medseg.serve.receive`: the Storage SCP (pynetdicom), AE title policy;
* :mod:`~medseg.serve.spool`: received instances, job states and results on disk, durable;
* :mod:`~medseg.serve.jobs`: a job's states, the JSON-lines log, ``--status``;
* :mod:`~medseg.serve.process`: route, predict, write the result (deterministic UIDs);
* :mod:`~medseg.serve.send`: C-STORE or STOW-RS;
* :mod:`~medseg.serve.node`: the threads that tie them together and the restart;
* :mod:`~medseg.serve.dicomweb`: DICOMweb URLs, QIDO-RS and WADO-RS;
* :mod:`~medseg.serve.pull`: `medseg predict` with a DICOMweb input or output.
"""

from medseg.serve.config import ServeConfig, load_serve_config
from medseg.serve.node import Node, spool_jobs

__all__ = ["Node", "ServeConfig", "load_serve_config", "spool_jobs"]
