"""Plain-PyTorch definition of decode attention over a static KV cache."""

from __future__ import annotations

import torch


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """One new query token per sequence attends to the first `length[b]` slots of its cache.

    q: [B, HQ, D]. k_cache, v_cache: [B, HKV, S, D], S the cache capacity, HQ = G * HKV
    (query head h reads KV head h // G). length: [B] integer tensor on q's device; slots
    0 .. length[b] - 1 are attended to, the rest are never read into the arithmetic (they may
    hold NaN or inf). A length above S counts as S; a length of 0 gives a zero output.
    scale: D ** -0.5 by default. Returns [B, HQ, D] in q's dtype; math in fp32.
    """
    check_args(q, k_cache, v_cache, length)
    B, HQ, D = q.shape
    _, HKV, S, _ = k_cache.shape
    G = HQ // HKV
    scale = D**-0.5 if scale is None else scale
    valid = torch.arange(S, device=q.device)[None, :] < length.clamp(0, S)[:, None]  # [B, S]
    k = k_cache.float().masked_fill(~valid[:, None, :, None], 0.0)
    v = v_cache.float().masked_fill(~valid[:, None, :, None], 0.0)
    s = torch.einsum("bhgd,bhsd->bhgs", q.float().view(B, HKV, G, D), k) * scale
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with no key (length 0) is all NaN -> 0
    out = torch.einsum("bhgs,bhsd->bhgd", p, v)
    return out.reshape(B, HQ, D).to(q.dtype)


def check_args(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: torch.Tensor) -> None:
    if q.dim() != 3:
        raise ValueError(f"q must be [B, HQ, D], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [B, HKV, S, D], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    B, HQ, D = q.shape
    Bk, HKV, S, Dk = k_cache.shape
    if Bk != B or Dk != D:
        raise ValueError(f"q {tuple(q.shape)} and the cache {tuple(k_cache.shape)} disagree on B or D")
    if S < 1 or HQ % HKV != 0:
        raise ValueError(f"need S >= 1 and HQ a multiple of HKV, got S={S}, HQ={HQ}, HKV={HKV}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if length.shape != (B,) or length.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"length must be an int32/int64 tensor [B={B}], got {tuple(length.shape)} {length.dtype}")
    if not (length.device == q.device == k_cache.device == v_cache.device):
        raise ValueError("q, k_cache, v_cache and length must be on one device")
