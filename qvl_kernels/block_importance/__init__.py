"""Block importance S [B, HQ, nb, nb] for PSA: xattn antidiagonal scoring or block pooling."""

from .block_importance import block_importance

__all__ = ["block_importance"]
