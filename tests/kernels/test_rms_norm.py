"""rms_norm (Triton) against its eager definition and transformers' Qwen2RMSNorm written out."""

import pytest
import torch
from _helpers import assert_close_rel, poisoned_allocations

from qvl_kernels.rms_norm import rms_norm
from qvl_kernels.rms_norm import triton as rms_triton
from qvl_kernels.rms_norm.naive import rms_norm as rms_norm_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
SIZES = pytest.mark.parametrize("N", [40, 100, 1280, 3584], ids=lambda v: f"N{v}")


def _randn(*shape, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def _grid_values(*shape, dtype, seed, device=DEVICE):
    """Multiples of 1/16 in [-2, 2] (never all zero): every sum of squares of a row of up to
    ~16k such values (or of pairwise sums of them) is exact in fp32, in any order."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-32, 33, shape, generator=g)
    k[k == 0] = 1
    return (k.float() / 16).to(device=device, dtype=dtype)


def _qwen2_rms_norm(hidden_states, weight, eps):
    # transformers' Qwen2RMSNorm.forward
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + eps)
    return weight * hidden_states.to(input_dtype)


def _assert_near_tie_only(out, ref, what):
    """fp16/bf16 y that may differ from eager where the normalized value's rounding is a near tie:
    one ulp of it, scaled by a weight near 1 and rounded, is at most two ulps of y, and rare."""
    assert_close_rel(out, ref, 1e-3, what=what)
    o, r = out.double(), ref.double()
    ulp = torch.finfo(ref.dtype).eps * torch.exp2(torch.floor(torch.log2(r.abs().clamp_min(1e-30))))
    assert ((o - r).abs() <= 2 * ulp).all(), f"{what}: more than two ulps from eager"
    assert (out != ref).float().mean().item() <= 0.01, f"{what}: too many values off"


@DTYPES
@SIZES
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_rms_norm_matches_reference(N, dtype, residual):
    x = _randn(3, 5, N, dtype=dtype, seed=N)
    r = _randn(3, 5, N, dtype=dtype, seed=N + 1) if residual else None
    w = (1 + 0.1 * _randn(N, dtype=torch.float32, seed=N + 2)).to(dtype)
    with poisoned_allocations():
        out = rms_norm(x, w, 1e-6, r)
    ref = rms_norm_ref(x, w, 1e-6, r)
    y, yr = (out[0], ref[0]) if residual else (out, ref)
    assert y.dtype == dtype and y.shape == x.shape
    if residual:
        assert torch.equal(out[1], ref[1]), "x + residual must be eager's rounding exactly"
    if dtype == torch.float32:
        assert_close_rel(y, yr, 1e-6)
    else:
        _assert_near_tie_only(y, yr, "y")


@DTYPES
@SIZES
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_rms_norm_bit_exact_when_statistics_are_exact(N, dtype, residual):
    """With an exactly summable row, the statistics cannot depend on reduction order, so every
    rounding left (x + residual, the normalized row to x's dtype, weight * it) must be eager's."""
    x = _grid_values(7, N, dtype=dtype, seed=N)
    r = _grid_values(7, N, dtype=dtype, seed=N + 1) if residual else None
    w = _randn(N, dtype=dtype, seed=N + 2)
    with poisoned_allocations():
        out = rms_norm(x, w, 1e-6, r)
    ref = rms_norm_ref(x, w, 1e-6, r)
    for o, rf in zip(out, ref) if residual else ((out, ref),):
        if dtype == torch.float32 and o.is_cuda:
            # The GPU's rsqrt is within an ulp of fp32, not torch's exactly rounded one; the
            # 16-bit types round that difference away, fp32 keeps it.
            assert_close_rel(o, rf, 1e-6)
        else:
            assert torch.equal(o, rf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_reference_is_qwen2_rms_norm(dtype):
    """The definition is transformers' module exactly, and the residual form is the decoder
    layer's `residual + hidden_states` followed by the norm."""
    x = _randn(5, 100, dtype=dtype, seed=0, device="cpu")
    r = _randn(5, 100, dtype=dtype, seed=1, device="cpu")
    w = _randn(100, dtype=dtype, seed=2, device="cpu")
    assert torch.equal(rms_norm_ref(x, w, 1e-6), _qwen2_rms_norm(x, w, 1e-6))
    y, h = rms_norm_ref(x, w, 1e-6, r)
    assert torch.equal(h, r + x)
    assert torch.equal(y, _qwen2_rms_norm(r + x, w, 1e-6))


def test_rms_norm_fp32_weight_promotes():
    """An fp32 weight with fp16 activations gives fp32 output, as eager promotion does."""
    x = _grid_values(4, 100, dtype=torch.float16, seed=3)
    w = _randn(100, dtype=torch.float32, seed=4)
    with poisoned_allocations():
        y = rms_norm(x, w, 1e-5)
    assert y.dtype == torch.float32
    assert torch.equal(y, rms_norm_ref(x, w, 1e-5))


def test_rms_norm_strided_rows():
    """Rows of a wider buffer (stride > N) and a single row."""
    buf = _randn(9, 2 * 1280, dtype=torch.float16, seed=5)
    x, r = buf[:, :1280], buf[:, 1280:]
    w = _randn(1280, dtype=torch.float16, seed=6)
    y, h = rms_norm(x, w, 1e-6, r)
    yr, hr = rms_norm_ref(x, w, 1e-6, r)
    assert torch.equal(h, hr)
    _assert_near_tie_only(y, yr, "y")
    assert_close_rel(rms_norm(x[:1], w, 1e-6), rms_norm_ref(x[:1], w, 1e-6), 1e-3)


def test_rms_norm_rejects_bad_shapes():
    x = _randn(3, 40, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, _randn(41, dtype=torch.float32, seed=1), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, _randn(40, dtype=torch.float32, seed=1), 1e-6, x.half())


def test_rms_norm_plain_cpu_uses_reference(monkeypatch):
    """Without CUDA or the interpreter the public op is the eager definition, and the kernel's
    launcher says where it runs."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w = _randn(3, 40, dtype=torch.float32, seed=0, device="cpu"), _randn(40, dtype=torch.float32, seed=1)
    assert torch.equal(rms_norm(x, w.cpu(), 1e-6), rms_norm_ref(x, w.cpu(), 1e-6))
    with pytest.raises(ValueError, match="CUDA"):
        rms_triton.rms_norm(x, w.cpu(), 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1280, 2048, 3584, 8192], ids=lambda v: f"N{v}")
def test_rms_norm_bf16_gpu(N):
    x = _randn(4099, N, dtype=torch.bfloat16, seed=N, device="cuda")
    r = _randn(4099, N, dtype=torch.bfloat16, seed=N + 1, device="cuda")
    w = (1 + 0.1 * _randn(N, dtype=torch.float32, seed=N + 2, device="cuda")).to(torch.bfloat16)
    with poisoned_allocations():
        y, h = rms_norm(x, w, 1e-6, r)
    yr, hr = rms_norm_ref(x, w, 1e-6, r)
    assert torch.equal(h, hr)
    _assert_near_tie_only(y, yr, "y")
    xe, we = _grid_values(33, N, dtype=torch.bfloat16, seed=N, device="cuda"), w
    assert torch.equal(rms_norm(xe, we, 1e-6), rms_norm_ref(xe, we, 1e-6))
