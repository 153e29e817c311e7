"""One matrix-product step shared by the attention kernels."""

import triton
import triton.language as tl


@triton.jit
def dot(a, b, acc):
    # fp32 inputs get full fp32 products (Triton's default for them is TF32, ~1e-3 relative error);
    # fp16/bf16 run on tensor cores with fp32 accumulation.
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)
