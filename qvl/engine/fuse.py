"""Fused projections: several `nn.Linear`s over the same input as one matrix product.

The originals' parameters are re-pointed at views of the fused weight, so nothing is stored twice
and the model's own modules (the stock path) keep working on the same memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qvl.engine.kernels import rms_norm, silu_mul


def fuse_linears(module, name: str, linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The [rows of linears[0]; linears[1]; ...] weight (and bias) of `linears`, made once and kept
    on `module` as `qvl_<name>`."""
    kept = getattr(module, f"qvl_{name}", None)
    if kept is not None:
        return kept
    weight = torch.cat([lin.weight.detach() for lin in linears])
    has_bias = all(lin.bias is not None for lin in linears)
    bias = torch.cat([lin.bias.detach() for lin in linears]) if has_bias else None
    row = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(weight[row : row + rows], requires_grad=False)
        if has_bias:
            lin.bias = torch.nn.Parameter(bias[row : row + rows], requires_grad=False)
        row += rows
    setattr(module, f"qvl_{name}", (weight, bias))
    return weight, bias


def fuse_padded_mlp(mlp, multiple: int = 128) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """A gated MLP's gate and up weights as one matrix product whose halves are each padded with
    zero rows to a multiple of `multiple`, and the down weight padded with zero columns to match:
    (gate_up weight, its bias, down weight). Made once and kept on `mlp` as `qvl_padded`.

    cuBLAS runs its Hopper kernels only for widths that are multiples of 128; the vision tower's
    3,420 would fall back to an older, much slower kernel. The zeros change no result: SiLU(0) * 0
    is 0, and a zero column of the down weight adds nothing. The modules' own parameters become
    views of the padded weights, so nothing is stored twice."""
    kept = getattr(mlp, "qvl_padded", None)
    if kept is not None:
        return kept
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    inner, width = gate.weight.shape
    wide = -(-inner // multiple) * multiple
    weight = gate.weight.new_zeros(2 * wide, width)
    weight[:inner], weight[wide : wide + inner] = gate.weight.detach(), up.weight.detach()
    bias = None
    if gate.bias is not None and up.bias is not None:
        bias = gate.bias.new_zeros(2 * wide)
        bias[:inner], bias[wide : wide + inner] = gate.bias.detach(), up.bias.detach()
        gate.bias = torch.nn.Parameter(bias[:inner], requires_grad=False)
        up.bias = torch.nn.Parameter(bias[wide : wide + inner], requires_grad=False)
    gate.weight = torch.nn.Parameter(weight[:inner], requires_grad=False)
    up.weight = torch.nn.Parameter(weight[wide : wide + inner], requires_grad=False)
    down_weight = down.weight.new_zeros(down.weight.shape[0], wide)
    down_weight[:, :inner] = down.weight.detach()
    down.weight = torch.nn.Parameter(down_weight[:, :inner], requires_grad=False)
    mlp.qvl_padded = (weight, bias, down_weight)
    return mlp.qvl_padded


def gated_mlp(h, gate_up, gate_up_bias, down, down_bias, chunk: int) -> torch.Tensor:
    """down(SiLU(gate) * up) for the rows of `h`, gate and up as one product (`gate_up`, the gate's
    rows first), over chunks of `chunk` rows: the [rows, 2 x width] activations stay bounded
    whatever the number of rows. The activation is written over the gate's half of that product
    and the down product reads it there (a row stride cuBLAS takes as it is), so no third
    [rows, width] buffer is held; each chunk's down product writes straight into its rows of the
    result (no copy), and rows that fit one chunk take three launches in all."""
    rows = h.shape[0]
    if rows <= chunk:
        return F.linear(_activation(h, gate_up, gate_up_bias), down, down_bias)
    out = h.new_empty(rows, down.shape[0])
    for start in range(0, rows, chunk):
        act, part = _activation(h[start : start + chunk], gate_up, gate_up_bias), out[start : start + chunk]
        if down_bias is None:
            torch.mm(act, down.t(), out=part)
        else:
            torch.addmm(down_bias, act, down.t(), out=part)
        del act  # else two chunks' activations are held while the next one is made
    return out


def _activation(h, gate_up, gate_up_bias) -> torch.Tensor:
    """SiLU(gate) * up for the rows of `h`, in place of the gate's half of their product."""
    gate, up = F.linear(h, gate_up, gate_up_bias).chunk(2, dim=-1)
    return silu_mul(gate, up, out=gate)


def fuse_model(model) -> None:
    """Fuse the projections the fast path multiplies together, once, when the model is loaded:
    fusing copies a layer's weights once, which inside a request would raise its peak memory."""
    for layer in model.model.language_model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        fuse_linears(attn, "qkv", (attn.q_proj, attn.k_proj, attn.v_proj))
        fuse_linears(mlp, "gate_up", (mlp.gate_proj, mlp.up_proj))
    for block in model.model.visual.blocks:
        fuse_padded_mlp(block.mlp)


def norm(module, x: torch.Tensor, residual: torch.Tensor | None = None):
    """transformers' RMSNorm `module` on x (or on x + residual, returning (normed, x + residual))."""
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
    return rms_norm(x, module.weight, eps, residual)
