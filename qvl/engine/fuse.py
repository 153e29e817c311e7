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


def norm(module, x: torch.Tensor, residual: torch.Tensor | None = None):
    """transformers' RMSNorm `module` on x (or on x + residual, returning (normed, x + residual))."""
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
    return rms_norm(x, module.weight, eps, residual)
