"""Pyramid attention: block-sparse attention over mean-pooled K/V levels (PSA step 4).

`naive.py` defines the op; `triton.py` is the portable kernel, `hopper.py` the Gluon kernel for
H100/H200; `pyramid_attention` picks one.
"""

from __future__ import annotations

import warnings

from .._device import capability, fp32_on_gpu
from ..pooling import mean_pool_kv
from .blocked import pyramid_attention_blocked
from .naive import check_args
from .triton import build_block_lists, pyramid_attention_triton

__all__ = ["build_block_lists", "pyramid_attention", "pyramid_attention_triton"]

_gluon_builds = True  # False once the installed Triton failed to build the Gluon kernel (said once)


def _hopper(q, k, v, block):
    """hopper.py if its Gluon kernel can run this call, else None. Imported only on an H100/H200:
    Gluon adds ~0.16 s to the import, which nothing else should pay."""
    if not (_gluon_builds and q.is_cuda and block == 128 and capability(q.device) == (9, 0)):
        return None
    from . import hopper

    return hopper if hopper.supported(q, k, v, block, False) else None


def pyramid_attention(q, k, v, levels, *, causal: bool = True, scale: float | None = None, block: int = 128):
    """Pyramid sparse attention (PSA step 4) with per-block pooling levels.

    q: [B, HQ, L, D]; k, v: [B, HKV, L, D] with HQ = G * HKV (query head h reads KV head h // G,
    in place: K and V are never expanded); any strides; fp32, fp16 or bf16; D <= 256 (64, 80 and
    128 are tested); any L >= 1.
    levels: [B, HQ, nb, nb] integers (int8 preferred) in {0, 1, 2, 4, 8}, nb = ceil(L / block);
    levels[b, h, i, j] = r > 0 lets query block i attend to key block j mean-pooled over r
    consecutive tokens (pooled score + ln r); 0 skips the block. When causal, blocks right of
    the diagonal are ignored whatever their level, and a pooled key is used only by queries at or
    after its last token.
    causal: default True. scale: default 1 / sqrt(D). block: tokens per block, a power of two
    >= 16, default 128.
    Returns o: [B, HQ, L, D] in q's dtype. A query that sees no key gets 0.
    On an H100/H200 the calls it supports (block 128, bf16/fp16, head_dim 64 or 128) run the
    Gluon kernel of hopper.py; fp32 on a GPU runs the blocked PyTorch path of blocked.py (see
    `fp32_on_gpu`); every other call, the Triton kernel of triton.py.
    With every visible block at level 1 this equals (causal) scaled-dot-product attention.
    """
    global _gluon_builds

    if fp32_on_gpu(q):
        return pyramid_attention_blocked(q, k, v, levels, causal=causal, scale=scale, block=block)
    hopper = _hopper(q, k, v, block)
    if hopper is None:
        return pyramid_attention_triton(q, k, v, levels, causal=causal, scale=scale, block=block)
    check_args(q, k, v, levels, causal, block)
    (k2, k4, k8), (v2, v4, v8) = mean_pool_kv(k, v)
    pooled, lists = (k2, k4, k8, v2, v4, v8), build_block_lists(levels, causal)
    try:
        hopper_scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return hopper.pyramid_attention_hopper(q, k, v, pooled, lists, causal, hopper_scale)
    except hopper.GLUON_COMPILE_ERRORS as e:  # a Triton whose Gluon API differs: say so once, go on
        _gluon_builds = False
        import triton

        warnings.warn(
            f"qvl_kernels: the Gluon Hopper kernel does not build with Triton {triton.__version__} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); using the Triton kernel",
            RuntimeWarning,
            stacklevel=2,
        )
    return pyramid_attention_triton(
        q, k, v, levels, causal=causal, scale=scale, block=block, pooled=pooled, lists=lists
    )
