"""Fixtures of the training tests (helpers live in training_helpers.py)."""

from .training_helpers import msd_dataset  # noqa: F401 - re-exported fixture
