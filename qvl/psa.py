"""Pyramid Sparse Attention in the app: configuration, registration with transformers, statistics.

PSA replaces the language model's attention during prefill (the long video prompt); decoding one
token at a time, and prompts shorter than `min_tokens`, keep SDPA. The vision tower keeps SDPA.
The kernels live in `qvl_kernels` (Triton, CUDA); on the CPU the same math runs in plain torch one
query block at a time (`qvl_kernels.psa.blocked`, memory O(L x block), equal to the references),
so `--psa` works everywhere and is tested with the tiny model.

transformers is reached only through its registries (`AttentionInterface`, `AttentionMaskInterface`),
never by replacing a module's `forward`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

ATTENTION_NAME = "qvl_psa"

# The published example's name of each setting -> the kernels' (qvl_kernels.psa.PSAConfig).
_KERNEL_NAMES = {
    "block": "block",
    "xattn_stride": "stride",
    "importance_method": "method",
    "mask_mode": "mode",
    "mask_ratios": "ratios",
    "use_similarity_cap": "similarity_cap",
}


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

    def __post_init__(self) -> None:
        from qvl.errors import OptionError

        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise OptionError(f"--min-tokens must be a whole number >= 0, not {self.min_tokens}")
        # The kernels' own checks (block, stride, bands), now rather than in the middle of a prefill.
        try:
            self.kernel_config(0)
        except ValueError as exc:
            raise OptionError(f"impossible PSA setting: {exc}") from None

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> "AttentionConfig":
        """A preset of qvl_kernels.psa.PRESETS: "default" (published energybound bands), "balanced"
        (~35% budget), "fast" (~10%) or "dense"; keywords override settings."""
        from qvl_kernels.psa import PRESETS

        if name not in PRESETS:
            from qvl.errors import OptionError

            raise OptionError(f"unknown PSA preset {name!r}; choose one of {', '.join(PRESETS)}")
        kernel = PRESETS[name]
        seed = {ours: _copy(kernel[theirs]) for ours, theirs in _KERNEL_NAMES.items() if theirs in kernel}
        return cls(**{**seed, **overrides, "preset_name": name})

    def kernel_config(self, text_length: int):
        """The kernels' PSAConfig for a prompt whose last `text_length` tokens are text."""
        from qvl_kernels.psa import PSAConfig

        if not self.causal_main:
            raise ValueError("causal_main=False: qvl runs PSA only in the causal language model")
        settings = {theirs: _copy(getattr(self, ours)) for ours, theirs in _KERNEL_NAMES.items()}
        if settings["ratios"] is None:
            del settings["ratios"]  # PSAConfig's default: the published bands
        return PSAConfig(**settings, text_length=text_length, causal=True)


def _copy(value):
    return dict(value) if isinstance(value, dict) else value


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


class _Request(NamedTuple):
    min_tokens: int
    kernel: Any  # qvl_kernels.psa.PSAConfig for this prompt
    stats: PSAStats | None
    probe: Any = None  # qvl.psa_profile.LayerProbe: sees every attention call's inputs and output


_active = threading.local()


@contextlib.contextmanager
def psa_request(config: AttentionConfig, text_length: int, stats: PSAStats | None = None, probe=None):
    """Within this block, prefill attention of models set to PSA uses `config` for this prompt.

    text_length: tokens of text after the last vision token (kept at full resolution). The
    kernels' settings are derived here, once, for every layer of the prefill. probe: None, or an
    object with `start()` and `finish(started, module, query, key, value, attention_mask, out,
    layer_stats, **kwargs)` called around every attention call (`qvl psa-profile`'s per-layer
    timings and errors; it may sync the device, which is why normal requests pass none).
    """
    previous = getattr(_active, "state", None)
    _active.state = _Request(config.min_tokens, config.kernel_config(text_length), stats, probe)
    try:
        yield stats
    finally:
        _active.state = previous


def psa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """An `AttentionInterface` function: PSA for long causal prefill, SDPA for everything else.

    query: [B, HQ, S, D]; key, value: [B, HKV, S_kv, D]. Returns (out [B, S, HQ, D], None).
    """
    state = getattr(_active, "state", None)
    probe = state.probe if state is not None else None
    if probe is None:
        return _attend(state, module, query, key, value, attention_mask, dropout, scaling, kwargs)[0]
    started = probe.start()
    out, layer_stats = _attend(state, module, query, key, value, attention_mask, dropout, scaling, kwargs)
    probe.finish(started, module, query, key, value, attention_mask, out[0], layer_stats, scaling=scaling, **kwargs)
    return out


def _attend(state, module, query, key, value, attention_mask, dropout, scaling, kwargs):
    """((out [B, S, HQ, D], None), PSA's layer statistics or None where SDPA ran)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    # Batch 1 with no padding is the only case qvl sends; a padded batch falls back to SDPA.
    usable = state is not None and q_len == kv_len and query.shape[0] == 1
    if not usable or q_len < state.min_tokens:
        sdpa = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return sdpa, None
    kernel = state.kernel
    if kernel.text_length > q_len:
        kernel = kernel.with_(text_length=q_len)
    if query.is_cuda:
        from qvl_kernels.psa import psa_attention
    else:  # plain torch a query block at a time (memory O(L x block)), also under TRITON_INTERPRET=1
        from qvl_kernels.psa.blocked import psa_attention
    out, layer_stats = psa_attention(query, key, value, kernel)
    if state.stats is not None:
        state.stats.tokens = q_len
        state.stats.add(getattr(module, "layer_idx", len(state.stats.layers)), layer_stats)
    return (out.transpose(1, 2).contiguous(), None), layer_stats


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
    config = attention_config or AttentionConfig()
    _active.state = _Request(config.min_tokens, config.kernel_config(0), None)
    return model
