"""Plain-PyTorch definition of the sequence mean-pool used by pyramid attention."""

from __future__ import annotations

import math

import torch


def mean_pool(x: torch.Tensor, ratios: tuple[int, ...] = (2, 4, 8)) -> tuple[torch.Tensor, ...]:
    """Mean over groups of r consecutive tokens, for every r in `ratios`.

    x: [B, H, L, D]. Returns one tensor per ratio, [B, H, ceil(L / r), D], in x's dtype.
    Group t covers tokens [t*r, min(t*r + r, L)); the last group of a length that is not a
    multiple of r averages only the tokens that exist. When L % r == 0 this is exactly
    `x.unflatten(-2, (-1, r)).mean(-2)`. Math in fp32.
    """
    _check(x, ratios)
    B, H, L, D = x.shape
    xf = x.float()
    outs = []
    for r in ratios:
        n = math.ceil(L / r)
        pad = n * r - L
        xp = torch.nn.functional.pad(xf, (0, 0, 0, pad))
        s = xp.unflatten(-2, (n, r)).sum(-2)
        count = (L - torch.arange(n, device=x.device) * r).clamp(max=r).to(torch.float32)
        outs.append((s / count[:, None]).to(x.dtype))
    return tuple(outs)


def _check(x: torch.Tensor, ratios: tuple[int, ...]) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be [B, H, L, D], got shape {tuple(x.shape)}")
    if x.shape[2] < 1:
        raise ValueError("x must hold at least one token")
    if not ratios or any(r not in (2, 4, 8) for r in ratios):
        raise ValueError(f"ratios must be a non-empty subset of (2, 4, 8), got {ratios}")
