"""Plain-PyTorch fp32 definition of block importance (PSA step 1).

`xattn` (antidiagonal scoring, after XAttention), stride s: the sequence is cut into
Ls = ceil(L / s) strided rows of s tokens (tokens past L are zeros). Strided query row i is the
concatenation over j = 0..s-1 of q[i*s + s-1-j] and strided key row t the concatenation of
k[t*s + j], so one dot product over s*D values sums the antidiagonal of the s x s tile (i, t) of
the full score matrix. Scores are scaled by 1 / (sqrt(D) * s); with causality a strided query row
i sees strided key rows t <= i. Each strided row is softmaxed along keys and the probabilities
are summed into (query block, key block) pairs, block / s strided rows per block.

`pooling`: q and k are mean-pooled per block (a final partial block is the mean of its tokens),
and S = softmax(q_pooled k_pooled^T / sqrt(D)) along keys, with key block j visible to query
block i when j <= i under causality.

Causally invisible entries of S are 0.

`fp8=True` (xattn only): q and k are first quantized to float8_e4m3fn (`quantize_fp8`: q per
strided row of `stride` tokens, k per (batch, head); the largest |value| of each maps to 448,
values rounded to nearest, ties to even) and S is the xattn S of the dequantized values
q8 * scale_q, k8 * scale_k.
"""

from __future__ import annotations

import math

import torch

METHODS = ("xattn", "pooling")
E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
AMAX_FLOOR = 2.0**-48  # heads with a smaller largest |value| (all zeros) are scaled as if it were this


def check_args(q, k, block, stride, method):
    """Shared argument checks; returns (B, HQ, HKV, L, D, nb)."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("q must be [B, HQ, L, D] and k [B, HKV, L, D]")
    B, HQ, L, D = q.shape
    HKV = k.shape[1]
    if k.shape != (B, HKV, L, D):
        raise ValueError(f"k must be [B, HKV, L, D] = [{B}, HKV, {L}, {D}], got {tuple(k.shape)}")
    if HKV < 1 or HQ % HKV:
        raise ValueError(f"query heads ({HQ}) must be a multiple of KV heads ({HKV})")
    if L < 1:
        raise ValueError("sequence length must be >= 1")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    if method == "xattn" and (stride < 1 or stride & (stride - 1) or stride > block):
        raise ValueError(f"stride must be a power of two <= block ({block}), got {stride}")
    if q.dtype != k.dtype:
        raise ValueError("q and k must share one dtype")
    return B, HQ, HKV, L, D, math.ceil(L / block)


def check_fp8(method, fp8):
    if fp8 and method != "xattn":
        raise ValueError(f"fp8=True applies to method='xattn' only, got method={method!r}")


def _strided_rows(x: torch.Tensor, stride: int, reverse: bool) -> torch.Tensor:
    """[B, H, L, D] -> [B, H, Ls, s*D]: row i concatenates x[i*s + j] (or x[i*s + s-1-j])."""
    B, H, L, D = x.shape
    Ls = math.ceil(L / stride)
    x = torch.nn.functional.pad(x.float(), (0, 0, 0, Ls * stride - L))
    x = x.unflatten(2, (Ls, stride))  # [B, H, Ls, s, D]
    if reverse:
        x = x.flip(3)
    return x.flatten(3)


def _block_sum(p: torch.Tensor, rows_per_block: int, nb: int) -> torch.Tensor:
    """[..., Lq, Lk] -> [..., nb, nb]: sum over rows_per_block x rows_per_block tiles."""
    n = nb * rows_per_block
    p = torch.nn.functional.pad(p, (0, n - p.shape[-1], 0, n - p.shape[-2]))
    return p.unflatten(-1, (nb, rows_per_block)).sum(-1).unflatten(-2, (nb, rows_per_block)).sum(-2)


def _block_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, H, L, D] -> [B, H, nb, D]: mean over the tokens of each block (fp32)."""
    L = x.shape[2]
    nb = math.ceil(L / block)
    xs = torch.nn.functional.pad(x.float(), (0, 0, 0, nb * block - L)).unflatten(2, (nb, block)).sum(3)
    count = torch.clamp(L - torch.arange(nb, device=x.device) * block, max=block).float()
    return xs / count[:, None]


def quantize_fp8(q: torch.Tensor, k: torch.Tensor, *, stride: int = 8):
    """Reference fp8 quantization; same arguments and result as `quantize.quantize_fp8`.

    q: [B, HQ, L, D], k: [B, HKV, L, D] (finite values). Returns (q8, k8, q_scale, k_scale):
    contiguous float8_e4m3fn copies and fp32 scales q_scale [B, HQ, ceil(L / stride)] (per
    strided row of q: tokens i*stride .. i*stride + stride - 1) and k_scale [B, HKV] (per head)
    with x ~ x8 * scale; a = max(largest |value| of the row or head, AMAX_FLOOR),
    scale = a / 448, x8 = fp8(x * (448 / a)) (fp32 product, rounded to nearest, ties to even).
    """

    def cast(x, a):
        qmax = torch.full_like(a, E4M3_MAX)  # tensor / tensor: IEEE division (scalar / tensor and
        # tensor / scalar can be a multiply by a reciprocal, one rounding more)
        return (x.float() * (qmax / a)).to(torch.float8_e4m3fn).contiguous(), a / qmax

    B, HQ, L, D = q.shape
    Ls = math.ceil(L / stride)
    rows = torch.nn.functional.pad(q.float(), (0, 0, 0, Ls * stride - L)).unflatten(2, (Ls, stride))
    a = rows.abs().amax(dim=(3, 4)).clamp_min(AMAX_FLOOR)  # [B, HQ, Ls]
    q8, q_scale = cast(q, a.repeat_interleave(stride, dim=2)[:, :, :L, None])
    k8, k_scale = cast(k, k.abs().amax(dim=(2, 3)).float().clamp_min(AMAX_FLOOR)[..., None, None])
    return q8, k8, q_scale[:, :, ::stride, 0].contiguous(), k_scale[..., 0, 0]


def dequantize_fp8(q8, k8, q_scale, k_scale, stride: int = 8):
    """fp32 values of `quantize_fp8`'s copies: (q8 * q_scale per strided row, k8 * k_scale per head)."""
    L = q8.shape[2]
    return (
        q8.float() * q_scale.repeat_interleave(stride, dim=2)[:, :, :L, None],
        k8.float() * k_scale[..., None, None],
    )


def block_importance(
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
    """Reference block importance; same arguments and result as the Triton version.

    q: [B, HQ, L, D]; k: [B, HKV, L, D] (query head h reads KV head h // (HQ // HKV)).
    fp8: xattn on the dequantized `quantize_fp8` copies of q and k.
    Returns S: [B, HQ, nb, nb] fp32, nb = ceil(L / block) (written into `out` when given).
    Memory is O(L^2 / stride^2): for tests and small checks only.
    """
    B, HQ, HKV, L, D, nb = check_args(q, k, block, stride, method)
    check_fp8(method, fp8)
    G = HQ // HKV
    if fp8:
        q, k = dequantize_fp8(*quantize_fp8(q, k, stride=stride), stride=stride)
    if method == "xattn":
        qs = _strided_rows(q, stride, reverse=True)  # [B, HQ, Ls, s*D]
        ks = _strided_rows(k, stride, reverse=False).repeat_interleave(G, dim=1)  # [B, HQ, Ls, s*D]
        s = qs @ ks.transpose(-1, -2) / (math.sqrt(D) * stride)  # [B, HQ, Ls, Ls]
        rows = block // stride
    else:
        qp = _block_mean(q, block)
        kp = _block_mean(k, block).repeat_interleave(G, dim=1)
        s = qp @ kp.transpose(-1, -2) / math.sqrt(D)  # [B, HQ, nb, nb]
        rows = 1
    if causal:
        n = s.shape[-1]
        invisible = torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1)
        s = s.masked_fill(invisible, float("-inf"))
    p = torch.softmax(s, dim=-1)
    S = _block_sum(p, rows, nb) if rows > 1 else p
    if out is not None:
        out.copy_(S)
        return out
    return S
