"""Sequence mean-pool (2x, 4x, 8x) of keys and values for pyramid attention."""

from .triton import mean_pool, mean_pool_kv

__all__ = ["mean_pool", "mean_pool_kv"]
