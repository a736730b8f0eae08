"""The torch-free runner of an exported model: NumPy, SciPy and nibabel only.

Nothing here imports torch or anything of medseg that does: ``medseg export`` copies these
modules, and the NumPy-only medseg modules they use (:data:`medseg.export.vendor.SHARED`),
into the export folder (``runner/``) with their imports made relative, so that medseg and
the runner share one source for each step. Inside medseg they are importable and tested
against the torch engine they mirror.

* :mod:`.resample` -- medseg's separable grid resampling (the torch engine of
  :mod:`medseg.transforms.resample`) in NumPy;
* :mod:`.window` -- the sliding window with medseg's or nnU-Net's arithmetic;
* :mod:`.networks` -- the exported networks in their engine (ONNX Runtime or OpenVINO:
  :mod:`medseg.inference.engines`, shared with ``medseg predict --backend``);
* :mod:`.pipeline` -- one image in, its labels (and probabilities) out, as ``medseg
  predict`` does;
* :mod:`.main` -- ``python DIR/predict.py INPUT OUTPUT [--tta]``.
"""
