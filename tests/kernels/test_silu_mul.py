"""silu_mul (Triton) against eager F.silu(gate) * up."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_close_rel, poisoned_allocations

from qvl_kernels.silu_mul import silu_mul
from qvl_kernels.silu_mul import triton as silu_triton
from qvl_kernels.silu_mul.naive import silu_mul as silu_mul_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = pytest.mark.parametrize("shape", [(1, 40), (7, 100), (3, 5, 1280), (129, 3584)], ids=lambda v: str(v))
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])


def _gate_up(shape, dtype, seed, device=DEVICE):
    """A fused projection output [..., 2I] = cat([gate, up], -1) and its two halves (views)."""
    g = torch.Generator().manual_seed(seed)
    gu = (2 * torch.randn(*shape[:-1], 2 * shape[-1], generator=g)).to(device=device, dtype=dtype)
    gate, up = gu.chunk(2, dim=-1)
    return gu, gate, up


def _interpreter_arithmetic(gate, up):
    """The kernel's arithmetic as the interpreter runs it (numpy's fp32 exp and IEEE division):
    silu rounded to the dtype, then the product rounded again."""
    g = gate.float().cpu().numpy()
    s = torch.from_numpy(g / (np.float32(1) + np.exp(-g))).to(gate.dtype)
    return (s.float() * up.float().cpu()).to(gate.dtype)


@DTYPES
@SHAPES
def test_silu_mul_matches_reference(shape, dtype):
    _, gate, up = _gate_up(shape, dtype, seed=shape[-1])
    with poisoned_allocations():
        y = silu_mul(gate, up)
    ref = silu_mul_ref(gate, up)
    assert y.dtype == dtype and y.shape == gate.shape and y.is_contiguous()
    if dtype == torch.float32:
        assert_close_rel(y, ref, 1e-6)
        return
    if DEVICE == "cuda":  # libdevice expf and IEEE division: eager's arithmetic exactly
        assert torch.equal(y, ref)
        return
    # In the interpreter exp is numpy's, torch's CPU silu uses SLEEF's; they differ in fp32's last
    # bit for some inputs, which flips the fp16 rounding of silu for a few in 10^4 elements. The
    # kernel's own arithmetic, written out, matches bit for bit (pinning the two roundings).
    assert torch.equal(y.cpu(), _interpreter_arithmetic(gate, up))
    assert_close_rel(y, ref, 1e-4)
    assert (y != ref).float().mean().item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_silu_mul_separate_tensors_and_strided_rows(dtype):
    """Separate contiguous gate and up, and rows of a wider buffer, equal the fused-halves result."""
    gu, gate, up = _gate_up((3, 4, 100), dtype, seed=1)
    y = silu_mul(gate, up)
    assert torch.equal(silu_mul(gate.contiguous(), up.contiguous()), y)
    wide = torch.cat([gu, gu], dim=-1)[:, :, :200]  # [3, 4, 200] view with row stride 400
    assert torch.equal(silu_mul(*wide.chunk(2, dim=-1)), y)
    assert torch.equal(silu_mul(gate.transpose(0, 1), up.transpose(0, 1)), y.transpose(0, 1))


@DTYPES
@pytest.mark.parametrize("shape", [(5, 77), (2, 3, 300)], ids=lambda v: str(v))
def test_silu_mul_out_over_the_gate_and_into_strided_rows(shape, dtype):
    """`out` given: the result lands there (the kernel and the reference alike), over the gate's
    own half of a fused buffer (in place) or in the rows of a wider buffer, and equals the result
    of a fresh output."""
    gu, gate, up = _gate_up(shape, dtype, seed=shape[-1] + 3)
    want = silu_mul(gate, up)
    ref_gu = gu.cpu().clone()
    ref_gate, ref_up = ref_gu.chunk(2, dim=-1)
    wide = torch.full((*shape[:-1], 3 * shape[-1]), float("nan"), dtype=dtype, device=DEVICE)
    into = wide[..., shape[-1] : 2 * shape[-1]]
    assert silu_mul(gate, up, out=into) is into
    assert torch.equal(into, want)
    assert wide[..., : shape[-1]].isnan().all() and wide[..., 2 * shape[-1] :].isnan().all()
    assert silu_mul(gate, up, out=gate) is gate
    assert torch.equal(gate, want)
    assert torch.equal(gu.chunk(2, dim=-1)[1], up)  # the up half is read, never written
    reference = silu_mul_ref(ref_gate, ref_up)
    assert silu_mul_ref(ref_gate, ref_up, out=ref_gate) is ref_gate
    assert torch.equal(ref_gate, reference)


def test_silu_mul_rejects_a_bad_out():
    _, gate, up = _gate_up((3, 40), torch.float32, seed=0)
    for op in (silu_mul, silu_mul_ref):
        with pytest.raises(ValueError, match="out must have gate's shape"):
            op(gate, up, out=torch.empty(3, 41, device=gate.device))
        with pytest.raises(ValueError, match="out must have gate's shape"):
            op(gate, up, out=torch.empty(3, 40, dtype=torch.float16, device=gate.device))
    with pytest.raises(ValueError, match="contiguous last dimension"):
        silu_mul(gate, up, out=torch.empty(40, 3, device=gate.device).t())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_reference_is_eager_mlp_rounding(dtype):
    """The definition is the MLP's act_fn(gate_proj(x)) * up_proj(x) with act_fn = F.silu, which
    rounds twice: silu (computed in fp32) to the dtype, then the product."""
    _, gate, up = _gate_up((7, 100), dtype, seed=2, device="cpu")
    y = silu_mul_ref(gate, up)
    assert torch.equal(y, F.silu(gate) * up)
    assert torch.equal(y, (F.silu(gate.float()).to(dtype).float() * up.float()).to(dtype))


def test_silu_mul_rejects_mismatch():
    _, gate, up = _gate_up((3, 40), torch.float32, seed=0)
    with pytest.raises(ValueError, match="one shape and dtype"):
        silu_mul(gate, up[:, :39])
    with pytest.raises(ValueError, match="one shape and dtype"):
        silu_mul(gate, up.half())


def test_silu_mul_plain_cpu_uses_reference(monkeypatch):
    """Without CUDA or the interpreter the public op is the eager definition, and the kernel's
    launcher says where it runs."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    _, gate, up = _gate_up((3, 100), torch.float16, seed=4, device="cpu")
    assert torch.equal(silu_mul(gate, up), silu_mul_ref(gate, up))
    with pytest.raises(ValueError, match="CUDA"):
        silu_triton.silu_mul(gate, up)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4099, 3420), (1, 18944), (300, 1280)], ids=lambda v: str(v))
def test_silu_mul_bf16_gpu(shape):
    _, gate, up = _gate_up(shape, torch.bfloat16, seed=shape[0], device="cuda")
    with poisoned_allocations():
        y = silu_mul(gate, up)
    assert torch.equal(y, silu_mul_ref(gate, up))
