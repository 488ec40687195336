"""Difference-captioning data: the DiffPair record, dataset readers and the synthetic generator."""
from m3diff.data.record import DiffPair

__all__ = ["DiffPair"]
