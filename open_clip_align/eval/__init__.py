"""Evaluation: scorers on tensors, and benchmark adapters built on them."""
