"""Plain-PyTorch definition of the gated MLP activation silu(gate) * up, as transformers'
Qwen2.5-VL MLPs compute it in eager mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_mul(gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """F.silu(gate) * up in the inputs' dtype, rounded where eager PyTorch rounds.

    gate, up: [..., I], same shape and dtype. silu(g) = g / (1 + exp(-g)) is computed in fp32 and
    rounded to the dtype; the product is computed in fp32 and rounded again.
    out: where y goes, gate's shape and dtype, any strides; it may be gate itself (each element is
    read before it is written), which saves a gated MLP its third activation buffer.
    Returns y: [..., I] in the inputs' dtype (`out` when given).
    """
    _check(gate, up, out)
    if out is None:
        return F.silu(gate) * up
    return torch.mul(F.silu(gate), up, out=out)


def _check(gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor | None = None) -> None:
    if gate.dim() < 1 or gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"gate and up must be [..., I] of one shape and dtype, got {tuple(gate.shape)} {gate.dtype} "
            f"and {tuple(up.shape)} {up.dtype}"
        )
    if out is not None and (out.shape != gate.shape or out.dtype != gate.dtype or out.device != gate.device):
        raise ValueError(
            f"out must have gate's shape, dtype and device {tuple(gate.shape)} {gate.dtype} {gate.device}, "
            f"got {tuple(out.shape)} {out.dtype} {out.device}"
        )
