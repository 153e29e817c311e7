"""The language model's pass over a whole prompt, as our own loop over the model's weights.

transformers' forward spends a long prompt's time not only in its matrix products but in separate
passes over the activations (RMSNorm in fp32, the MLP's activation and product, the rotary
embedding), and q, k and v are three products. Here each layer is the fused
q/k/v product, the rotary kernel in place, attention through the model's own attention function
(SDPA, or PSA where the engine has it, so PSA runs exactly as on the stock path), and the fused
RMSNorm + residual and SiLU-gate kernels of the decode step; keys and values go straight into the
decoder's cache. The MLP runs over chunks of tokens, so its activations (two intermediate widths
per token) are bounded by `MLP_CHUNK` rows instead of the prompt's length.

Where the model is not what this loop implements (another attention implementation, sliding
windows, another MLP activation), `supported` says so and the caller takes the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qvl.engine.fuse import fuse_linears, gated_mlp, norm
from qvl.engine.kernels import rotary_qk

MLP_CHUNK = 4096  # tokens per MLP product: a 7B's gate/up activations stay under 0.32 GB


def supported(model) -> bool:
    """Whether `run_language_model` can run this model's language model."""
    from qvl.psa import ATTENTION_NAME

    text = model.model.language_model
    config = text.config
    return (
        config._attn_implementation in ("sdpa", ATTENTION_NAME)  # the attention functions it calls as transformers does
        and not getattr(text, "has_sliding_layers", False)
        and config.hidden_act == "silu"
    )


@torch.inference_mode()
def run_language_model(
    model, embeds: torch.Tensor, position_ids: torch.Tensor, keys, values, offset: int = 0
) -> torch.Tensor:
    """The final-normed hidden state of the prompt's last position ([1, hidden]) for `embeds`
    ([1, L, hidden]) at mRoPE `position_ids` ([3, 1, L]); layer i's keys and values are written to
    keys[i, :, offset:offset + L] and values[i, :, offset:offset + L] ([layers, kv_heads,
    capacity, head_dim] buffers). With `offset`, the tokens also attend to the `offset` tokens
    already in the buffers (a question after a session's kept media)."""
    text = model.model.language_model
    config = text.config
    attend = getattr(text, "attention_function", None)  # qvl's own tree (`native`) brings its own
    if attend is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attend = ALL_ATTENTION_FUNCTIONS[config._attn_implementation]
    x = embeds[0]
    length = x.shape[0]
    end = offset + length
    # no mask for a whole prompt: causal attention, as transformers runs it; after kept tokens, each
    # new token sees them all and the new ones up to itself
    mask = None if offset == 0 else torch.ones(length, end, dtype=torch.bool, device=x.device).tril(offset)[None, None]
    cos, sin = (t[0] for t in text.rotary_emb(embeds, position_ids))  # [L, head_dim], mRoPE sections applied
    layers = list(text.layers)
    heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, layers[0].self_attn.head_dim
    h = norm(layers[0].input_layernorm, x)
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        weight, bias = fuse_linears(attn, "qkv", (attn.q_proj, attn.k_proj, attn.v_proj))
        qkv = F.linear(h, weight, bias)
        q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        q, k = q.view(length, heads, dim), k.view(length, kv_heads, dim)
        rotary_qk(q, k, cos, sin, fp32_math=False, out=(q, k))  # the text model's rotary, rounded as it rounds
        # [1, heads, L, dim] views of the projections, laid out as transformers hands them to attention
        q, k, v = (t.view(length, -1, dim).transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        keys[i, :, offset:end].copy_(k[0])
        values[i, :, offset:end].copy_(v[0])
        if offset:
            k, v = keys[i, :, :end].unsqueeze(0), values[i, :, :end].unsqueeze(0)
        out, _ = attend(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
        out = attn.o_proj(out.reshape(length, heads * dim))
        del qkv, q, k, v  # freed before the MLP, whose activations are the layer's peak
        h, x = norm(layer.post_attention_layernorm, out, x)
        out = _mlp(layer.mlp, h)
        if i + 1 < len(layers):
            h, x = norm(layers[i + 1].input_layernorm, out, x)
        else:  # only the last position's hidden state is needed
            h, _ = norm(text.norm, out[-1:], x[-1:])
    return h


def _mlp(mlp, h: torch.Tensor) -> torch.Tensor:
    weight, bias = fuse_linears(mlp, "gate_up", (mlp.gate_proj, mlp.up_proj))
    return gated_mlp(h, weight, bias, mlp.down_proj.weight, mlp.down_proj.bias, MLP_CHUNK)
