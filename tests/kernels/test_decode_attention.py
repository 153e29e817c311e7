"""decode_attention (Triton, split over the keys) against its plain-PyTorch definition and SDPA."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, assert_close_rel, poisoned_allocations

from qvl_kernels.decode_attention import decode_attention
from qvl_kernels.decode_attention import triton as decode_triton
from qvl_kernels.decode_attention.naive import decode_attention as decode_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, HQ, HKV, D, S, lengths, dtype, seed, device=DEVICE, length_dtype=torch.int32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, D, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(B, HKV, S, D, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(B, HKV, S, D, generator=g).to(device=device, dtype=dtype)
    return q, k, v, torch.tensor(lengths, dtype=length_dtype, device=device)


def _ref(q, k, v, length, scale=None):
    return decode_ref(q.float(), k.float(), v.float(), length, scale)


# (B, HQ, HKV, D, S, lengths): length 1, S and in between, different per batch row; GQA groups
# 1, 3 and 7; S from 1 to past four 128-key splits.
CASES = [
    (1, 4, 4, 64, 1, [1]),
    (1, 28, 4, 128, 37, [37]),
    (1, 6, 2, 80, 300, [150]),
    (1, 28, 4, 64, 513, [129]),
    (1, 4, 4, 80, 513, [513]),
    (2, 28, 4, 80, 513, [513, 1]),
    (2, 4, 4, 128, 300, [1, 257]),
    (2, 6, 2, 64, 513, [300, 129]),
    (2, 6, 2, 128, 37, [36, 37]),
    (2, 28, 4, 64, 1, [1, 1]),
]


def _case_id(c):
    B, HQ, HKV, D, S, lengths = c
    return f"B{B}-h{HQ}x{HKV}-D{D}-S{S}-len{'_'.join(map(str, lengths))}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_decode_attention_matches_reference(case, dtype):
    B, HQ, HKV, D, S, lengths = case
    length_dtype = torch.int32 if dtype == torch.float16 else torch.int64
    q, k, v, length = _inputs(*case, dtype, seed=S * 100 + D + B, length_dtype=length_dtype)
    with poisoned_allocations():
        out = decode_attention(q, k, v, length)
    assert out.dtype == dtype and out.shape == (B, HQ, D)
    assert_close_rel(out, _ref(q, k, v, length), TOL[dtype])


@pytest.mark.parametrize("block_split", [64, 100, 128, 512, 1024], ids=lambda v: f"split{v}")
def test_decode_attention_any_split_size(block_split):
    """Several tiles per split, a split size that is not a multiple of the tile, one split for
    the whole cache: the same output; splits past a row's length are never read back (the
    poisoned partials would show)."""
    q, k, v, length = _inputs(2, 6, 2, 80, 300, [300, 65], torch.float32, seed=block_split)
    with poisoned_allocations():
        out = decode_triton.decode_attention(q, k, v, length, block_split=block_split)
    assert_close_rel(out, _ref(q, k, v, length), TOL[torch.float32])


def test_decode_attention_equals_sdpa_on_the_sliced_cache():
    lengths, scale = [300, 77], 0.3
    q, k, v, length = _inputs(2, 28, 4, 64, 300, lengths, torch.float32, seed=11)
    out = decode_attention(q, k, v, length, scale=scale)
    for b, n in enumerate(lengths):
        ref = F.scaled_dot_product_attention(
            q[b : b + 1, :, None], k[b : b + 1, :, :n], v[b : b + 1, :, :n], scale=scale, enable_gqa=True
        )[:, :, 0]
        assert_close_rel(out[b : b + 1], ref, TOL[torch.float32], what=f"row {b}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_decode_attention_strided_views(dtype):
    """A layer's slice of a [L, HKV, S', D] buffer (B = 1, an offset, the first S slots), a
    [B, S, HKV, D] cache seen as
    [B, HKV, S, D], and a q whose D is not the innermost axis."""
    L, HKV, S, D, HQ = 3, 2, 300, 80, 6
    g = torch.Generator().manual_seed(5)
    keys = torch.randn(L, HKV, S + 21, D, generator=g).to(DEVICE, dtype)
    values = torch.randn(L, HKV, S + 21, D, generator=g).to(DEVICE, dtype)
    q = torch.randn(1, D, HQ, generator=g).to(DEVICE, dtype).transpose(1, 2)  # [1, HQ, D], stride(-1) = HQ
    length = torch.tensor([211], device=DEVICE)
    k, v = keys[1, :, :S].unsqueeze(0), values[1, :, :S].unsqueeze(0)
    assert k.storage_offset() > 0 and not k.is_contiguous()
    with poisoned_allocations():
        out = decode_attention(q, k, v, length)
    assert_close_rel(out, _ref(q, k.contiguous(), v.contiguous(), length), TOL[dtype], what="layer slice")

    kb = torch.randn(2, S, HKV, D, generator=g).to(DEVICE, dtype).transpose(1, 2)
    vb = torch.randn(2, S, HKV, D, generator=g).to(DEVICE, dtype).transpose(1, 2)
    q2 = torch.randn(2, HQ, D, generator=g).to(DEVICE, dtype)
    length2 = torch.tensor([S, 40], device=DEVICE)
    with poisoned_allocations():
        out2 = decode_attention(q2, kb, vb, length2)
    assert_close_rel(out2, _ref(q2, kb.contiguous(), vb.contiguous(), length2), TOL[dtype], what="[B, S, H, D]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("block_split", [None, 64, 100], ids=lambda v: f"split{v}")
def test_decode_attention_ignores_garbage_past_length(block_split, dtype):
    """NaN and inf in the cache tail (within the last tile and in later splits) change nothing."""
    q, k, v, length = _inputs(2, 28, 4, 64, 300, [93, 1], dtype, seed=7)
    expected = _ref(q, k, v, length)
    k[0, :, 93:] = float("nan")
    v[0, :, 93:] = float("inf")
    k[1, :, 1::2] = float("-inf")
    v[1, :, 1:] = float("nan")
    with poisoned_allocations():
        out = decode_triton.decode_attention(q, k, v, length, block_split=block_split)
    assert_close_rel(out, expected, TOL[dtype])
    assert_close_rel(_ref(q, k, v, length), expected, 1e-6, what="naive")


def test_decode_attention_length_zero_and_past_capacity():
    """A length of 0 gives zeros; a length above S counts as S."""
    q, k, v, _ = _inputs(2, 4, 2, 64, 37, [0, 0], torch.float32, seed=3)
    length = torch.tensor([0, 1000], device=DEVICE)
    with poisoned_allocations():
        out = decode_attention(q, k, v, length)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert_close_rel(out[1:], _ref(q, k, v, torch.tensor([0, 37], device=DEVICE))[1:], TOL[torch.float32])
    assert_close_rel(_ref(q, k, v, length), out, TOL[torch.float32], what="naive")


def test_split_size_for_qwen_7b_on_132_sms():
    """B = 1, HKV = 4: ~2 programs per SM at 8K, fewer partials as the cache grows."""
    assert [decode_triton.split_size(1, 4, s, 132) for s in (2048, 8192, 16384, 32768, 65536)] == [
        128,
        128,
        128,
        256,
        512,
    ]
    assert decode_triton.split_size(8, 4, 65536, 132) == 512


def test_cpu_without_interpreter_runs_the_definition(monkeypatch):
    q, k, v, length = _inputs(1, 6, 2, 64, 37, [20], torch.float32, seed=1, device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert torch.equal(decode_attention(q, k, v, length), decode_ref(q, k, v, length))
    with pytest.raises(ValueError, match="CUDA"):
        decode_triton.decode_attention(q, k, v, length)


def test_decode_attention_rejects_bad_arguments():
    q, k, v, length = _inputs(1, 6, 2, 64, 37, [20], torch.float32, seed=1)
    with pytest.raises(ValueError, match="multiple of HKV"):
        decode_attention(q[:, :5], k, v, length)
    with pytest.raises(ValueError, match="length"):
        decode_attention(q, k, v, length.float())
    with pytest.raises(ValueError, match="length"):
        decode_attention(q, k, v, length.repeat(2))
    with pytest.raises(ValueError, match="unit stride"):
        kt = k.transpose(2, 3).contiguous().transpose(2, 3)
        decode_attention(q, kt, v, length)
    with pytest.raises(ValueError, match="share a dtype"):
        decode_attention(q.half(), k, v, length)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "B, S, lengths",
    [(1, 300, [300]), (2, 513, [1, 400]), (1, 8192, [8192]), (1, 8192, [5000]), (2, 65536, [65536, 33333])],
    ids=lambda v: str(v),
)
def test_decode_attention_bf16_gpu(B, S, lengths):
    q, k, v, length = _inputs(B, 28, 4, 128, S, lengths, torch.bfloat16, seed=S, device="cuda")
    with poisoned_allocations():
        out = decode_attention(q, k, v, length)
    assert_close_rel(out, _ref(q, k, v, length), TOL[torch.bfloat16])


@pytest.mark.gpu
def test_decode_attention_replays_in_a_cuda_graph():
    """Captured once, replayed as the lengths grow in place: each replay equals the reference."""
    B, S = 2, 4096
    q, k, v, length = _inputs(B, 28, 4, 128, S, [1, 1], torch.bfloat16, seed=9, device="cuda")
    decode_attention(q, k, v, length)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, length)
    for lengths in ([1, 1], [17, 4096], [2049, 300], [4096, 4095]):
        length.copy_(torch.tensor(lengths))
        q.normal_()
        graph.replay()
        assert_close_rel(out, _ref(q, k, v, length), TOL[torch.bfloat16], what=f"lengths {lengths}")
