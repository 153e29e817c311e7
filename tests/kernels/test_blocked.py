"""The CPU path of PSA (`blocked.py` of block_importance, pyramid_attention and psa): the
references' results, one query block at a time, with memory that grows as L x block, not L^2."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from _helpers import TOL, assert_close_rel

from qvl_kernels.block_importance.blocked import block_importance_blocked
from qvl_kernels.block_importance.naive import block_importance as block_importance_ref
from qvl_kernels.psa import PSAConfig
from qvl_kernels.psa import blocked as psa_blocked
from qvl_kernels.psa import naive as psa_naive
from qvl_kernels.pyramid_attention.blocked import pyramid_attention_blocked
from qvl_kernels.pyramid_attention.naive import pyramid_attention as pyramid_attention_ref

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")

SHAPES = [(1, 1), (63, 7), (129, 2), (300, 1)]  # (L, G)


def _qkv(L, G, D=64, HKV=2, seed=0, r=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, HKV * G, L, D, generator=g)
    k = torch.randn(1, HKV, math.ceil(L / r), D, generator=g).repeat_interleave(r, 2)[:, :, :L]
    return q, k + 0.3 * torch.randn(1, HKV, L, D, generator=g), torch.randn(1, HKV, L, D, generator=g)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(
    "method,stride", [("xattn", 4), ("xattn", 16), ("pooling", 8)], ids=["xattn4", "xattn16", "pool"]
)
@pytest.mark.parametrize("L,G", SHAPES, ids=lambda v: str(v))
def test_block_importance_matches_the_reference(L, G, method, stride, causal):
    q, k, _ = _qkv(L, G, seed=L)
    got = block_importance_blocked(q, k, block=16, stride=stride, method=method, causal=causal)
    ref = block_importance_ref(q, k, block=16, stride=stride, method=method, causal=causal)
    assert_close_rel(got, ref, 1e-5, what="S")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("L,G", SHAPES, ids=lambda v: str(v))
def test_pyramid_attention_matches_the_reference(L, G, causal):
    q, k, v = _qkv(L, G, seed=L + 1)
    nb = math.ceil(L / 16)
    levels = torch.tensor([0, 1, 2, 4, 8], dtype=torch.int8)[torch.randint(0, 5, (1, q.shape[1], nb, nb))]
    levels[..., torch.arange(nb), torch.arange(nb)] = 1  # every query sees its own block
    got = pyramid_attention_blocked(q, k, v, levels, causal=causal, block=16)
    assert_close_rel(got, pyramid_attention_ref(q, k, v, levels, causal=causal, block=16), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("preset", ["default", "fast", "balanced", "dense"])
def test_psa_matches_the_reference_chain(preset, dtype):
    q, k, v = (t.to(dtype) for t in _qkv(300, 2, seed=7))
    cfg = PSAConfig.preset(preset, block=16, stride=4, text_length=20)
    out, stats = psa_blocked.psa_attention(q, k, v, cfg)
    ref, ref_stats = psa_naive.psa_attention(q, k, v, cfg)
    assert torch.equal(stats["levels"], ref_stats["levels"])
    assert_close_rel(out, ref, TOL[dtype], what="PSA out")


def test_memory_grows_as_l_times_block_not_l_squared():
    # L = 8192: the reference's scores alone are 1 x 4 x 8192 x 15360 fp32 (2 GiB, several of
    # them live at once); one query block of 128 rows needs about 30 MiB.
    script = textwrap.dedent(
        """
        import resource, torch
        from qvl_kernels.psa import PSAConfig
        from qvl_kernels.psa.blocked import psa_attention
        torch.set_num_threads(2)
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, h, 8192, 32, generator=g) for h in (4, 2, 2))
        psa_attention(q[:, :, :256], k[:, :, :256], v[:, :, :256], PSAConfig())  # warm the allocator
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out, _ = psa_attention(q, k, v, PSAConfig())
        assert torch.isfinite(out).all()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    grown_mib = int(done.stdout.split()[-1])
    assert grown_mib < 400, f"peak memory grew by {grown_mib} MiB"
