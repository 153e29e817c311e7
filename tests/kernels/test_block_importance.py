"""block_importance (Triton xattn, torch pooling) against its plain-PyTorch definition."""

import importlib
import math

import pytest
import torch
import triton
from _helpers import TOL, assert_close_rel, poison, poisoned_allocations

from qvl_kernels.block_importance import block_importance
from qvl_kernels.block_importance.naive import block_importance as block_importance_ref
from qvl_kernels.block_importance.naive import quantize_fp8 as quantize_fp8_ref
from qvl_kernels.block_importance.quantize import quantize_fp8
from qvl_kernels.level_mask import level_mask

MOD = importlib.import_module("qvl_kernels.block_importance.triton")  # the module, not the function

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


LOAD_PATHS = [pytest.param(True, id="tma"), pytest.param(False, id="pointer")]
# Explicit launches: the interpreter autotunes its one config; a GPU runs one fixed config rather
# than compiling the whole list for every case.
FIXED_CONFIG = dict(BM=64, BN=64, BK=64, FLAT=True, num_warps=4, num_stages=2) if torch.cuda.is_available() else None


def _loads(monkeypatch, tma):
    """Take the TMA path where the layout allows (tma=True, the default) or the pointer gathers."""
    if not tma:
        monkeypatch.setattr(MOD, "_tma_layout_ok", lambda *tensors: False)


@pytest.fixture
def launches(monkeypatch):
    """The (TMA, PARTIAL) constants of every xattn launch, autotuned or with an explicit config."""
    seen = []

    class Spy:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append((kwargs["TMA"], kwargs["PARTIAL"]))
                return self.kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(MOD, "_xattn_kernel_tuned", Spy(MOD._xattn_kernel_tuned))
    monkeypatch.setattr(MOD, "_xattn_kernel", Spy(MOD._xattn_kernel))
    return seen


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


@pytest.mark.parametrize("tma", LOAD_PATHS)
def test_xattn_chunked_rows_match(monkeypatch, launches, tma):
    # Long sequences are walked in chunks of strided query rows; force several chunks here.
    align, L = (256, 2130) if torch.cuda.is_available() else (32, 302)  # a multiple of every BM
    monkeypatch.setattr(MOD, "ROW_ALIGN", align)
    monkeypatch.setattr(MOD, "SCRATCH_BYTES", 1)
    _loads(monkeypatch, tma)
    q, k = _qk(1, 1, 2, L, 64, torch.float32, seed=9)  # 533 / 76 strided rows, the last partial: 3 chunks
    for causal in (True, False):
        with poisoned_allocations():
            S = block_importance(q, k, block=32, stride=4, causal=causal)
        assert_close_rel(S, block_importance_ref(q, k, block=32, stride=4, causal=causal), 1e-5)
    assert launches == [(tma, tma)] * 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only switch; the GPU autotunes both loops")
@pytest.mark.parametrize("tma", LOAD_PATHS)
@pytest.mark.parametrize("flat", [True, False], ids=["flat-loop", "nested-loops"])
def test_xattn_both_loop_structures(monkeypatch, flat, tma):
    monkeypatch.setattr(MOD, "INTERPRET_FLAT", flat)
    _loads(monkeypatch, tma)
    MOD._xattn_kernel_tuned.cache.clear()
    try:
        for L in (300, 303):  # 3 x 3 tiles of 32 strided rows; 303: the last strided row is partial
            for causal in (True, False):
                q, k = _qk(1, 1, 2, L, 64, torch.float32, seed=10)
                with poisoned_allocations():
                    S = block_importance(q, k, block=32, stride=4, causal=causal)
                assert_close_rel(S, block_importance_ref(q, k, block=32, stride=4, causal=causal), 1e-5)
    finally:
        MOD._xattn_kernel_tuned.cache.clear()


# (B, HKV, G, L, D, block, stride): odd lengths (the last strided row partial, except 300 at
# stride 4), GQA groups 1, 2, 7, several row and key tiles
PATH_CASES = [
    (1, 1, 1, 63, 64, 16, 4),
    (1, 2, 2, 129, 64, 32, 8),
    (1, 1, 7, 300, 64, 64, 8),
    (2, 1, 2, 300, 64, 16, 4),
    (1, 2, 7, 129, 64, 16, 4),
]


@pytest.mark.parametrize("dtype", DTYPES[:2])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", PATH_CASES, ids=_case_id)
@pytest.mark.parametrize("tma", LOAD_PATHS)
def test_xattn_load_paths_match_reference(tma, case, causal, dtype, launches):
    B, HKV, G, L, D, block, stride = case
    q, k = _qk(B, HKV, G, L, D, dtype, seed=L * 13 + G + stride)
    with poisoned_allocations():
        S = MOD._xattn(q, k, block, stride, causal, _poisoned_out(q, block), tma=tma, config=FIXED_CONFIG)
    ref = block_importance_ref(q.float(), k.float(), block=block, stride=stride, causal=causal)
    assert_close_rel(S, ref, TOL[dtype], what="xattn S")
    if causal:
        assert (S.triu(1) == 0).all(), "causally invisible blocks must be exactly 0"
    assert launches == [(tma, tma and L % stride != 0)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="16-row tiles: an interpreter check")
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", [PATH_CASES[1], (1, 1, 2, 131, 64, 16, 4)], ids=_case_id)
@pytest.mark.parametrize("tma", LOAD_PATHS)
def test_xattn_small_tiles_and_column_steps(tma, case, causal):
    # 16 x 32 tiles (several tiles on both sides of the partial row) in two 32-column steps per offset
    B, HKV, G, L, D, block, stride = case
    q, k = _qk(B, HKV, G, L, D, torch.float32, seed=L * 17 + G)
    config = dict(BM=16, BN=32, BK=32, FLAT=True, num_warps=4, num_stages=1)
    with poisoned_allocations():
        S = MOD._xattn(q, k, block, stride, causal, _poisoned_out(q, block), tma=tma, config=config)
    assert_close_rel(S, block_importance_ref(q, k, block=block, stride=stride, causal=causal), 1e-5)


def _poisoned_out(q, block):
    nb = math.ceil(q.shape[2] / block)
    out = torch.empty(q.shape[0], q.shape[1], nb, nb, device=q.device)
    poison(out)
    return out


@pytest.mark.parametrize("tma", LOAD_PATHS)
@pytest.mark.parametrize("bk", [16, 64], ids=["BK16", "BK64"])
def test_xattn_head_dim_80(tma, bk):
    # TMA steps need BK | D: with BK 16 the five column steps come through TMA, with 64 the
    # kernel falls back to the pointer path (columns 80..127 masked).
    B, HKV, G, L, D, block, stride = 1, 1, 2, 69, 80, 16, 4
    q, k = _qk(B, HKV, G, L, D, torch.float32, seed=5)
    for causal in (True, False):
        with poisoned_allocations():
            S = MOD._xattn(
                q,
                k,
                block,
                stride,
                causal,
                _poisoned_out(q, block),
                tma=tma,
                config=dict(BM=16, BN=32, BK=bk, FLAT=True, num_warps=4, num_stages=1),
            )
        assert_close_rel(S, block_importance_ref(q, k, block=block, stride=stride, causal=causal), 1e-5)


@pytest.mark.parametrize("tma", LOAD_PATHS)
def test_xattn_row_scale(tma):
    # The internal score factors (what fp8=True folds the quantization scales into): one per
    # strided query row times one per KV head. q / c and k / e with those factors are q and k
    # exactly; q and k quantized to fp8 stay close.
    B, HKV, G, L, D, block, stride = 1, 2, 2, 131, 64, 32, 4
    HQ, LS = HKV * G, -(-L // stride)
    q, k = _qk(B, HKV, G, L, D, torch.float32, seed=8)
    ref = block_importance_ref(q, k, block=block, stride=stride)
    c = torch.linspace(0.5, 2.0, B * HQ * LS, device=DEVICE).view(B, HQ, LS)  # differs per row and head
    e = torch.tensor([[0.7, 1.6]], device=DEVICE)
    q_scaled = q / c.repeat_interleave(stride, dim=2)[:, :, :L, None]
    with poisoned_allocations():
        S = MOD._xattn(
            q_scaled,
            k / e[..., None, None],
            block,
            stride,
            True,
            _poisoned_out(q, block),
            tma=tma,
            config=FIXED_CONFIG,
            row_scale=(c, e),
        )
    assert_close_rel(S, ref, 1e-5, what="rescaled q and k")
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        return  # no fp8 dots before Ada / Hopper
    q8, k8, sq, sk = quantize_fp8_ref(q, k, stride=stride)
    with poisoned_allocations():
        S = MOD._xattn(
            q8, k8, block, stride, True, _poisoned_out(q, block), tma=tma, config=FIXED_CONFIG, row_scale=(sq, sk)
        )
    assert_close_rel(S, ref, 2e-2, what="fp8 q, k")


def test_tma_only_where_the_layout_allows(monkeypatch, launches):
    # TMA needs a 16-byte aligned base and 16-byte multiples for the batch, head and token strides,
    # and one full strided row; everything else takes the pointer path, with the same result.
    def check(q, k, stride=4):
        S = MOD._xattn(q, k, 16, stride, True, _poisoned_out(q, 16), config=FIXED_CONFIG)
        assert_close_rel(S, block_importance_ref(q, k, block=16, stride=stride), TOL[q.dtype])
        return launches.pop()

    q, k = _qk(1, 1, 2, 70, 64, torch.float16, seed=6)
    assert check(q, k) == (True, True)  # 70 = 17 * 4 + 2: partial last row
    assert check(q[:, :, :68], k[:, :, :68]) == (True, False)
    assert check(q[:, :, :3], k[:, :, :3]) == (False, False)  # L < stride: no full strided row
    q2, k2 = _qk(1, 1, 2, 70, 68, torch.float16, seed=7)
    assert check(q2[..., :64], k2[..., :64]) == (False, False)  # token stride 136 B
    flat = torch.randn(2 * 70 * 64 + 8, device=DEVICE).to(torch.float16)
    assert check(flat[1 : 2 * 70 * 64 + 1].view(1, 2, 70, 64), k) == (False, False)  # base 2 B off alignment
    head = 70 * 64 + 4  # head stride 8968 B
    assert check(flat.as_strided((1, 2, 70, 64), (2 * head, head, 64, 1)), k) == (False, False)
    _loads(monkeypatch, False)
    assert check(q, k) == (False, False)


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
    p = torch.softmax(
        (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(
            torch.ones(L, L, dtype=torch.bool, device=DEVICE).triu(1), float("-inf")
        ),
        -1,
    )
    nb = math.ceil(L / block)
    p = torch.nn.functional.pad(p, (0, nb * block - L, 0, nb * block - L))
    ref = p.unflatten(-1, (nb, block)).sum(-1).unflatten(-2, (nb, block)).sum(-2)
    S = block_importance(q, k, block=block, stride=1)
    assert_close_rel(S, ref, 1e-5, what="stride-1 S")


def test_xattn_row_sums_count_strided_rows():
    L, block, s = 300, 32, 4
    q, k = _qk(1, 1, 2, L, 64, torch.float32, seed=3)
    S = block_importance(q, k, block=block, stride=s)
    rows = torch.tensor(
        [min(block // s, math.ceil(L / s) - i * (block // s)) for i in range(S.shape[-1])], dtype=torch.float32
    )
    assert_close_rel(S.sum(-1).cpu(), rows.expand(1, 2, -1), 1e-5, what="row sums")


@pytest.mark.parametrize("L", [100, 102])
@pytest.mark.parametrize("tma", LOAD_PATHS)
def test_strided_input_is_read_in_place(monkeypatch, launches, tma, L):
    _loads(monkeypatch, tma)
    B, HQ, HKV, D = 1, 4, 2, 64
    g = torch.Generator().manual_seed(4)
    q = torch.randn(B, L, HQ, D, generator=g).to(DEVICE).transpose(1, 2)  # [B, HQ, L, D] view of [B, L, H, D]
    k = torch.randn(B, L, HKV, D, generator=g).to(DEVICE).transpose(1, 2)
    for causal in (True, False):
        with poisoned_allocations():
            S = block_importance(q, k, block=16, stride=4, causal=causal)
        assert_close_rel(S, block_importance_ref(q, k, block=16, stride=4, causal=causal), 1e-5)
    assert launches == [(tma, tma and L % 4 != 0)] * 2


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


# ----------------------------------------------------------------------------- tile configs


def test_gpu_launch_classes_pick_the_measured_configs(monkeypatch):
    # The GPU config table: one config per class from 2048 strided rows up (nothing to time), at
    # most two below; every config serves some class; tiles that do not hold whole blocks drop.
    monkeypatch.setattr(MOD, "_INTERPRET", False)
    configs = [
        triton.Config({"BM": bm, "BN": bn, "BK": bk, "FLAT": flat}, num_warps=w, num_stages=st)
        for bm, bn, bk, w, st, flat in MOD._GPU_CONFIGS
    ]

    def pick(R=16, IEEE=False, TMA=True, L_BUCKET=5, ROW_SCALE=False):
        return [
            MOD._as_tuple(c)
            for c in MOD._prune(configs, dict(L_BUCKET=L_BUCKET), R=R, IEEE=IEEE, TMA=TMA, ROW_SCALE=ROW_SCALE)
        ]

    assert pick() == [(128, 256, 64, 8, 4, True)]
    assert pick(L_BUCKET=MOD._MID_BUCKET) == [(128, 256, 64, 8, 3, True)]
    for bucket in (MOD._MID_BUCKET, MOD._LONG_BUCKET):  # fp8 copies: one tile from 2048 strided rows
        assert pick(L_BUCKET=bucket, ROW_SCALE=True) == [(128, 256, 128, 8, 3, True)]
        assert (
            pick(TMA=False, L_BUCKET=bucket)
            == pick(TMA=False, L_BUCKET=bucket, ROW_SCALE=True)
            == [(128, 128, 128, 8, 3, True)]
        )
    assert pick(IEEE=True) == pick(IEEE=True, L_BUCKET=1) == [(128, 128, 64, 8, 2, True), (64, 128, 64, 4, 2, True)]
    for bucket in range(MOD._MID_BUCKET):
        assert (
            pick(L_BUCKET=bucket)
            == pick(L_BUCKET=bucket, ROW_SCALE=True)
            == [(128, 128, 64, 8, 4, True), (64, 128, 128, 4, 3, True)]
        )
        assert pick(TMA=False, L_BUCKET=bucket) == [(128, 128, 128, 8, 3, True), (64, 128, 128, 4, 3, True)]
    assert pick(R=128, L_BUCKET=3) == [(128, 128, 64, 8, 4, True)]  # block 128, stride 1: no 64-row tiles
    assert pick(R=256) == [(256, 256, 128, 8, 2, True)]  # one tile per block
    assert all(MOD._GPU_CONFIGS.values())
    assert MOD._length_bucket(2047) == MOD._MID_BUCKET - 1 and MOD._length_bucket(2048) == MOD._MID_BUCKET
    assert MOD._length_bucket(4095) == MOD._MID_BUCKET and MOD._length_bucket(4096) == MOD._LONG_BUCKET
    assert MOD._length_bucket(1 << 20) == MOD._LONG_BUCKET


def test_direct_launch_config_is_what_the_autotuner_would_run(monkeypatch):
    # _xattn skips the autotuner when its launch class keeps one config: that config must be the
    # one _prune leaves, and where _prune leaves several (or falls back) the autotuner stays.
    monkeypatch.setattr(MOD, "_INTERPRET", False)
    MOD._only_config.cache_clear()
    try:
        configs = MOD._configs()
        for R in (8, 16, 32, 128, 256):
            for IEEE in (False, True):
                for TMA in (False, True):
                    for ROW_SCALE in (False, True):
                        for bucket in range(MOD._LONG_BUCKET + 1):
                            kept = MOD._prune(
                                configs, dict(L_BUCKET=bucket), R=R, IEEE=IEEE, TMA=TMA, ROW_SCALE=ROW_SCALE
                            )
                            direct = MOD._only_config(MOD._launch_class(IEEE, TMA, bucket, ROW_SCALE), R)
                            if len(kept) == 1 and MOD._as_tuple(kept[0]) in MOD._GPU_CONFIGS:
                                assert direct == dict(
                                    kept[0].kwargs, num_warps=kept[0].num_warps, num_stages=kept[0].num_stages
                                )
                            else:
                                assert direct is None
        # from 2048 strided rows every bf16/fp16/fp8 class launches directly
        assert MOD._only_config(MOD._launch_class(False, True, MOD._MID_BUCKET, True), 16)["BN"] == 256
        assert MOD._only_config(MOD._launch_class(False, True, MOD._LONG_BUCKET, False), 16)["num_stages"] == 4
    finally:
        MOD._only_config.cache_clear()


# ----------------------------------------------------------------------------- fp8


# (B, HKV, G, L, D): odd lengths and head dims, GQA groups 1, 2, 7
FP8_CASES = [
    (1, 1, 1, 1, 64),
    (2, 1, 2, 63, 80),
    (1, 1, 7, 129, 64),
    (1, 2, 2, 300, 128),
    (2, 2, 7, 75, 16),
]


def _fp8_qk(B, HKV, G, L, D, dtype, seed, zero=True, spread=1.3):
    """q, k with per-head magnitudes 10^-spread .. 10^spread for q, a quarter of that range for
    k (a mix-up of head scales shows), an all-zero q head and k head (zero=True), and in the last
    q head of batch 0 one outlier 2000x the rest (many of its values in e4m3's subnormal range)."""
    g = torch.Generator().manual_seed(seed)
    HQ = HKV * G
    mq = torch.logspace(-spread, spread, HQ)[torch.randperm(HQ, generator=g)]
    q = 2.0 * torch.randn(B, HQ, L, D, generator=g) * mq.view(1, -1, 1, 1)
    k = torch.randn(B, HKV, L, D, generator=g) * torch.logspace(-spread / 4, spread / 4, HKV).view(1, -1, 1, 1)
    q[0, -1] = torch.randn(L, D, generator=g) * 0.01 * mq[-1]
    q[0, -1, L // 2, D // 3] = -100.0 * mq[-1]  # fits fp16
    if zero and B * HQ > 1:
        q[-1, 0] = 0.0
    if zero and B * HKV > 1:
        k[0, -1] = 0.0
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype)


def _fp8_bits_equal(a, b):
    return a.dtype == b.dtype == torch.float8_e4m3fn and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FP8_CASES, ids=lambda c: "B{}-HKV{}-G{}-L{}-D{}".format(*c))
def test_quantize_fp8_matches_reference(case, dtype):
    B, HKV, G, L, D = case
    q, k = _fp8_qk(B, HKV, G, L, D, dtype, seed=L + 3 * G + D)
    for stride in (1, 4, 8):
        with poisoned_allocations():  # fp8 copies start as NaN: every value must be written
            got = quantize_fp8(q, k, stride=stride)
        want = quantize_fp8_ref(q, k, stride=stride)
        q8, k8, sq, sk = got
        assert q8.shape == q.shape and k8.shape == k.shape and q8.is_contiguous() and k8.is_contiguous()
        assert _fp8_bits_equal(q8, want[0]) and _fp8_bits_equal(k8, want[1]), "fp8 copies differ from the reference"
        assert sq.shape == (B, HKV * G, -(-L // stride)) and sk.shape == (B, HKV)
        assert sq.dtype == sk.dtype == torch.float32
        assert torch.equal(sq, want[2]) and torch.equal(sk, want[3]), "scales differ from the reference"
        _check_quantized(q, q8, sq, stride)
        _check_quantized(k, k8, sk, None)


def _check_quantized(x, x8, scale, stride):
    # From the format, not the reference: each group's (a strided row of `stride` tokens, or a
    # head when stride is None) largest |value| maps to 448; every value is within half an e4m3
    # step of x / scale (relative 2^-4 for normal values, 2^-10 absolute for subnormal ones); an
    # all-zero group gives zeros and a finite positive scale.
    x, y = x.float(), x8.float()
    B, H, L, D = x.shape
    if stride is None:
        groups, ys, per_value = x.view(B, H, -1), y.view(B, H, -1), scale[..., None, None]
    else:
        pad = -L % stride
        groups = torch.nn.functional.pad(x, (0, 0, 0, pad)).view(B, H, -1, stride * D)
        ys = torch.nn.functional.pad(y, (0, 0, 0, pad)).view(B, H, -1, stride * D)
        per_value = scale.repeat_interleave(stride, dim=2)[:, :, :L, None]
    amax = groups.abs().amax(-1)
    nonzero = amax > 0
    assert (ys.abs().amax(-1)[nonzero] == 448).all()
    assert (ys[~nonzero] == 0).all() and torch.isfinite(scale).all() and (scale > 0).all()
    z = x / per_value
    assert ((y - z).abs() <= torch.maximum(z.abs() * 2.0**-4, torch.full_like(z, 2.0**-10)) * (1 + 1e-5)).all()


QMOD = importlib.import_module("qvl_kernels.block_importance.quantize")
ROUNDINGS = [
    pytest.param(True, id="arithmetic-rounding"),  # what the interpreter runs
    pytest.param(False, id="cast-rounding", marks=pytest.mark.gpu),
]  # the interpreter's cast is off


@pytest.mark.parametrize("round_in_kernel", ROUNDINGS)
def test_quantize_fp8_rounds_to_nearest_even(monkeypatch, round_in_kernel):
    # Values whose x * 448 / amax lands exactly on, between and halfway between e4m3 values,
    # normal and subnormal (amax 448: the scale is 1), and the largest value itself; then many
    # random fp32 values. Both roundings: the GPU's cast and the arithmetic one.
    monkeypatch.setattr(QMOD, "ROUND_IN_KERNEL", round_in_kernel)
    grid = torch.tensor(
        [
            0.0,
            2.0**-10,
            2.0**-9,
            1.5 * 2.0**-9,
            2.5 * 2.0**-9,
            3.5 * 2.0**-9,
            7.5 * 2.0**-9,
            2.0**-6,
            1.0625,
            1.1875,
            1.0625 + 2.0**-20,
            17.0,
            19.0,
            31.5,
            240.0,
            272.0,
            432.0,
            448.0,
        ]
    )
    x = torch.cat([grid, -grid]).view(1, 1, -1, 4)
    want = torch.tensor(
        [
            0.0,
            0.0,
            2.0**-9,
            2.0**-8,
            2.0**-8,
            2.0**-7,
            2.0**-6,
            2.0**-6,
            1.0,
            1.25,
            1.125,
            16.0,
            20.0,
            32.0,
            240.0,
            256.0,
            448.0,
            448.0,
        ]
    )
    q8, k8, sq, sk = quantize_fp8(x.to(DEVICE), x.to(DEVICE), stride=16)  # 9 tokens: one strided row
    assert sq.item() == sk.item() == 1.0
    assert torch.equal(q8.float().cpu().flatten(), torch.cat([want, -want]))
    assert torch.equal(k8.float().cpu().flatten(), torch.cat([want, -want]))
    assert _fp8_bits_equal(q8.cpu(), quantize_fp8_ref(x, x, stride=16)[0])
    g = torch.Generator().manual_seed(13)
    x = torch.randn(1, 3, 1000, 64, generator=g) * torch.logspace(-3, 3, 1000).view(1, 1, -1, 1)  # 1e-3 .. 1e3
    x = x.to(DEVICE)
    got, want = quantize_fp8(x, x[:, :1]), quantize_fp8_ref(x, x[:, :1])
    assert _fp8_bits_equal(got[0], want[0]) and torch.equal(got[2], want[2])
    assert _fp8_bits_equal(got[1], want[1]) and torch.equal(got[3], want[3])


def test_quantize_fp8_reads_strided_heads_in_place():
    g = torch.Generator().manual_seed(12)
    q = torch.randn(2, 70, 6, 64, generator=g).to(DEVICE).transpose(1, 2)  # [B, HQ, L, D] view of [B, L, H, D]
    k = torch.randn(2, 70, 3, 64, generator=g).to(DEVICE).transpose(1, 2)
    got, want = quantize_fp8(q, k, stride=4), quantize_fp8_ref(q, k, stride=4)
    assert _fp8_bits_equal(got[0], want[0]) and _fp8_bits_equal(got[1], want[1])
    assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])


# (B, HKV, G, L, D, block, stride)
FP8_XATTN_CASES = [
    (1, 1, 2, 300, 64, 32, 4),
    (1, 2, 7, 129, 64, 32, 8),
    (1, 2, 1, 300, 128, 128, 8),
    (2, 1, 2, 63, 80, 16, 4),
]


@pytest.mark.parametrize("tma", LOAD_PATHS)
@pytest.mark.parametrize("case", FP8_XATTN_CASES, ids=_case_id)
def test_xattn_fp8_matches_its_reference_and_stays_close_to_fp32(monkeypatch, launches, case, tma):
    # fp8=True against (a) the reference on the same fp8 copies: products of e4m3 values are exact
    # in fp32, only the accumulation differs (the interpreter sums in fp32; Hopper's fp8 MMA keeps
    # ~14 bits, Triton's default there), so fp32-level agreement; and (b) the fp32 scores of the
    # unquantized q, k: each e4m3 value is off by up to 2^-4 relative (3 mantissa bits; RMS about
    # 2 %), so a logit over s*D products moves by ~3 % of its spread and each softmax mass by ~3 %;
    # block sums over R x R masses average most of it (measured here: 0.2 - 0.5 % relative RMSE).
    # 2e-2 is the bound the fp8 row-scale check above uses; forgetting or mixing up the scales
    # costs far more than that (q heads 0.5x - 2x, k heads 0.8x - 1.2x, one of q with an outlier).
    _loads(monkeypatch, tma)
    B, HKV, G, L, D, block, stride = case
    q, k = _fp8_qk(B, HKV, G, L, D, torch.float16, seed=L * 5 + G, zero=False, spread=0.3)  # logit spread 0.2-4
    for causal in (True, False):
        with poisoned_allocations():
            S = block_importance(q, k, block=block, stride=stride, causal=causal, fp8=True)
        ref8 = block_importance_ref(q, k, block=block, stride=stride, causal=causal, fp8=True)
        assert_close_rel(S, ref8, TOL[torch.float32], what="fp8 S vs the fp8 reference")
        ref = block_importance_ref(q.float(), k.float(), block=block, stride=stride, causal=causal)
        assert_close_rel(S, ref, 2e-2, what="fp8 S vs fp32 S")
        if causal:
            assert (S.triu(1) == 0).all()
    assert [t for t, _ in launches] == [tma and D % 16 == 0] * 2  # fp8 rows: 1 byte per value


def test_xattn_fp8_zero_heads_give_the_uniform_softmax():
    # An all-zero q head (or its k head) scores 0 everywhere: every visible key the same mass.
    q, k = _fp8_qk(2, 2, 2, 129, 64, torch.float32, seed=4)  # q[1, 0] and k[0, 1] are zeros
    S = block_importance(q, k, block=16, stride=4, fp8=True)
    ref = block_importance_ref(q, k, block=16, stride=4)
    for b, h in ((1, 0), (0, 2), (0, 3)):
        assert_close_rel(S[b, h], ref[b, h], 1e-5, what=f"zero head {b}, {h}")


def _video_qk(HKV, G, frames, grid, D, seed):
    """Video-like q, k (as benchmarks/bench_psa.video_inputs, smaller): tokens on a frames x grid x
    grid lattice, q and k of a KV head sharing random Fourier features of the scaled (t, y, x), so
    q.k falls off with distance; smooth and detailed heads; four attention-sink keys."""
    g = torch.Generator().manual_seed(seed)
    L, per = frames * grid * grid, grid * grid
    i = torch.arange(L)
    qs, ks = [], []
    for h in range(HKV):
        sigma_s = 6.0 if h % 2 == 0 else 2.0
        pos = torch.stack([(i // per) / 1.5, ((i % per) // grid) / sigma_s, (i % grid) / sigma_s], -1).float()
        a = pos @ torch.randn(D // 2, 3, generator=g).T + torch.rand(D // 2, generator=g) * 2 * math.pi
        phi = torch.cat([a.cos(), a.sin()], -1) * math.sqrt(2.0)  # |phi|^2 = D
        u = torch.randn(D, generator=g)
        u = u / u.norm() * math.sqrt(D)
        k = phi + 0.2 * torch.randn(L, D, generator=g)
        k[:4] += 2.0 * u
        ks.append(k)
        for _ in range(G):
            qs.append(phi * (0.8 + 0.4 * torch.rand(1, generator=g)) + 0.5 * torch.randn(L, D, generator=g) + 0.3 * u)
    return torch.stack(qs)[None].to(DEVICE), torch.stack(ks)[None].to(DEVICE)


def test_xattn_fp8_levels_agree_on_video_like_data():
    # What fp8 importance is for: the level of (nearly) every visible block is the one fp32 scores
    # give. On the H200 at 16K-64K tokens (benchmarks/variants_importance.py, the topk bands
    # below) 99.8 % of the visible blocks agreed; this 32 x 32-block case has shorter rows (one
    # swapped pair is a larger share of a row): at least 98 % (measured in the interpreter: 99.95 %
    # topk, 99.4 % energybound).
    q, k = _video_qk(2, 2, 8, 16, 64, seed=21)  # 2048 tokens
    kw = dict(block=64, stride=8)
    if DEVICE == "cuda":
        q, k = q.bfloat16(), k.bfloat16()
    S = block_importance(q, k, fp8=True, **kw)
    ref = block_importance_ref(q.float(), k.float(), **kw)
    vis = torch.ones(S.shape[-1], S.shape[-1], dtype=torch.bool, device=DEVICE).tril()
    for mode, ratios in (
        ("topk", {1: (0.0, 0.1), 2: (0.1, 0.2), 0: (0.2, 1.0)}),
        ("energybound", {1: (0.0, 0.7), 2: (0.7, 0.8), 4: (0.8, 0.9), 0: (0.9, 1.0)}),
    ):
        got, want = level_mask(S, None, mode=mode, ratios=ratios), level_mask(ref, None, mode=mode, ratios=ratios)
        agree = (got == want)[..., vis].float().mean().item()
        assert agree >= 0.98, f"{mode}: fp8 levels agree on {agree:.2%} of the visible blocks"
        assert len(want[..., vis].unique()) == len(ratios), "every level present: the check means something"


def test_fp8_bad_arguments():
    q, k = _qk(1, 1, 1, 64, 64, torch.float32, seed=0)
    for fn in (block_importance, block_importance_ref):
        with pytest.raises(ValueError, match="xattn"):
            fn(q, k, method="pooling", fp8=True)
    with pytest.raises(ValueError):
        quantize_fp8(q, k[:, :, :32])
    with pytest.raises(ValueError, match="stride"):
        quantize_fp8(q, k, stride=3)


@pytest.mark.gpu
def test_xattn_fp8_long_on_gpu_without_host_sync():
    B, HKV, G, L, D = 1, 2, 7, 16384, 128
    q, k = _qk(B, HKV, G, L, D, torch.bfloat16, seed=L + 1)
    block_importance(q, k, fp8=True)  # compiles (one config at this length)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with poisoned_allocations():
            S = block_importance(q, k, fp8=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close_rel(S, block_importance_ref(q, k, fp8=True), TOL[torch.float32], what="fp8 S vs the fp8 reference")
    assert_close_rel(S, block_importance_ref(q.float(), k.float()), 2e-2, what="fp8 S vs fp32 S")
