"""The fused ops of the fast path: qvl_kernels' Triton kernels for CUDA tensors, and their
plain-PyTorch definitions (`naive.py`, what the kernels are tested against) for anything else.

qvl_kernels' own dispatch also sends CPU tensors to Triton under TRITON_INTERPRET=1, which is how
the kernels are tested on a CPU; the engine on a CPU wants the definitions, which give the same
numbers far faster than the interpreter.
"""

from __future__ import annotations

from qvl_kernels.decode_attention import decode_attention as _decode_attention
from qvl_kernels.decode_attention import naive as _decode_attention_naive
from qvl_kernels.rms_norm import naive as _rms_norm_naive
from qvl_kernels.rms_norm import rms_norm as _rms_norm
from qvl_kernels.rotary import naive as _rotary_naive
from qvl_kernels.rotary import rotary_qk as _rotary_qk
from qvl_kernels.silu_mul import naive as _silu_mul_naive
from qvl_kernels.silu_mul import silu_mul as _silu_mul


def rms_norm(x, weight, eps, residual=None):
    fn = _rms_norm if x.is_cuda else _rms_norm_naive.rms_norm
    return fn(x, weight, eps, residual)


def rotary_qk(q, k, cos, sin, fp32_math, out):
    fn = _rotary_qk if q.is_cuda else _rotary_naive.rotary_qk
    return fn(q, k, cos, sin, fp32_math, out)


def silu_mul(gate, up, out=None):
    return (_silu_mul if gate.is_cuda else _silu_mul_naive.silu_mul)(gate, up, out)


def decode_attention(q, k_cache, v_cache, length):
    fn = _decode_attention if q.is_cuda else _decode_attention_naive.decode_attention
    return fn(q, k_cache, v_cache, length)
