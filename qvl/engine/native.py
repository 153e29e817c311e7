"""Qwen2.5-VL's weights in a module tree of qvl's own, for a cold path that imports no transformers.

A fresh process spends seconds importing transformers' model classes (docs/engine.md, "Start-up")
although the fast path runs its own vision tower, prompt loop and decode step, and only reads the
weights through those classes' attribute names. This tree has the same names (so the fast path
runs on it unchanged, and a checkpoint's tensors load into it by name) and the few forward passes
the fast path still calls on the model: the patch merger, the text rotary embedding, the rope
index (`rope_index.rope_index`) and the prompt loop's attention function. Everything here is
checked against transformers' own modules on the tiny model (tests/test_native.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from qvl.engine import rope_index

# Checkpoint names -> this tree's: the Hub's releases name the language model `model.*` and the
# tower `visual.*`; newer saves nest both under `model.`.
_PREFIXES = (
    ("model.language_model.", "model.language_model."),
    ("model.visual.", "model.visual."),
    ("visual.", "model.visual."),
    ("model.", "model.language_model."),
)


class Config(SimpleNamespace):
    """A config.json's fields the fast path reads, as attributes (transformers' names)."""

    def get_text_config(self):
        return self.text_config


def read_config(folder: Path) -> Config:
    """The model's config from `folder`'s config.json (`config_from_dict`)."""
    return config_from_dict(json.loads((Path(folder) / "config.json").read_text()))


def config_from_dict(raw: dict) -> Config:
    """A config.json's contents, in either layout: the text model's fields at the top (the Hub's
    releases) or under `text_config` (newer saves)."""
    text = raw.get("text_config") or raw
    rope = text.get("rope_parameters") or text.get("rope_scaling") or raw.get("rope_scaling") or {}
    heads = text["num_attention_heads"]
    text_config = Config(
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=text.get("num_key_value_heads", heads),
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),  # a value that is no number fails here
        vocab_size=text["vocab_size"],
        hidden_act=text.get("hidden_act", "silu"),
        rope_theta=float(rope.get("rope_theta") or text.get("rope_theta") or raw.get("rope_theta") or 1e6),
        mrope_section=list(rope.get("mrope_section", [16, 24, 24])),
        use_sliding_window=bool(text.get("use_sliding_window", False)),
        max_position_embeddings=text.get("max_position_embeddings") or raw.get("max_position_embeddings"),
        _attn_implementation="sdpa",
    )
    vision = raw["vision_config"]
    vision_config = Config(
        depth=vision["depth"],
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_heads=vision["num_heads"],
        in_channels=vision.get("in_channels", vision.get("in_chans", 3)),
        out_hidden_size=vision["out_hidden_size"],
        patch_size=vision.get("patch_size", 14),
        spatial_merge_size=vision.get("spatial_merge_size", 2),
        temporal_patch_size=vision.get("temporal_patch_size", 2),
        window_size=vision.get("window_size", 112),
        fullatt_block_indexes=list(vision.get("fullatt_block_indexes", [])),
        tokens_per_second=vision.get("tokens_per_second", 2),
        hidden_act=vision.get("hidden_act", "silu"),
    )
    ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return Config(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        **{k: raw[k] for k in ids if k in raw},
    )


def read_generation_config(folder: Path) -> Config:
    """generation_config.json's fields (end-of-turn ids, sampling defaults), or none."""
    path = Path(folder) / "generation_config.json"
    return Config(**(json.loads(path.read_text()) if path.is_file() else {}))


class Linear(nn.Linear):
    """Parameters a checkpoint fills: never initialised. (On the meta device torch's initialisers
    import its compiler, a second of a cold start.)"""

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class Conv3d(nn.Conv3d):
    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class GatedMLP(nn.Module):
    def __init__(self, width: int, inner: int, bias: bool):
        super().__init__()
        self.gate_proj = Linear(width, inner, bias=bias)
        self.up_proj = Linear(width, inner, bias=bias)
        self.down_proj = Linear(inner, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TextAttention(nn.Module):
    def __init__(self, c: Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # PSA's statistics are kept per layer
        self.head_dim = c.head_dim
        self.scaling = c.head_dim**-0.5
        self.num_key_value_groups = c.num_attention_heads // c.num_key_value_heads
        self.is_causal = True
        self.q_proj = Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=True)
        self.k_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=True)
        self.v_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=True)
        self.o_proj = Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)


class DecoderLayer(nn.Module):
    def __init__(self, c: Config, index: int):
        super().__init__()
        self.self_attn = TextAttention(c, index)
        self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, bias=False)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class TextRotary(nn.Module):
    """mRoPE: cos/sin [batch, length, head_dim] whose frequency bands follow the time, row and
    column positions in turn (`mrope_section`), in the model's dtype."""

    def __init__(self, c: Config):
        super().__init__()
        # no checkpoint holds them: `_ready` computes them on the weights' device
        self.register_buffer("inv_freq", torch.empty(c.head_dim // 2), persistent=False)
        self.mrope_section = c.mrope_section

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        freqs = position_ids.expand(3, -1, -1)[..., None].float() * self.inv_freq.to(x.device)
        return self._bands(freqs.cos()).to(x.dtype), self._bands(freqs.sin()).to(x.dtype)

    def _bands(self, freq: torch.Tensor) -> torch.Tensor:
        freq = torch.cat([part[i % 3] for i, part in enumerate(freq.split(self.mrope_section, dim=-1))], dim=-1)
        return torch.cat((freq, freq), dim=-1)


def inverse_frequencies(c: Config) -> torch.Tensor:
    """The text rotary's [head_dim / 2] frequencies, in fp32, computed on the CPU as transformers
    computes them (a GPU's `pow` may round differently)."""
    dim = c.head_dim
    return 1.0 / (c.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim))


class TextModel(nn.Module):
    has_sliding_layers = False

    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.rotary_emb = TextRotary(c)
        self.attention_function = sdpa_attention


class VisionAttention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.scaling = (c.hidden_size // c.num_heads) ** -0.5
        self.qkv = Linear(c.hidden_size, 3 * c.hidden_size, bias=True)
        self.proj = Linear(c.hidden_size, c.hidden_size)


class VisionBlock(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.norm1 = RMSNorm(c.hidden_size, 1e-6)
        self.norm2 = RMSNorm(c.hidden_size, 1e-6)
        self.attn = VisionAttention(c)
        self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, bias=True)


class PatchEmbed(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        kernel = (c.temporal_patch_size, c.patch_size, c.patch_size)
        self.proj = Conv3d(c.in_channels, c.hidden_size, kernel_size=kernel, stride=kernel, bias=False)


class PatchMerger(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.hidden_size = c.hidden_size * c.spatial_merge_size**2
        self.ln_q = RMSNorm(c.hidden_size, 1e-6)
        self.mlp = nn.Sequential(
            Linear(self.hidden_size, self.hidden_size), nn.GELU(), Linear(self.hidden_size, c.out_hidden_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.hidden_size))


class VisionTower(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.patch_embed = PatchEmbed(c)
        self.blocks = nn.ModuleList(VisionBlock(c) for _ in range(c.depth))
        self.merger = PatchMerger(c)


class Core(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.language_model = TextModel(config.text_config)
        self.visual = VisionTower(config.vision_config)
        self.get_rope_index = rope_index.for_config(config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens


class NativeModel(nn.Module):
    """The tree: `model.language_model`, `model.visual`, `lm_head`, as transformers names them."""

    def __init__(self, config: Config, generation_config: Config):
        super().__init__()
        self.config = config
        self.generation_config = generation_config
        self.model = Core(config)
        self.lm_head = Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device


def sdpa_attention(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None, **_unused):
    """The prompt loop's attention as transformers' SDPA function runs it: causal over a whole
    prompt (no mask), or as `attention_mask` (True: attend) says for tokens after kept ones;
    grouped key/value heads. Returns ([batch, length, heads, head_dim], None)."""
    grouped = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    causal = attention_mask is None and query.shape[2] > 1
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=causal, **grouped
    )
    return out.transpose(1, 2).contiguous(), None


def use_psa(model: NativeModel) -> None:
    """The prompt's attention through PSA wherever a request sets it (`qvl.psa.psa_request`),
    SDPA for everything else, as transformers' "qvl_psa" implementation runs it."""
    import functools

    from qvl.psa import ATTENTION_NAME, psa_attention_forward

    text = model.model.language_model
    text.attention_function = functools.partial(psa_attention_forward, fallback=sdpa_attention)
    text.config._attn_implementation = ATTENTION_NAME


def build(
    folder: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype, config: Config | None = None
) -> NativeModel:
    """The model of `folder` (its config.json, or `config` read from it already) holding `tensors`
    (a checkpoint's, by its names; each used as it is where its dtype is `dtype`, without a copy)."""
    config = config or read_config(folder)
    with torch.device("meta"):
        model = NativeModel(config, read_generation_config(folder))
    state = {_tree_name(name): tensor.to(dtype) for name, tensor in tensors.items()}
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.language_model.embed_tokens.weight"])
    model.load_state_dict(state, strict=True, assign=True)
    return _ready(model)


@torch.no_grad()
def random_model(
    config: Config, generation_config: Config, device: str, dtype: torch.dtype, *, std: float = 0.02, seed: int = 0
) -> NativeModel:
    """The tree with random weights made on `device` in `dtype`, drawn as transformers draws an
    untrained Qwen2.5-VL's: normal(0, std) products, convolutions and embeddings, zero biases,
    unit norms. Same shapes, so the same speed, as the published model of `config`."""
    with torch.device("meta"):
        model = NativeModel(config, generation_config)
    model.to(dtype).to_empty(device=device)  # on the meta device first: no float32 copy on the way
    generator = torch.Generator(device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, (nn.Linear, nn.Conv3d, nn.Embedding)):
            module.weight.normal_(0.0, std, generator=generator)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return _ready(model)


def _ready(model: NativeModel) -> NativeModel:
    """`model` for inference, with the text rotary's frequencies (no checkpoint holds them)."""
    frequencies = inverse_frequencies(model.config.text_config).to(model.device)
    model.model.language_model.rotary_emb.inv_freq = frequencies
    return model.eval().requires_grad_(False)


def _tree_name(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name
