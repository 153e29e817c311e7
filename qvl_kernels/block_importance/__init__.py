"""Block importance S [B, HQ, nb, nb] for PSA: xattn antidiagonal scoring or block pooling."""

from .triton import block_importance

__all__ = ["block_importance"]
