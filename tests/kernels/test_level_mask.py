"""level_mask (vectorized torch) against its row-by-row reference, plus the invariants of levels."""

import importlib
import math

import pytest
import torch
from _helpers import poison, poisoned_allocations

from qvl_kernels import LEVELS, density, level_fractions, level_mask, stats_from_counts
from qvl_kernels.level_mask import level_mask_torch, level_mask_triton, naive

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

PUBLISHED = {1: (0.0, 0.7), 2: (0.7, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}
QUARTERS = {1: (0.0, 0.25), 2: (0.25, 0.5), 4: (0.5, 0.75), 8: (0.75, 1.0)}
SPARSE = {1: (0.0, 0.1), 2: (0.1, 0.3), 4: (0.3, 0.5), 8: (0.5, 0.7)}  # 0 by default past 0.7
RATIOS = {"published": PUBLISHED, "quarters": QUARTERS, "sparse": SPARSE}


def _scores(B, HQ, nb, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, HQ, nb, nb, generator=g) ** 3).to(DEVICE)  # skewed, like softmax mass


def _cap(B, HKV, nb, seed):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.tensor([1, 2, 4, 8], dtype=torch.int8)[torch.randint(0, 4, (B, HKV, nb), generator=g)].to(DEVICE)


# (B, HKV, G, nb, text_blocks): L = 1, 63, 129, 300 at block 32 give nb = 1, 2, 5, 10
CASES = [(1, 1, 1, 1, 0), (2, 1, 2, 2, 1), (1, 1, 7, 5, 0), (1, 2, 1, 10, 2), (1, 1, 2, 37, 3)]


@pytest.mark.parametrize("with_cap", [False, True], ids=["nocap", "cap"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("ratios", list(RATIOS), ids=str)
@pytest.mark.parametrize("mode", ["topk", "energybound"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-HKV{}-G{}-nb{}-text{}".format(*c))
def test_matches_reference(case, mode, ratios, causal, with_cap):
    B, HKV, G, nb, text = case
    s = _scores(B, HKV * G, nb, seed=nb * 31 + G)
    cap = _cap(B, HKV, nb, seed=nb) if with_cap else None
    kw = dict(mode=mode, ratios=RATIOS[ratios], text_blocks=text, causal=causal)
    out = torch.empty(B, HKV * G, nb, nb, dtype=torch.int8, device=DEVICE)
    poison(out)
    with poisoned_allocations():
        lev = level_mask(s, cap, out=out, **kw)
    ref = naive.level_mask(s, cap, **kw)
    assert lev.dtype == torch.int8 and lev.data_ptr() == out.data_ptr()
    assert torch.equal(lev, ref), f"{int((lev != ref).sum())} of {lev.numel()} levels differ"


# The Triton kernel sorts each row in registers: slow in the interpreter, so fewer, smaller cases
# here (on a GPU `level_mask` itself is the Triton kernel and runs every case above).
TRITON_CASES = [
    pytest.param((1, 1, 1, 1, 0), "topk", "quarters", True, False, id="nb1"),
    pytest.param((1, 1, 2, 5, 1), "topk", "sparse", True, True, id="nb5-G2-topk-cap"),
    pytest.param((1, 1, 2, 5, 1), "energybound", "published", True, True, id="nb5-G2-energy-cap"),
    pytest.param((1, 1, 1, 10, 2), "energybound", "quarters", False, False, id="nb10-energy-full"),
    pytest.param((1, 1, 1, 10, 0), "topk", "published", False, True, id="nb10-topk-full-cap"),
    pytest.param((1, 1, 1, 20, 3), "energybound", "sparse", True, True, id="nb20-energy-cap"),
    # rows of up to 40 keys: a 64-key sort with invisible and padding entries, GQA and the cap
    pytest.param((1, 1, 2, 40, 0), "topk", "sparse", True, True, id="nb40-G2-topk-cap"),
]


@pytest.mark.parametrize("case,mode,ratios,causal,with_cap", TRITON_CASES)
def test_triton_kernel_matches_reference(case, mode, ratios, causal, with_cap):
    B, HKV, G, nb, text = case
    s = _scores(B, HKV * G, nb, seed=nb * 13 + G)
    s[..., -1, :] = 0.25  # ties: lower key block first
    cap = _cap(B, HKV, nb, seed=nb + 2) if with_cap else None
    kw = dict(mode=mode, ratios=RATIOS[ratios], text_blocks=text, causal=causal)
    counts = torch.zeros(B, HKV * G, 5, dtype=torch.int32, device=DEVICE)
    with poisoned_allocations():
        lev = level_mask_triton(s, cap, counts=counts, **kw)
    ref = naive.level_mask(s, cap, **kw)
    assert torch.equal(lev, ref), f"{int((lev != ref).sum())} of {lev.numel()} levels differ"
    assert torch.equal(level_mask_torch(s, cap, **kw), ref)
    # the kernel also counts blocks per level on the way (the statistics of psa_attention)
    want = torch.stack([(ref == r).sum((-1, -2)) for r in LEVELS[1:]], -1)
    assert torch.equal(counts[..., 1:].long(), want.long()) and (counts[..., 0] == 0).all()
    d, f = stats_from_counts(counts, nb, causal)
    assert torch.allclose(d, density(ref, causal), atol=1e-6)
    assert torch.allclose(f, level_fractions(ref, causal), atol=1e-6)


@pytest.mark.parametrize("mode,text", [("topk", 0), ("energybound", 3)])
def test_triton_kernel_short_causal_rows_sort_fewer_keys(monkeypatch, mode, text):
    """A causal row with few visible blocks sorts a quarter or a half of the row's keys and writes
    the rest of its row as level 0 (from 256 keys on a GPU; lowered here so that a 40-block mask
    takes all three paths: 16-, 32- and 64-key sorts). Every position is written (poisoned output),
    levels and counts as the reference."""
    lmt = importlib.import_module("qvl_kernels.level_mask.triton")
    monkeypatch.setattr(lmt, "SPLIT_MIN", 16)
    B, HKV, G, nb = 1, 1, 2, 40
    s = _scores(B, HKV * G, nb, seed=41)
    cap = _cap(B, HKV, nb, seed=42)
    kw = dict(mode=mode, ratios=SPARSE, text_blocks=text, causal=True)
    counts = torch.zeros(B, HKV * G, 5, dtype=torch.int32, device=DEVICE)
    with poisoned_allocations():
        lev = level_mask_triton(s, cap, counts=counts, **kw)
    ref = naive.level_mask(s, cap, **kw)
    assert torch.equal(lev, ref), f"{int((lev != ref).sum())} of {lev.numel()} levels differ"
    want = torch.stack([(ref == r).sum((-1, -2)) for r in LEVELS[1:]], -1)
    assert torch.equal(counts[..., 1:].long(), want.long())


@pytest.mark.parametrize("mode", ["topk", "energybound"])
@pytest.mark.parametrize("text", [0, 3])
def test_invariants(mode, text):
    B, HKV, G, nb = 2, 2, 2, 23
    s = _scores(B, HKV * G, nb, seed=7)
    cap = _cap(B, HKV, nb, seed=7)
    lev = level_mask(s, cap, mode=mode, ratios=SPARSE, text_blocks=text)
    o = torch.arange(nb, device=DEVICE)
    assert set(lev.unique().tolist()) <= set(LEVELS)
    assert (lev[..., o, o] == 1).all(), "diagonal at level 1"
    assert (lev[..., 0] == 1).all(), "sink (key block 0) at level 1"
    assert (lev.triu(1) == 0).all(), "nothing above the diagonal"
    if text:
        visible = o[None, :] <= o[:, None]  # [nb, nb]
        text_q = (o[:, None] >= nb - text) & visible
        text_k = (o[None, :] >= nb - text) & visible
        assert (lev[..., text_q] == 1).all(), "visible blocks of text query rows at level 1"
        assert (lev[..., text_k] == 1).all(), "visible text key blocks at level 1"
    # the cap holds for every block (cap >= 1, so forced blocks stay at 1)
    capq = cap.repeat_interleave(G, dim=1)[:, :, None, :]
    assert (lev <= capq).all()
    # with ratios reaching level 8 and skipping blocks, several levels appear
    assert {0, 1}.issubset(set(lev.unique().tolist()))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_topk_counts_exact(causal):
    # With the diagonal and the sink ranked first (band 1 has >= 2 slots when n >= 5), forcing
    # changes nothing, so every row holds exactly ceil(end*n) - ceil(start*n) blocks of a level.
    B, HQ, nb = 1, 3, 29
    s = _scores(B, HQ, nb, seed=3)
    o = torch.arange(nb, device=DEVICE)
    s[..., o, o] = 10.0
    s[..., 0] = 10.0
    lev = level_mask(s, None, mode="topk", ratios=QUARTERS, causal=causal)
    for i in range(nb):
        n = i + 1 if causal else nb
        if n < 5:
            continue
        row = lev[:, :, i, :n]
        for r, (a, e) in QUARTERS.items():
            want = math.ceil(e * n) - math.ceil(a * n)
            assert ((row == r).sum(-1) == want).all(), f"row {i}: level {r} count"


def test_energybound_bands_follow_cumulative_share():
    # One row, four visible blocks holding 50 %, 25 %, 15 %, 10 % of the mass: cumulative shares
    # after each block 0.5, 0.75, 0.9, 1.0 -> PUBLISHED bands (0, .7], (.7, .8], (.8, .9], (.9, 1].
    s = torch.zeros(1, 1, 4, 4, device=DEVICE)
    s[0, 0, 3] = torch.tensor([0.15, 0.5, 0.1, 0.25])  # key block 0 is the sink, 3 the diagonal
    lev = level_mask(s, None, mode="energybound", ratios=PUBLISHED)
    # block 1 (0.5) -> 1, block 3 (0.75) -> 2 but diagonal -> 1, block 0 (0.9) -> 4 but sink -> 1, block 2 (1.0) -> 0
    assert lev[0, 0, 3].tolist() == [1, 1, 0, 1]
    s[0, 0, 3] = torch.tensor([0.1, 0.5, 0.15, 0.25])
    assert level_mask(s, None, mode="energybound", ratios=PUBLISHED)[0, 0, 3].tolist() == [1, 1, 4, 1]


def test_density_and_fractions():
    B, HQ, nb = 2, 3, 11
    lev = level_mask(_scores(B, HQ, nb, seed=5), _cap(B, 3, nb, seed=5), mode="topk", ratios=SPARSE)
    with poisoned_allocations():
        d = density(lev)
        f = level_fractions(lev)
    assert d.shape == (B, HQ) and f.shape == (B, HQ, len(LEVELS))
    assert torch.allclose(d, naive.density(lev), atol=1e-6)
    assert torch.allclose(f.sum(-1), torch.ones(B, HQ, device=DEVICE), atol=1e-6)
    inv = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.125], device=DEVICE)
    assert torch.allclose((f * inv).sum(-1), d, atol=1e-6), "density = sum over levels of fraction / r"
    ones = torch.ones(1, 1, nb, nb, dtype=torch.int8, device=DEVICE).tril()
    assert density(ones).item() == 1.0


def test_bad_arguments():
    s = _scores(1, 1, 4, seed=0)
    with pytest.raises(ValueError):
        level_mask(s, None, mode="topp", ratios=PUBLISHED)
    with pytest.raises(ValueError):
        level_mask(s, None, ratios={1: (0.0, 0.6), 2: (0.5, 1.0)})  # overlap
    with pytest.raises(ValueError):
        level_mask(s, None, ratios={3: (0.0, 1.0)})
    with pytest.raises(ValueError):
        level_mask(s, torch.ones(1, 1, 3, dtype=torch.int8), ratios=PUBLISHED)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["topk", "energybound"])
def test_bf16_scores_and_no_host_sync_on_gpu(mode):
    B, HKV, G, nb = 1, 2, 2, 64
    s = _scores(B, HKV * G, nb, seed=11).to(torch.bfloat16)  # low precision: many ties
    cap = _cap(B, HKV, nb, seed=11)
    kw = dict(mode=mode, ratios=SPARSE, text_blocks=2)
    level_mask(s, cap, **kw)  # first call builds the cached band table
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lev = level_mask(s, cap, **kw)
        d, f = density(lev), level_fractions(lev)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(lev, naive.level_mask(s, cap, **kw))
    assert torch.isfinite(d).all() and torch.isfinite(f).all()
