"""PSA level mask: importance -> per-block pooling levels {0, 1, 2, 4, 8}, and density statistics."""

from .level_mask import LEVELS, density, level_fractions, level_mask, level_mask_torch, stats_from_counts
from .level_mask_triton import level_mask_triton

__all__ = [
    "LEVELS",
    "density",
    "level_fractions",
    "level_mask",
    "level_mask_torch",
    "level_mask_triton",
    "stats_from_counts",
]
