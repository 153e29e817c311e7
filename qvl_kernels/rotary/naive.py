"""Plain-PyTorch definition of rotary position embedding, as transformers applies it in
Qwen2.5-VL's vision tower (fp32 math) and text model (math in the input dtype)."""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """cat(-x[..., D/2:], x[..., :D/2]) over the last dimension."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    fp32_math: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, per token and head.

    x: [T, H, D] (D even); cos, sin: [T, D] or [1, D]; out: None or [T, H, D] in x's dtype.
    fp32_math=True (vision tower): computed in fp32 from x.float(), cos.float(), sin.float(),
    rounded once to x's dtype. fp32_math=False (text model): eager arithmetic in x's dtype, with
    cos and sin in x's dtype: each product rounded to x's dtype, then their sum rounded again.
    Returns y: [T, H, D] in x's dtype (out, when given).
    """
    _check(x, cos, sin, fp32_math, out)
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)  # [T, 1, D]
    if fp32_math:
        xf = x.float()
        y = (xf * c.float() + rotate_half(xf) * s.float()).to(x.dtype)
    else:
        y = x * c + rotate_half(x) * s
    if out is None:
        return y
    return out.copy_(y)


def rotary_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    fp32_math: bool = True,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotary(q, ...), rotary(k, ...)) with shared cos and sin; q: [T, H, D], k: [T, HK, D]."""
    oq, ok = out if out is not None else (None, None)
    return rotary(q, cos, sin, fp32_math, oq), rotary(k, cos, sin, fp32_math, ok)


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fp32_math: bool, out: torch.Tensor | None) -> None:
    if x.dim() != 3 or x.shape[-1] % 2:
        raise ValueError(f"x must be [T, H, D] with D even, got shape {tuple(x.shape)}")
    T, _, D = x.shape
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 2 or t.shape[-1] != D or t.shape[0] not in (1, T):
            raise ValueError(f"{name} must be [T, D] or [1, D] with T={T}, D={D}, got shape {tuple(t.shape)}")
        if not fp32_math and t.dtype != x.dtype:
            raise ValueError(f"with fp32_math=False, {name} must be in x's dtype {x.dtype}, got {t.dtype}")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype):
        raise ValueError(
            f"out must match x's shape and dtype {tuple(x.shape)} {x.dtype}, got {tuple(out.shape)} {out.dtype}"
        )
