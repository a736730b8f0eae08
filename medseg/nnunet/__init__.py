"""Trained nnU-Net v2 model folders run through medseg (``medseg predict -m nnunet:FOLDER``,
``medseg import``), with nnU-Net's own numbers.

* :mod:`~medseg.nnunet.folder`, :mod:`~medseg.nnunet.safe_load`: the model folder, its plans,
  dataset.json, post-processing, and checkpoints read without executing pickled code;
* :mod:`~medseg.nnunet.network`: the dynamic-network-architectures network the plans describe;
* :mod:`~medseg.nnunet.preprocess`, :mod:`~medseg.nnunet.resample`,
  :mod:`~medseg.nnunet.history`: nnU-Net's preprocessing and its inverse (slab by slab);
* :mod:`~medseg.nnunet.model`: the networks in medseg's window frame, the folds as one module;
* :mod:`~medseg.nnunet.load`: the model card, loading and import;
* :mod:`~medseg.nnunet.steps`: nnU-Net's steps inside ``medseg.inference.predict_case``.

nnunetv2 itself is never imported here: it is the test suite's oracle only.
"""
