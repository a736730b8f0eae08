"""Trained nnU-Net v2 model folders run through medseg (issue 12).

``preprocess`` and ``resample`` reproduce nnU-Net's preprocessing and its inverse;
``folder``, ``safe_load`` and ``network`` read a model folder.
"""
