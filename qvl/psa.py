"""Pyramid Sparse Attention in the app: configuration, registration with transformers, statistics.

PSA replaces the language model's attention during prefill (the long video prompt); decoding one
token at a time, and prompts shorter than `min_tokens`, keep SDPA. The vision tower keeps SDPA.
The kernels live in `qvl_kernels` (Triton, CUDA); on the CPU the same math runs through their
plain-PyTorch references, so `--psa` works everywhere and is tested with the tiny model.

transformers is reached only through its registries (`AttentionInterface`, `AttentionMaskInterface`),
never by replacing a module's `forward`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

ATTENTION_NAME = "qvl_psa"
PRESETS = ("default", "balanced", "fast", "dense")


@dataclass
class AttentionConfig:
    """PSA settings under the published example's names (see qvl_kernels.psa.PSAConfig for the kernels').

    mask_mode: "energybound" or "topk"; mask_ratios: {level: (start, end)} bands (published
    default when None); importance_method: "xattn" or "pooling"; xattn_stride: 8; causal_main: True
    (PSA here is always causal); block: 128 tokens; use_similarity_cap: True;
    min_tokens: prompts shorter than this use SDPA (PSA only pays on long prompts).
    """

    mask_mode: str = "energybound"
    mask_ratios: dict | None = None
    importance_method: str = "xattn"
    xattn_stride: int = 8
    causal_main: bool = True
    block: int = 128
    use_similarity_cap: bool = True
    min_tokens: int = 1024
    preset_name: str = field(default="custom", repr=False)

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> "AttentionConfig":
        """ "default" (published energybound bands), "balanced" (~35% budget), "fast" (~10%), "dense"."""
        from qvl_kernels.psa import PSAConfig

        if name not in PRESETS:
            from qvl.errors import OptionError

            raise OptionError(f"unknown PSA preset {name!r}; choose one of {', '.join(PRESETS)}")
        kernel = PSAConfig.preset(name)
        return cls(
            mask_mode=kernel.mode,
            mask_ratios=dict(kernel.ratios),
            use_similarity_cap=kernel.similarity_cap,
            preset_name=name,
            **overrides,
        )

    def kernel_config(self, text_length: int):
        from qvl_kernels.psa import PUBLISHED_RATIOS, PSAConfig

        if not self.causal_main:
            raise ValueError("causal_main=False: qvl runs PSA only in the causal language model")
        return PSAConfig(
            block=self.block,
            stride=self.xattn_stride,
            method=self.importance_method,
            mode=self.mask_mode,
            ratios=self.mask_ratios or dict(PUBLISHED_RATIOS),
            text_length=text_length,
            similarity_cap=self.use_similarity_cap,
            causal=True,
        )


class PSAStats:
    """Per-layer PSA statistics of one prefill, kept as device tensors until `summary()` (one sync)."""

    def __init__(self):
        self.layers: list[tuple[int, Any, Any]] = []  # (layer index, density [B, HQ], level fraction [B, HQ, 5])
        self.tokens = 0

    def add(self, layer: int, stats: dict) -> None:
        self.layers.append((layer, stats["density"], stats["level_fraction"]))

    def summary(self) -> dict | None:
        """Mean density (share of dense attention cost) over heads, per layer and overall."""
        if not self.layers:
            return None
        import torch

        density = torch.stack([d.float().mean() for _, d, _ in self.layers]).cpu()
        fractions = torch.stack([f.float().mean(dim=(0, 1)) for _, _, f in self.layers]).cpu()
        from qvl_kernels.level_mask import LEVELS

        overall = float(density.mean())
        return {
            "tokens": self.tokens,
            "layers": len(self.layers),
            "density": round(overall, 4),
            "sparsity": round(1 - overall, 4),
            "level_fraction": {str(level): round(float(v), 4) for level, v in zip(LEVELS, fractions.mean(0))},
            "per_layer_density": [round(float(d), 4) for d in density],
        }


_active = threading.local()


@contextlib.contextmanager
def psa_request(config: AttentionConfig, text_length: int, stats: PSAStats | None = None):
    """Within this block, prefill attention of models set to PSA uses `config` for this prompt.

    text_length: tokens of text after the last vision token (kept at full resolution).
    """
    previous = getattr(_active, "state", None)
    _active.state = (config, text_length, stats)
    try:
        yield stats
    finally:
        _active.state = previous


def psa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """An `AttentionInterface` function: PSA for long causal prefill, SDPA for everything else.

    query: [B, HQ, S, D]; key, value: [B, HKV, S_kv, D]. Returns (out [B, S, HQ, D], None).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    state = getattr(_active, "state", None)
    q_len, kv_len = query.shape[2], key.shape[2]
    # Batch 1 with no padding is the only case qvl sends; a padded batch falls back to SDPA.
    usable = state is not None and q_len == kv_len and query.shape[0] == 1
    if not usable or q_len < state[0].min_tokens:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    config, text_length, stats = state
    kernel_config = config.kernel_config(min(text_length, q_len))
    if query.is_cuda:
        from qvl_kernels.psa import psa_attention

        out, layer_stats = psa_attention(query, key, value, kernel_config)
    else:
        out, layer_stats = _reference_psa(query, key, value, kernel_config)
    if stats is not None:
        stats.tokens = q_len
        stats.add(getattr(module, "layer_idx", len(stats.layers)), layer_stats)
    return out.transpose(1, 2).contiguous(), None


def _reference_psa(q, k, v, config):
    """The same composition through the kernels' plain-PyTorch references (CPU, small prompts)."""
    from qvl_kernels.block_importance.naive import block_importance
    from qvl_kernels.level_mask import level_mask  # vectorized torch on the CPU, same levels as naive
    from qvl_kernels.psa import level_stats
    from qvl_kernels.pyramid_attention.naive import pyramid_attention
    from qvl_kernels.similarity_cap.naive import similarity_cap

    scores = block_importance(q, k, block=config.block, stride=config.stride, method=config.method, causal=True)
    cap = similarity_cap(k, block=config.block, thresholds=config.thresholds) if config.similarity_cap else None
    levels = level_mask(
        scores, cap, mode=config.mode, ratios=config.ratios, text_blocks=config.text_blocks, causal=True
    )
    return pyramid_attention(q, k, v, levels, causal=True, block=config.block), level_stats(levels)


def register() -> str:
    """Make "qvl_psa" a transformers attention implementation (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, psa_attention_forward)
    # The masks PSA's fallback (SDPA) expects; PSA itself is causal by construction.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def attn_implementation() -> dict:
    """What to pass to `from_pretrained`: PSA in the language model, SDPA in the vision tower."""
    return {"text_config": register(), "vision_config": "sdpa"}


def replace_psa_attention_qwen2vl(model, attention_config: AttentionConfig | None = None):
    """Switch a loaded Qwen2.5-VL to PSA (the published example's entry point); returns the model.

    The config applies to every later `generate` call; qvl's engine instead sets it per request.
    """
    model.set_attn_implementation(attn_implementation())
    _active.state = (attention_config or AttentionConfig(), 0, None)
    return model
