"""nnU-Net v2 trained-model folders as a model source (``medseg predict -m nnunet:FOLDER``,
``medseg import``): a folder becomes a :class:`~medseg.sources.loaded.LoadedModel` whose
card carries nnU-Net's typed preprocessing, and nothing else in medseg knows it came from
nnU-Net. Its outputs are nnU-Net's own numbers.

Here (the source):

* :mod:`~medseg.sources.nnunet.folder`, :mod:`~medseg.sources.nnunet.safe_load`: the model
  folder, its plans, dataset.json, post-processing, and checkpoints read without executing
  pickled code;
* :mod:`~medseg.sources.nnunet.load`: the model card, loading (the folds combine as
  ``mean_logits``) and import into one medseg checkpoint.

Where each stage lives, in medseg's own rooms:

* preprocessing and its inverse: :mod:`medseg.transforms.nnunet` (as medseg History steps)
  and nnU-Net's resampling rule :mod:`medseg.transforms.resample_nnunet`;
* networks: :mod:`medseg.models.nnunet_network` (built from the plans) and
  :mod:`medseg.models.nnunet` (the window frame, the folds as one module);
* window arithmetic: :class:`medseg.inference.windows.NnunetArithmetic` (``blend="nnunet"``).

nnunetv2 itself is never imported by medseg: it is the test suite's oracle only.
"""
