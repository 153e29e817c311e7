"""PSA level mask: importance -> per-block pooling levels {0, 1, 2, 4, 8}, and density statistics."""

from .level_mask import LEVELS, density, level_fractions, level_mask

__all__ = ["LEVELS", "density", "level_fractions", "level_mask"]
