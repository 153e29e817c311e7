"""similarity_cap / block_similarity (Triton) against their plain-PyTorch definitions."""

import math

import pytest
import torch
from _helpers import TOL, assert_close_rel, poison, poisoned_allocations

from qvl_kernels.similarity_cap import block_similarity, naive, similarity_cap

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu),
]
THRESHOLDS = (0.75, 0.70, 0.70)


def _keys(B, H, L, D, block, dtype, seed):
    """Keys whose similarities spread around the thresholds: every block repeats each key over
    groups of 1, 2, 4 or 8 tokens (chosen per block), plus noise of a per-block size."""
    g = torch.Generator().manual_seed(seed)
    nb = math.ceil(L / block)
    r = torch.tensor([1, 2, 4, 8])[torch.randint(0, 4, (B, H, nb), generator=g)]
    sigma = 1.2 * torch.rand(B, H, nb, generator=g)
    blk = torch.arange(nb * block) // block
    group = torch.arange(nb * block) // r[..., blk]  # [B, H, nb * block]
    base = torch.randn(B, H, nb * block, D, generator=g)
    k = torch.gather(base, 2, group[..., None].expand(-1, -1, -1, D))
    k = k + sigma[..., blk, None] * torch.randn(B, H, nb * block, D, generator=g)
    return k[:, :, :L].to(DEVICE, dtype)


# (B, HKV, L, D, block)
CASES = [(1, 1, 1, 64, 16), (2, 2, 63, 80, 16), (1, 3, 129, 64, 32), (1, 2, 300, 128, 128), (1, 1, 300, 64, 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-H{}-L{}-D{}-blk{}".format(*c))
def test_similarity_and_cap_match_reference(case, dtype):
    B, H, L, D, block = case
    k = _keys(B, H, L, D, block, dtype, seed=L + D)
    nb = math.ceil(L / block)
    sim = torch.empty(B, H, nb, 3, device=DEVICE)
    cap = torch.empty(B, H, nb, device=DEVICE, dtype=torch.int8)
    poison(sim, cap)
    block_similarity(k, block=block, out=sim)
    similarity_cap(k, block=block, thresholds=THRESHOLDS, out=cap)
    ref_sim = naive.block_similarity(k.float(), block=block)
    ref_cap = naive.similarity_cap(k.float(), block=block, thresholds=THRESHOLDS)
    assert_close_rel(sim, ref_sim, TOL[dtype] / 4, what="similarity")
    assert cap.dtype == torch.int8
    # exact, except where a similarity sits within rounding of its threshold
    near = ((ref_sim - torch.tensor(THRESHOLDS, device=DEVICE)).abs() < 3 * TOL[dtype]).any(-1)
    assert ((cap == ref_cap) | near).all(), f"caps differ: {cap.flatten().tolist()} vs {ref_cap.flatten().tolist()}"


def test_cap_allocates_poisoned_output_and_spreads_levels():
    k = _keys(1, 4, 300, 64, 16, torch.float32, seed=5)
    with poisoned_allocations():
        cap = similarity_cap(k, block=16)
    assert torch.equal(cap, naive.similarity_cap(k, block=16))
    assert set(cap.unique().tolist()) == {1, 2, 4, 8}, "test keys should reach every cap"


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_groups_of_r_identical_keys_cap_at_r(r):
    # Keys repeated over groups of r tokens, independent across groups: exactly the pairs inside
    # a group are identical (cosine 1), pairs across groups are near-orthogonal.
    g = torch.Generator().manual_seed(r)
    base = torch.randn(1, 2, 64 // r, 128, generator=g)
    k = base.repeat_interleave(r, dim=2).to(DEVICE)  # L = 64
    assert (similarity_cap(k, block=16) == r).all()
    sim = block_similarity(k, block=16)
    for i, rr in enumerate((2, 4, 8)):
        if rr <= r:
            assert_close_rel(sim[..., i], torch.ones_like(sim[..., i]), 1e-6)


def test_opposite_neighbours_cap_at_1():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 8, 64, generator=g)
    k = torch.stack([x, -x], 3).flatten(2, 3).to(DEVICE)  # pairs (2t, 2t+1) are opposite
    assert (similarity_cap(k, block=16) == 1).all()
    assert_close_rel(block_similarity(k, block=16)[..., 0], -torch.ones(1, 1, 1, device=DEVICE), 1e-6)


def test_partial_last_block_counts_only_complete_pairs():
    # L = 18 with block 16: the last block holds tokens 16, 17, one pair at r = 2, none at 4 or 8,
    # so even identical keys there cap at 2.
    k = torch.ones(1, 1, 18, 64, device=DEVICE)
    assert similarity_cap(k, block=16).flatten().tolist() == [8, 2]
    assert block_similarity(k, block=16)[0, 0, 1].tolist() == [1.0, 0.0, 0.0]
    # a single token: no pair at all
    assert similarity_cap(torch.ones(1, 1, 17, 64, device=DEVICE), block=16).flatten().tolist() == [8, 1]


def test_strided_keys_and_bad_arguments():
    g = torch.Generator().manual_seed(1)
    k = torch.randn(1, 100, 2, 64, generator=g).to(DEVICE).transpose(1, 2)  # [B, H, L, D] view
    assert_close_rel(block_similarity(k, block=32), naive.block_similarity(k, block=32), 1e-5)
    with pytest.raises(ValueError):
        similarity_cap(k, block=24)
    with pytest.raises(ValueError):
        similarity_cap(k, thresholds=(0.7, 0.7))
