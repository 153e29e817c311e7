"""rotary / rotary_qk (Triton) against the eager definition and transformers' formulas written out."""

import pytest
import torch
from _helpers import assert_close_rel, poisoned_allocations

from qvl_kernels.rotary import rotary, rotary_qk
from qvl_kernels.rotary.naive import rotary as rotary_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = pytest.mark.parametrize(
    "T, H, D",
    [(1, 1, 16), (7, 3, 80), (7, 16, 16), (129, 3, 80), (129, 16, 128)],
    ids=lambda v: str(v),
)
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
MATH = pytest.mark.parametrize("fp32_math", [True, False], ids=["fp32math", "eager"])


def _randn(*shape, dtype=torch.float32, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def _cos_sin(T, D, dtype, seed, device=DEVICE):
    """Qwen-style tables: angles pos * inv_freq over half the dims, repeated for both halves."""
    pos = torch.arange(T, dtype=torch.float32)[:, None] + seed
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    emb = torch.cat([pos * inv_freq, pos * inv_freq], dim=-1)
    return emb.cos().to(device=device, dtype=dtype), emb.sin().to(device=device, dtype=dtype)


def _rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary_pos_emb_vision(q, k, cos, sin):
    # transformers' Qwen2.5-VL vision tower
    orig_q_dtype, orig_k_dtype = q.dtype, k.dtype
    q, k = q.float(), k.float()
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    q_embed = (q * cos) + (_rotate_half(q) * sin)
    k_embed = (k * cos) + (_rotate_half(k) * sin)
    return q_embed.to(orig_q_dtype), k_embed.to(orig_k_dtype)


def _apply_rotary_pos_emb_text(q, k, cos, sin):
    # transformers' text model: q, k [B, H, S, D], cos, sin [B, S, D] in q's dtype
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _check(out, ref, dtype):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if dtype == torch.float32:
        assert_close_rel(out, ref, 1e-6)
    else:  # the op is eager's rounding sequence with no fused multiply-adds: bit for bit
        assert not out.isnan().any()
        assert torch.equal(out, ref)


@DTYPES
@MATH
@SHAPES
def test_rotary_matches_reference(T, H, D, dtype, fp32_math):
    x = _randn(T, H, D, dtype=dtype, seed=T * 100 + H)
    cos, sin = _cos_sin(T, D, torch.float32 if fp32_math else dtype, seed=D)
    with poisoned_allocations():
        y = rotary(x, cos, sin, fp32_math)
    _check(y, rotary_ref(x, cos, sin, fp32_math), dtype)


@DTYPES
@MATH
@pytest.mark.parametrize("T, H, D", [(7, 3, 80), (129, 16, 128)], ids=lambda v: str(v))
def test_rotary_qk_on_views_of_fused_qkv(T, H, D, dtype, fp32_math):
    """q and k as views of a fused qkv output [T, 3, H, D] (vision tower), in one launch."""
    qkv = _randn(T, 3, H, D, dtype=dtype, seed=T + D)
    q, k = qkv[:, 0], qkv[:, 1]
    cos, sin = _cos_sin(T, D, torch.float32 if fp32_math else dtype, seed=3)
    with poisoned_allocations():
        yq, yk = rotary_qk(q, k, cos, sin, fp32_math)
    _check(yq, rotary_ref(q, cos, sin, fp32_math), dtype)
    _check(yk, rotary_ref(k, cos, sin, fp32_math), dtype)


@DTYPES
@pytest.mark.parametrize("H, HK", [(3, 1), (16, 3), (1, 1)], ids=lambda v: str(v))
def test_rotary_qk_gqa_flat_buffer_in_place(H, HK, dtype):
    """q [T, H, D] and k [T, HK, D] sliced from a flat [T, (H + 2 HK) D] projection, rotated in
    place (out=(q, k)); v's part of the buffer is left alone."""
    T, D = 7, 80
    buf = _randn(T, (H + 2 * HK) * D, dtype=dtype, seed=H * 10 + HK)
    q = buf[:, : H * D].view(T, H, D)
    k = buf[:, H * D : (H + HK) * D].view(T, HK, D)
    cos, sin = _cos_sin(T, D, dtype, seed=5)
    before = buf.clone()
    rq, rk = rotary_ref(q.clone(), cos, sin, False), rotary_ref(k.clone(), cos, sin, False)
    yq, yk = rotary_qk(q, k, cos, sin, fp32_math=False, out=(q, k))
    assert yq.data_ptr() == q.data_ptr() and yk.data_ptr() == k.data_ptr()
    _check(q, rq, dtype)
    _check(k, rk, dtype)
    assert torch.equal(buf[:, (H + HK) * D :], before[:, (H + HK) * D :])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_rotary_broadcast_cos_and_out(dtype):
    """cos, sin [1, D] broadcast over tokens (one decode position); out= a strided view."""
    T, H, D = 5, 3, 16
    x = _randn(T, H, D, dtype=dtype, seed=1)
    cos, sin = _cos_sin(1, D, dtype, seed=9)
    out = torch.full((T, 2, H, D), float("nan"), dtype=dtype, device=DEVICE)[:, 1]
    rotary(x, cos, sin, fp32_math=False, out=out)
    _check(out, rotary_ref(x, cos, sin, False), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_reference_is_transformers_formula(dtype):
    """fp32_math=True is the vision tower's apply_rotary_pos_emb_vision; fp32_math=False is the
    text model's q * cos + rotate_half(q) * sin in the model dtype (on its [B, H, S, D] layout)."""
    T, H, D = 7, 3, 80
    q, k = _randn(T, H, D, dtype=dtype, seed=1, device="cpu"), _randn(T, 2, D, dtype=dtype, seed=2, device="cpu")
    cos, sin = _cos_sin(T, D, torch.float32, seed=0, device="cpu")
    eq, ek = _apply_rotary_pos_emb_vision(q, k, cos, sin)
    assert torch.equal(rotary_ref(q, cos, sin, True), eq)
    assert torch.equal(rotary_ref(k, cos, sin, True), ek)
    c, s = cos.to(dtype), sin.to(dtype)
    tq, tk = _apply_rotary_pos_emb_text(q.transpose(0, 1)[None], k.transpose(0, 1)[None], c[None], s[None])
    assert torch.equal(rotary_ref(q, c, s, False), tq[0].transpose(0, 1))
    assert torch.equal(rotary_ref(k, c, s, False), tk[0].transpose(0, 1))


def test_rotary_rejects_bad_input():
    x = _randn(3, 2, 16, dtype=torch.float16, seed=0)
    cos, sin = _cos_sin(3, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="D even"):
        rotary(_randn(3, 2, 15, seed=0), cos[:, :15], sin[:, :15])
    with pytest.raises(ValueError, match="fp32_math=False"):
        rotary(x, cos, sin, fp32_math=False)
    with pytest.raises(ValueError, match="cos"):
        rotary(x, cos[:2], sin[:2])
    with pytest.raises(ValueError, match="share T and D"):
        rotary_qk(x, x[:2], cos, sin)


@pytest.mark.gpu
@pytest.mark.parametrize("fp32_math", [True, False], ids=["fp32math", "eager"])
@pytest.mark.parametrize("T, H, HK, D", [(4099, 16, 16, 80), (300, 28, 4, 128), (1, 28, 4, 128)], ids=lambda v: str(v))
def test_rotary_bf16_gpu(T, H, HK, D, fp32_math):
    buf = _randn(T, (H + 2 * HK) * D, dtype=torch.bfloat16, seed=T, device="cuda")
    q, k = buf[:, : H * D].view(T, H, D), buf[:, H * D : (H + HK) * D].view(T, HK, D)
    cos, sin = _cos_sin(T, D, torch.float32 if fp32_math else torch.bfloat16, seed=7, device="cuda")
    with poisoned_allocations():
        yq, yk = rotary_qk(q, k, cos, sin, fp32_math)
        y1 = rotary(q, cos, sin, fp32_math)
    assert torch.equal(yq, rotary_ref(q, cos, sin, fp32_math))
    assert torch.equal(yk, rotary_ref(k, cos, sin, fp32_math))
    assert torch.equal(y1, yq)
