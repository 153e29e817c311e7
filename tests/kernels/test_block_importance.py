"""block_importance (Triton xattn, torch pooling) against its plain-PyTorch definition."""

import importlib
import math

import pytest
import torch

from _helpers import TOL, assert_close_rel, poison, poisoned_allocations
from qvl_kernels.block_importance import block_importance
from qvl_kernels.block_importance.naive import block_importance as block_importance_ref

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # log2(0) = -inf, on purpose

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu),
]

# (B, HKV, G, L, D, block, stride): odd lengths, GQA groups 1, 2, 7, head dims 64, 80, 128
CASES = [
    (1, 1, 1, 1, 64, 16, 4),
    (2, 1, 2, 63, 80, 16, 4),
    (1, 1, 7, 129, 64, 32, 8),
    (1, 2, 1, 300, 128, 128, 8),
    (1, 1, 2, 300, 64, 32, 4),  # several row and key tiles: the online max/sum across tiles
]


def _case_id(c):
    B, HKV, G, L, D, block, stride = c
    return f"B{B}-HKV{HKV}-G{G}-L{L}-D{D}-blk{block}-s{stride}"


def _qk(B, HKV, G, L, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    # q scaled up so the softmax is peaked, not flat: a kernel that mixes up rows shows
    q = 2.0 * torch.randn(B, HKV * G, L, D, generator=g)
    k = torch.randn(B, HKV, L, D, generator=g)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype)


XATTN_CASES = [pytest.param(c, True, id=_case_id(c) + "-causal") for c in CASES] + [
    pytest.param(c, False, id=_case_id(c) + "-full") for c in (CASES[1], CASES[4])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,causal", XATTN_CASES)
def test_xattn_matches_reference(case, causal, dtype):
    B, HKV, G, L, D, block, stride = case
    q, k = _qk(B, HKV, G, L, D, dtype, seed=L * 7 + G)
    nb = math.ceil(L / block)
    out = torch.empty(B, HKV * G, nb, nb, device=DEVICE)
    poison(out)
    with poisoned_allocations():  # the internal scratch too: nothing unwritten may be read
        S = block_importance(q, k, block=block, stride=stride, causal=causal, out=out)
    ref = block_importance_ref(q.float(), k.float(), block=block, stride=stride, causal=causal)
    assert S.data_ptr() == out.data_ptr() and S.dtype == torch.float32
    assert_close_rel(S, ref, TOL[dtype], what="xattn S")
    if causal:
        assert (S.triu(1) == 0).all(), "causally invisible blocks must be exactly 0"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", CASES[:3], ids=_case_id)
def test_pooling_matches_reference(case, causal, dtype):
    B, HKV, G, L, D, block, _ = case
    q, k = _qk(B, HKV, G, L, D, dtype, seed=L * 11 + G)
    with poisoned_allocations():
        S = block_importance(q, k, block=block, method="pooling", causal=causal)
    ref = block_importance_ref(q.float(), k.float(), block=block, method="pooling", causal=causal)
    assert_close_rel(S, ref, TOL[dtype], what="pooling S")
    assert_close_rel(S.sum(-1), torch.ones_like(S.sum(-1)), 1e-5, what="pooling row sums")


def test_xattn_chunked_rows_match(monkeypatch):
    # Long sequences are walked in chunks of strided query rows; force several chunks here.
    mod = importlib.import_module("qvl_kernels.block_importance.block_importance")  # the module, not the function
    align, L = (128, 1100) if torch.cuda.is_available() else (32, 300)  # a multiple of every BM
    monkeypatch.setattr(mod, "ROW_ALIGN", align)
    monkeypatch.setattr(mod, "SCRATCH_BYTES", 1)
    q, k = _qk(1, 1, 2, L, 64, torch.float32, seed=9)  # 275 / 75 strided rows: 3 chunks
    with poisoned_allocations():
        S = block_importance(q, k, block=32, stride=4)
    assert_close_rel(S, block_importance_ref(q, k, block=32, stride=4), 1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only switch; the GPU autotunes both loops")
@pytest.mark.parametrize("flat", [True, False], ids=["flat-loop", "nested-loops"])
def test_xattn_both_loop_structures(monkeypatch, flat):
    mod = importlib.import_module("qvl_kernels.block_importance.block_importance")
    monkeypatch.setattr(mod, "INTERPRET_FLAT", flat)
    mod._xattn_kernel.cache.clear()
    try:
        for causal in (True, False):
            q, k = _qk(1, 1, 2, 300, 64, torch.float32, seed=10)  # 3 x 3 tiles of 32 strided rows
            with poisoned_allocations():
                S = block_importance(q, k, block=32, stride=4, causal=causal)
            assert_close_rel(S, block_importance_ref(q, k, block=32, stride=4, causal=causal), 1e-5)
    finally:
        mod._xattn_kernel.cache.clear()


def test_xattn_is_the_antidiagonal_of_the_full_score_matrix():
    # Straight from the definition: strided query row i, strided key row t score
    # sum_j q[i*s + s-1-j] . k[t*s + j], over sqrt(D) * s; softmax over t <= i; block sums.
    B, HKV, G, L, D, block, s = 1, 1, 2, 40, 64, 16, 4
    q, k = _qk(B, HKV, G, L, D, torch.float32, seed=1)
    full = torch.einsum("bhld,bmd->bhlm", q.double().cpu(), k[:, 0].double().cpu())  # G = 2 heads on KV head 0
    Ls, nb = L // s, math.ceil(L / block)
    x = torch.zeros(B, HKV * G, Ls, Ls, dtype=torch.float64)
    for i in range(Ls):
        for t in range(Ls):
            x[..., i, t] = sum(full[..., i * s + s - 1 - j, t * s + j] for j in range(s))
    x = (x / (math.sqrt(D) * s)).masked_fill(torch.ones(Ls, Ls, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.softmax(x, -1)
    R = block // s
    ref = torch.zeros(B, HKV * G, nb, nb, dtype=torch.float64)
    for i in range(Ls):
        for t in range(Ls):
            ref[..., i // R, t // R] += p[..., i, t]
    S = block_importance(q, k, block=block, stride=s)
    assert_close_rel(S.cpu(), ref, 1e-5, what="xattn S vs definition")


def test_xattn_stride_1_is_block_sums_of_causal_attention():
    B, HKV, G, L, D, block = 1, 1, 1, 50, 64, 16
    q, k = _qk(B, HKV, G, L, D, torch.float32, seed=2)
    p = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(
        torch.ones(L, L, dtype=torch.bool, device=DEVICE).triu(1), float("-inf")), -1)
    nb = math.ceil(L / block)
    p = torch.nn.functional.pad(p, (0, nb * block - L, 0, nb * block - L))
    ref = p.unflatten(-1, (nb, block)).sum(-1).unflatten(-2, (nb, block)).sum(-2)
    S = block_importance(q, k, block=block, stride=1)
    assert_close_rel(S, ref, 1e-5, what="stride-1 S")


def test_xattn_row_sums_count_strided_rows():
    L, block, s = 300, 32, 4
    q, k = _qk(1, 1, 2, L, 64, torch.float32, seed=3)
    S = block_importance(q, k, block=block, stride=s)
    rows = torch.tensor([min(block // s, math.ceil(L / s) - i * (block // s)) for i in range(S.shape[-1])], dtype=torch.float32)
    assert_close_rel(S.sum(-1).cpu(), rows.expand(1, 2, -1), 1e-5, what="row sums")


def test_strided_input_is_read_in_place():
    B, HQ, HKV, L, D = 1, 4, 2, 100, 64
    g = torch.Generator().manual_seed(4)
    q = torch.randn(B, L, HQ, D, generator=g).to(DEVICE).transpose(1, 2)  # [B, HQ, L, D] view of [B, L, H, D]
    k = torch.randn(B, L, HKV, D, generator=g).to(DEVICE).transpose(1, 2)
    S = block_importance(q, k, block=16, stride=4)
    assert_close_rel(S, block_importance_ref(q, k, block=16, stride=4), 1e-5)


def test_bad_arguments():
    q, k = _qk(1, 1, 1, 64, 64, torch.float32, seed=0)
    with pytest.raises(ValueError):
        block_importance(q, k, block=48)
    with pytest.raises(ValueError):
        block_importance(q, k, stride=3)
    with pytest.raises(ValueError):
        block_importance(q, k, method="random")
    with pytest.raises(ValueError):
        block_importance(q[:, :, :, :32], k)


@pytest.mark.gpu
@pytest.mark.parametrize("L", [4099, 16384], ids=lambda v: f"L{v}")
def test_xattn_long_bf16_on_gpu(L):
    B, HKV, G, D = 1, 2, 7, 128
    q, k = _qk(B, HKV, G, L, D, torch.bfloat16, seed=L)
    with poisoned_allocations():
        S = block_importance(q, k)
    ref = block_importance_ref(q.float(), k.float())
    assert_close_rel(S, ref, TOL[torch.bfloat16], what="xattn S")
