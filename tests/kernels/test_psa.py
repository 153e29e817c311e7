"""psa_attention: the composition of importance, cap, levels and pyramid attention, and PSAConfig."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, assert_close_rel, poisoned_allocations

from qvl_kernels.block_importance.naive import block_importance as block_importance_ref
from qvl_kernels.level_mask.naive import density as density_ref
from qvl_kernels.level_mask.naive import level_mask as level_mask_ref
from qvl_kernels.psa import PUBLISHED_RATIOS, PSAConfig, level_stats, psa_attention, psa_levels
from qvl_kernels.pyramid_attention.naive import pyramid_attention as pyramid_attention_ref
from qvl_kernels.similarity_cap.naive import similarity_cap as similarity_cap_ref

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu),
]


def _qkv(B, HKV, G, L, D, dtype, seed, r=8):
    """Random q, v; keys repeated over groups of r tokens plus noise, so the similarity cap lets
    blocks pool (plain random keys cap every block at 1)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HKV * G, L, D, generator=g)
    k = torch.randn(B, HKV, math.ceil(L / r), D, generator=g).repeat_interleave(r, 2)[:, :, :L]
    k = k + 0.3 * torch.randn(B, HKV, L, D, generator=g)
    v = torch.randn(B, HKV, L, D, generator=g)
    return (t.to(DEVICE, dtype) for t in (q, k, v))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,G", [(1, 1), (63, 7), (129, 2)], ids=lambda v: str(v))
def test_dense_preset_is_causal_attention(L, G, dtype):
    q, k, v = _qkv(1, 1, G, L, 64, dtype, seed=L)
    with poisoned_allocations():
        out, stats = psa_attention(q, k, v, PSAConfig.preset("dense", block=16, stride=4))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    assert out.dtype == dtype
    assert_close_rel(out, ref, TOL[dtype], what="dense PSA")
    assert (stats["density"] == 1).all()


# (preset, L, G, block, stride, method)
CASES = [
    ("default", 300, 2, 32, 4, "xattn"),
    ("balanced", 129, 7, 16, 4, "xattn"),
    ("fast", 300, 1, 16, 8, "xattn"),
    ("balanced", 129, 2, 16, 4, "pooling"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "{}-L{}-G{}-blk{}-s{}-{}".format(*c))
def test_composition_matches_reference_chain(case):
    # fp32: the naive chain (importance -> cap -> levels -> attention) gives the same levels
    name, L, G, block, stride, method = case
    q, k, v = _qkv(1, 1, G, L, 64, torch.float32, seed=L + G)
    cfg = PSAConfig.preset(name, block=block, stride=stride, method=method, text_length=20)
    with poisoned_allocations():
        out, stats = psa_attention(q, k, v, cfg)
    S = block_importance_ref(q, k, block=block, stride=stride, method=method)
    cap = similarity_cap_ref(k, block=block, thresholds=cfg.thresholds)
    lev = level_mask_ref(S, cap, mode=cfg.mode, ratios=cfg.ratios, text_blocks=cfg.text_blocks)
    assert torch.equal(stats["levels"], lev)
    assert_close_rel(out, pyramid_attention_ref(q, k, v, lev, block=block), TOL[torch.float32], what="PSA out")
    assert torch.allclose(stats["density"], density_ref(lev), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_low_precision_output_matches_reference_on_its_levels(dtype):
    q, k, v = _qkv(1, 2, 2, 300, 80, dtype, seed=1)
    cfg = PSAConfig.preset("balanced", block=32, stride=4)
    out, stats = psa_attention(q, k, v, cfg)
    lev = stats["levels"]
    assert set(lev.unique().tolist()) - {0, 1}, "several levels present"
    ref = pyramid_attention_ref(q.float(), k.float(), v.float(), lev, block=32)
    assert_close_rel(out, ref, TOL[dtype], what="PSA out")


def test_stats_are_device_tensors():
    q, k, v = _qkv(2, 1, 2, 100, 64, torch.float32, seed=2)
    out, stats = psa_attention(q, k, v, PSAConfig(block=16, stride=4, similarity_cap=False))
    nb = math.ceil(100 / 16)
    assert out.shape == q.shape
    assert stats["density"].shape == (2, 2) and stats["level_fraction"].shape == (2, 2, 5)
    assert stats["levels"].shape == (2, 2, nb, nb) and stats["levels"].dtype == torch.int8
    for t in stats.values():
        assert isinstance(t, torch.Tensor) and t.device == q.device
    assert torch.allclose(stats["level_fraction"].sum(-1), torch.ones(2, 2, device=DEVICE))
    again = level_stats(stats["levels"])  # on CUDA the stats are counted in the level kernel: same to rounding
    assert torch.allclose(again["density"], stats["density"], atol=1e-6)
    assert torch.equal(psa_levels(q, k, PSAConfig(block=16, stride=4, similarity_cap=False)), stats["levels"])


def test_counted_stats_match_stats_from_levels():
    # the CUDA path of psa_attention counts levels inside the level kernel; same numbers
    from qvl_kernels.level_mask import stats_from_counts

    q, k, _ = _qkv(1, 1, 2, 129, 64, torch.float32, seed=4)
    cfg = PSAConfig.preset("balanced", block=16, stride=4)
    counts = torch.zeros(1, 2, 5, dtype=torch.int32, device=DEVICE)
    lev = psa_levels(q, k, cfg, counts=counts)
    d, f = stats_from_counts(counts, lev.shape[-1])
    ref = level_stats(lev)
    assert torch.allclose(d, ref["density"], atol=1e-6) and torch.allclose(f, ref["level_fraction"], atol=1e-6)
    assert torch.equal(lev, psa_levels(q, k, cfg))


def test_config_defaults_presets_and_validation():
    c = PSAConfig()
    assert (c.block, c.stride, c.method, c.mode) == (128, 8, "xattn", "energybound")
    assert c.ratios == PUBLISHED_RATIOS and c.thresholds == (0.75, 0.70, 0.70)
    assert c.text_length == 0 and c.similarity_cap and c.causal and c.importance_fp8 is None  # auto
    assert c.ratios is not PSAConfig().ratios, "no shared mutable default"
    for f in dataclasses.fields(PSAConfig):
        assert not isinstance(f.default, torch.Tensor)
    assert PSAConfig.preset("default") == c
    assert PSAConfig.preset("fast").mode == "topk"
    assert PSAConfig.preset("balanced", block=64).block == 64
    assert all(PSAConfig.preset(name).importance_fp8 is None for name in ("default", "fast", "balanced", "dense"))
    assert PSAConfig(text_length=129).text_blocks == 2
    assert c.with_(text_length=10).text_length == 10 and c.text_length == 0
    for bad in (
        dict(block=96),
        dict(stride=3),
        dict(method="x"),
        dict(mode="topp"),
        dict(ratios={1: (0.0, 0.8), 2: (0.5, 1.0)}),
        dict(thresholds=(0.7,)),
        dict(text_length=-1),
        dict(method="pooling", importance_fp8=True),
    ):
        with pytest.raises(ValueError):
            PSAConfig(**bad)
    with pytest.raises(ValueError):
        PSAConfig.preset("turbo")


def test_importance_fp8_reaches_block_importance(monkeypatch):
    # psa_levels passes importance_fp8 on as block_importance(fp8=...): the same levels as the
    # chain on fp8 scores, and block_importance sees fp8=True (False by default).
    import qvl_kernels.psa as psa_mod
    from qvl_kernels.block_importance import block_importance
    from qvl_kernels.level_mask import level_mask

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("fp8"))
        return block_importance(*args, **kwargs)

    monkeypatch.setattr(psa_mod, "block_importance", spy)
    q, k, _ = _qkv(1, 2, 2, 129, 64, torch.float32, seed=5)
    cfg = PSAConfig.preset("balanced", block=16, stride=4, importance_fp8=True)
    lev = psa_levels(q, k, cfg)
    assert seen == [True]
    S = block_importance(q, k, block=16, stride=4, fp8=True)
    cap = similarity_cap_ref(k, block=16, thresholds=cfg.thresholds)
    assert torch.equal(lev, level_mask(S, cap, mode=cfg.mode, ratios=cfg.ratios))
    psa_levels(q, k, cfg.with_(importance_fp8=False))
    assert seen == [True, False]
    psa_levels(q, k, cfg.with_(importance_fp8=None))  # auto: fp8 only on Hopper from 32K tokens
    assert seen == [True, False, False]


def test_importance_fp8_auto_picks_hopper_and_long_sequences():
    from qvl_kernels.psa import FP8_AUTO_MIN_TOKENS, importance_uses_fp8

    auto = PSAConfig()
    for L in (1, FP8_AUTO_MIN_TOKENS):
        q = torch.empty(1, 1, L, 8)  # CPU (or the interpreter's) tensors: never
        assert not importance_uses_fp8(auto, q)
        assert importance_uses_fp8(auto.with_(importance_fp8=True), q)
        assert not importance_uses_fp8(auto.with_(importance_fp8=False), q)
    assert not importance_uses_fp8(PSAConfig(method="pooling"), torch.empty(1, 1, FP8_AUTO_MIN_TOKENS, 8))
    if torch.cuda.is_available():
        hopper = torch.cuda.get_device_capability() == (9, 0)
        for L, want in ((FP8_AUTO_MIN_TOKENS - 1, False), (FP8_AUTO_MIN_TOKENS, hopper)):
            assert importance_uses_fp8(auto, torch.empty(1, 1, L, 8, device="cuda")) == want


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16-importance", "fp8-importance"])
def test_no_host_sync_on_gpu(fp8):
    q, k, v = _qkv(1, 4, 7, 4096, 128, torch.bfloat16, seed=3)
    cfg = PSAConfig.preset("default", text_length=200, importance_fp8=fp8)
    psa_attention(q, k, v, cfg)  # autotuning and the cached band table happen here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, stats = psa_attention(q, k, v, cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all() and (stats["density"] <= 1).all()
