"""mean_pool (Triton) against its plain-PyTorch definition and the one-line torch expression."""

import pytest
import torch
from _helpers import TOL, assert_close_rel, poisoned_allocations

from qvl_kernels.pooling import mean_pool, mean_pool_kv
from qvl_kernels.pooling.naive import mean_pool as mean_pool_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _x(B, H, L, D, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, L, D, generator=g).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("L, D", [(1, 64), (7, 80), (63, 128), (129, 64), (300, 80)], ids=lambda v: str(v))
def test_mean_pool_matches_reference(L, D, dtype):
    x = _x(2, 3, L, D, dtype, seed=L * 1000 + D)
    with poisoned_allocations():
        outs = mean_pool(x)
    refs = mean_pool_ref(x.float())
    for r, o, ref in zip((2, 4, 8), outs, refs):
        assert o.dtype == dtype
        assert_close_rel(o, ref, TOL[dtype] / 4, what=f"{r}x pool")


@pytest.mark.parametrize("r", [2, 4, 8])
def test_mean_pool_is_one_line_torch_when_divisible(r):
    x = _x(1, 2, 64, 80, torch.float32, seed=r)
    (o,) = mean_pool(x, ratios=(r,))
    assert_close_rel(o, x.unflatten(-2, (-1, r)).mean(-2), 1e-6)


def test_mean_pool_partial_group_averages_existing_tokens():
    x = _x(1, 1, 13, 64, torch.float32, seed=3)
    o2, o4, o8 = mean_pool(x)
    assert_close_rel(o8[:, :, 1], x[:, :, 8:13].mean(-2), 1e-6)
    assert_close_rel(o4[:, :, 3], x[:, :, 12:13].mean(-2), 1e-6)
    assert_close_rel(o2[:, :, 6], x[:, :, 12:13].mean(-2), 1e-6)


def test_mean_pool_strided_input():
    base = _x(2, 45, 3, 64, torch.float32, seed=5)  # [B, L, H, D] as a model holds it
    x = base.transpose(1, 2)
    outs = mean_pool(x)
    for o, ref in zip(outs, mean_pool_ref(x.contiguous())):
        assert_close_rel(o, ref, 1e-6)


@pytest.mark.parametrize("L", [1, 13, 129, 300], ids=lambda v: f"L{v}")
def test_mean_pool_kv_pools_both_in_one_launch(L):
    """k and v in one launch, with different strides (v a transposed view), equal the reference
    per tensor; a pooled tensor of one never holds values of the other."""
    k = _x(2, 3, L, 64, torch.float16, seed=L)
    v = _x(2, L, 3, 64, torch.float16, seed=L + 1).transpose(1, 2)
    with poisoned_allocations():
        pk, pv = mean_pool_kv(k, v)
    for x, pools in ((k, pk), (v, pv)):
        for r, o, ref in zip((2, 4, 8), pools, mean_pool_ref(x.float())):
            assert o.dtype == torch.float16
            assert_close_rel(o, ref, TOL[torch.float16] / 4, what=f"{r}x pool")


def test_mean_pool_kv_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share shape"):
        mean_pool_kv(_x(1, 2, 8, 64, torch.float32, seed=0), _x(1, 2, 9, 64, torch.float32, seed=1))


def test_mean_pool_rejects_bad_ratio():
    with pytest.raises(ValueError):
        mean_pool(_x(1, 1, 8, 64, torch.float32, seed=0), ratios=(3,))


@pytest.mark.gpu
@pytest.mark.parametrize("L", [63, 300, 4099], ids=lambda v: f"L{v}")
def test_mean_pool_bf16_gpu(L):
    x = _x(2, 4, L, 128, torch.bfloat16, seed=L, device="cuda")
    v = _x(2, 4, L, 128, torch.bfloat16, seed=L + 1, device="cuda")
    with poisoned_allocations():
        outs = mean_pool(x)
        pk, pv = mean_pool_kv(x, v)
    for o, ok, ref in zip(outs, pk, mean_pool_ref(x.float())):
        assert_close_rel(o, ref, 1e-2)
        assert torch.equal(o, ok)
    for o, ref in zip(pv, mean_pool_ref(v.float())):
        assert_close_rel(o, ref, 1e-2)
