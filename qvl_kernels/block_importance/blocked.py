"""Block importance in plain torch, one query block at a time: the CPU path (see `naive.py` for
the definition).

xattn's reference scores every strided query row against every strided key row at once,
[B, HQ, L / stride, L / stride]; here each query block's `block / stride` strided rows are scored,
softmaxed and summed into their row of S before the next, so memory is O(L x block / stride^2).
`pooling` scores [nb, nb] pooled blocks, already small, and is the reference's.
"""

from __future__ import annotations

import math

import torch

from .naive import _strided_rows, check_args, check_fp8, dequantize_fp8, quantize_fp8
from .naive import block_importance as block_importance_naive


def block_importance_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block: int = 128,
    stride: int = 8,
    method: str = "xattn",
    causal: bool = True,
    out: torch.Tensor | None = None,
    fp8: bool = False,
) -> torch.Tensor:
    """Block importance with bounded memory; same arguments and result as `naive.block_importance`.

    q: [B, HQ, L, D]; k: [B, HKV, L, D]. Returns S: [B, HQ, nb, nb] fp32, nb = ceil(L / block)
    (written into `out` when given).
    """
    B, HQ, HKV, L, D, nb = check_args(q, k, block, stride, method)
    check_fp8(method, fp8)
    if method != "xattn":
        return block_importance_naive(q, k, block=block, stride=stride, method=method, causal=causal, out=out)
    G = HQ // HKV
    if fp8:
        q, k = dequantize_fp8(*quantize_fp8(q, k, stride=stride), stride=stride)
    qs = _strided_rows(q, stride, reverse=True)  # [B, HQ, Ls, s*D]
    ks = _strided_rows(k, stride, reverse=False).repeat_interleave(G, dim=1)  # [B, HQ, Ls, s*D]
    Ls, rows = qs.shape[2], block // stride
    S = torch.empty(B, HQ, nb, nb, dtype=torch.float32, device=q.device)
    for i in range(nb):
        first, end = i * rows, min((i + 1) * rows, Ls)
        seen = end if causal else Ls  # key rows past the block are causally invisible: probability 0
        s = qs[:, :, first:end] @ ks[:, :, :seen].transpose(-1, -2) / (math.sqrt(D) * stride)  # [B, HQ, rows, seen]
        if causal:
            t = torch.arange(seen, device=q.device)
            s = s.masked_fill(t[None, :] > torch.arange(first, end, device=q.device)[:, None], float("-inf"))
        p = torch.nn.functional.pad(torch.softmax(s, dim=-1), (0, nb * rows - seen))
        S[:, :, i] = p.unflatten(-1, (nb, rows)).sum((-1, -3))  # [B, HQ, nb]
    if out is not None:
        out.copy_(S)
        return out
    return S
