"""Plain-PyTorch definition of the gated MLP activation silu(gate) * up, as transformers'
Qwen2.5-VL MLPs compute it in eager mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """F.silu(gate) * up in the inputs' dtype, rounded where eager PyTorch rounds.

    gate, up: [..., I], same shape and dtype. silu(g) = g / (1 + exp(-g)) is computed in fp32 and
    rounded to the dtype; the product is computed in fp32 and rounded again.
    Returns y: [..., I] in the inputs' dtype.
    """
    _check(gate, up)
    return F.silu(gate) * up


def _check(gate: torch.Tensor, up: torch.Tensor) -> None:
    if gate.dim() < 1 or gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"gate and up must be [..., I] of one shape and dtype, got {tuple(gate.shape)} {gate.dtype} "
            f"and {tuple(up.shape)} {up.dtype}"
        )
