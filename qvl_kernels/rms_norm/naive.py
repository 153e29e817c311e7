"""Plain-PyTorch definition of RMSNorm (with an optional fused residual add), as transformers'
Qwen2RMSNorm computes it in eager mode."""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dimension, rounded where eager PyTorch rounds.

    x: [..., N]; weight: [N]; residual: None or [..., N] in x's dtype.
    h = x + residual (rounded to x's dtype, as eager addition is), or x;
    y = weight * (h.float() * rsqrt(mean(h.float()^2) + eps)).to(x.dtype), the product in the
    promoted dtype of weight and x (for equal dtypes: computed in fp32, rounded once).
    Returns y, or (y, h) when residual is given.
    """
    _check(x, weight, residual)
    h = x if residual is None else x + residual
    h32 = h.to(torch.float32)
    variance = h32.pow(2).mean(-1, keepdim=True)
    y = weight * (h32 * torch.rsqrt(variance + eps)).to(x.dtype)
    return y if residual is None else (y, h)


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must be [..., N] with N >= 1, got shape {tuple(x.shape)}")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight must be [N] = [{x.shape[-1]}], got shape {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"residual must match x's shape and dtype {tuple(x.shape)} {x.dtype}, "
            f"got {tuple(residual.shape)} {residual.dtype}"
        )
