"""Tests of nnU-Net v2 model folders (the oracle fixtures live in tests/nnunet_model.py)."""
