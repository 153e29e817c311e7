"""Fused projections: several `nn.Linear`s over the same input as one matrix product.

The originals' parameters are re-pointed at views of the fused weight, so nothing is stored twice
and the model's own modules (the stock path) keep working on the same memory.
"""

from __future__ import annotations

import torch

from qvl.engine.kernels import rms_norm


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


def fuse_model(model) -> None:
    """Fuse the projections the fast path multiplies together, once, when the model is loaded:
    fusing copies a layer's weights once, which inside a request would raise its peak memory."""
    for layer in model.model.language_model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        fuse_linears(attn, "qkv", (attn.q_proj, attn.k_proj, attn.v_proj))
        fuse_linears(mlp, "gate_up", (mlp.gate_proj, mlp.up_proj))
    for block in model.model.visual.blocks:
        fuse_linears(block.mlp, "gate_up", (block.mlp.gate_proj, block.mlp.up_proj))


def norm(module, x: torch.Tensor, residual: torch.Tensor | None = None):
    """transformers' RMSNorm `module` on x (or on x + residual, returning (normed, x + residual))."""
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
    return rms_norm(x, module.weight, eps, residual)
