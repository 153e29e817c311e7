"""Similarity cap for PSA: the coarsest pooling level each key block may use."""

from .triton import block_similarity, similarity_cap

__all__ = ["block_similarity", "similarity_cap"]
