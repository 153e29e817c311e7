"""Pyramid attention: block-sparse attention over mean-pooled K/V levels (PSA step 4)."""

from .triton import build_block_lists, pyramid_attention

__all__ = ["pyramid_attention", "build_block_lists"]
