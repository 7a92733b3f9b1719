"""Training entry point: ``python -m training.main`` / ``torchrun ... -m training.main -- ...``."""
