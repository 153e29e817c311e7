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
import math
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from qvl.errors import OptionError
from qvl.paths import read_file_bytes

ATTENTION_NAME = "qvl_psa"

# The published example's name of each setting -> the kernels' (qvl_kernels.psa.PSAConfig).
_KERNEL_NAMES = {
    "block": "block",
    "xattn_stride": "stride",
    "importance_method": "method",
    "mask_mode": "mode",
    "mask_ratios": "ratios",
    "use_similarity_cap": "similarity_cap",
    "similarity_thresholds": "thresholds",
    "importance_fp8": "importance_fp8",
}
IMPORTANCE_METHODS = ("xattn", "pooling")


@dataclass
class AttentionConfig:
    """PSA settings under the published example's names (see qvl_kernels.psa.PSAConfig for the kernels').

    mask_mode: "energybound" or "topk"; mask_ratios: {level: (start, end)} bands that tile [0, 1],
    levels in {0, 1, 2, 4, 8} (the published default when None); importance_method: "xattn" or
    "pooling"; xattn_stride: 8 (a power of two <= block); causal_main: True (PSA here is always
    causal); block: 128 tokens (a power of two >= 16); use_similarity_cap: True;
    similarity_thresholds: (0.75, 0.70, 0.70), the key similarity a block needs for levels 2, 4, 8;
    importance_fp8: None (auto: fp8 estimate on Hopper from 32K tokens), True or False;
    min_tokens: 16384, prompts shorter than this use SDPA: measured end to end on an H100 (random 7B,
    fast vision tower), PSA's time to first token is at best even with dense at 8K tokens and ahead
    from 32K (docs/benchmarks.md).

    A bad value raises `OptionError` naming the field and what it may be. `from_file` and
    `from_dict` read the same fields, plus `preset` to start from.
    """

    mask_mode: str = "energybound"
    mask_ratios: dict | None = None
    importance_method: str = "xattn"
    xattn_stride: int = 8
    causal_main: bool = True
    block: int = 128
    use_similarity_cap: bool = True
    similarity_thresholds: tuple = (0.75, 0.70, 0.70)
    importance_fp8: bool | None = None
    min_tokens: int = 16384
    preset_name: str = field(default="custom", repr=False, compare=False)  # the preset's or the config file's name

    def __post_init__(self) -> None:
        from qvl_kernels.level_mask.naive import MODES

        self.mask_mode = _choice("mask_mode", self.mask_mode, MODES)
        self.importance_method = _choice("importance_method", self.importance_method, IMPORTANCE_METHODS)
        if self.mask_ratios is not None:
            self.mask_ratios = _bands(self.mask_ratios)
        if not _whole(self.block) or self.block < 16 or self.block & (self.block - 1):
            raise OptionError(f"block must be a power of two >= 16 (16, 32, 64, 128, ...), not {self.block!r}")
        if not _whole(self.xattn_stride) or self.xattn_stride < 1 or self.xattn_stride & (self.xattn_stride - 1):
            raise OptionError(f"xattn_stride must be a power of two (1, 2, 4, 8, ...), not {self.xattn_stride!r}")
        if self.xattn_stride > self.block:
            raise OptionError(f"xattn_stride must be at most block ({self.block}), not {self.xattn_stride}")
        for name in ("causal_main", "use_similarity_cap"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if not self.causal_main:
            raise OptionError("causal_main must be true: qvl runs PSA only in the causal language model")
        self.similarity_thresholds = _thresholds(self.similarity_thresholds)
        if self.importance_fp8 is not None and not isinstance(self.importance_fp8, bool):
            raise OptionError(f"importance_fp8 must be true, false or null (auto), not {self.importance_fp8!r}")
        if self.importance_fp8 and self.importance_method != "xattn":
            raise OptionError("importance_fp8 = true needs importance_method 'xattn'")
        if not _whole(self.min_tokens) or self.min_tokens < 0:
            raise OptionError(f"min_tokens must be a whole number >= 0, not {self.min_tokens!r}")
        # The kernels' own checks too, now rather than in the middle of a prefill.
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
            raise OptionError(f"unknown PSA preset {name!r}; choose one of {', '.join(PRESETS)}")
        kernel = PRESETS[name]
        seed = {ours: _copy(kernel[theirs]) for ours, theirs in _KERNEL_NAMES.items() if theirs in kernel}
        return cls(**{**seed, **overrides, "preset_name": name})

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "PSA config") -> "AttentionConfig":
        """A config from a mapping of the constructor's field names, plus `preset` (default
        "default") to start from; the other fields override the preset's.

        mask_ratios keys may be integers or strings ("1"), as JSON and TOML write them. A bad field
        raises `OptionError` with one line, "<source>: <field> ...", naming what is allowed.
        """
        if not isinstance(data, Mapping):
            raise OptionError(f"{source}: must be a table of settings, not {type(data).__name__}")
        unknown = [str(key) for key in data if key not in CONFIG_FIELDS]
        if unknown:
            raise OptionError(
                f"{source}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(CONFIG_FIELDS)}"
            )
        settings = dict(data)
        name = settings.pop("preset", "default")
        try:
            if not isinstance(name, str):
                raise OptionError(f"preset must be a string, not {name!r}")
            from qvl_kernels.psa import PRESETS

            if name not in PRESETS:
                raise OptionError(f"preset must be one of {', '.join(PRESETS)}, not {name!r}")
            return cls.preset(name, **settings)
        except OptionError as exc:
            raise OptionError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "AttentionConfig":
        """A config from a JSON (.json) or TOML (.toml) file of `from_dict`'s fields.

        A missing or unreadable file, a parse error (with its line) and a bad field each raise
        `OptionError` with one line naming the file.
        """
        source = f"PSA config {path}"
        config = cls.from_dict(read_config_file(path, source), source=source)
        config.preset_name = Path(path).name  # what logs and records call this configuration
        return config

    def kernel_config(self, text_length: int):
        """The kernels' PSAConfig for a prompt whose last `text_length` tokens are text."""
        from qvl_kernels.psa import PSAConfig

        if not self.causal_main:
            raise ValueError("causal_main=False: qvl runs PSA only in the causal language model")
        settings = {theirs: _copy(getattr(self, ours)) for ours, theirs in _KERNEL_NAMES.items()}
        if settings["ratios"] is None:
            del settings["ratios"]  # PSAConfig's default: the published bands
        return PSAConfig(**settings, text_length=text_length, causal=True)


# The fields a config file or `from_dict` may set, in the order errors list them.
CONFIG_FIELDS = ("preset", *(f.name for f in fields(AttentionConfig) if f.name != "preset_name"))


def read_config_file(path: str | Path, source: str | None = None) -> dict:
    """The settings table of a .json or .toml file (`OptionError` with one line if it has none)."""
    path = Path(path)
    source = source or f"PSA config {path}"
    kind = path.suffix.lower()
    if kind not in (".json", ".toml"):
        raise OptionError(f"{source}: must be a .json or .toml file")
    try:
        text = read_file_bytes(path, source, OptionError).decode("utf-8")
    except UnicodeDecodeError:
        raise OptionError(f"{source}: is not UTF-8 text") from None
    if kind == ".json":
        import json

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionError(f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise OptionError(f"{source}: reading TOML on Python 3.10 needs tomli (pip install tomli)") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
            raise OptionError(f"{source}: not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise OptionError(f"{source}: must hold one table (JSON object) of settings, not {type(data).__name__}")
    return data


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(name: str, value, allowed: tuple) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise OptionError(f"{name} must be {' or '.join(map(repr, allowed))}, not {value!r}")
    return value.lower()


def _bands(ratios) -> dict:
    """{level: (start, end)} with integer levels in LEVELS and bands tiling [0, 1] in order."""
    from qvl_kernels.level_mask import LEVELS

    if not isinstance(ratios, Mapping) or not ratios:
        raise OptionError(
            f"mask_ratios must be a table {{level: [start, end]}} of levels 0, 1, 2, 4, 8, not {ratios!r}"
        )
    bands = {}
    for key, band in ratios.items():
        level = int(key) if isinstance(key, str) and key.strip().isdigit() else key
        if not _whole(level) or level not in LEVELS:
            raise OptionError(f"mask_ratios: level {key!r} is not one of {', '.join(map(str, LEVELS))}")
        if level in bands:
            raise OptionError(f"mask_ratios: level {level} is given twice")
        if isinstance(band, (str, bytes)) or not hasattr(band, "__len__") or len(band) != 2:
            raise OptionError(f"mask_ratios: level {level} needs a band [start, end] of two numbers, not {band!r}")
        start, end = band
        if not (_number(start) and _number(end) and 0 <= start <= end <= 1):
            raise OptionError(f"mask_ratios: level {level}'s band {list(band)} needs numbers 0 <= start <= end <= 1")
        bands[level] = (float(start), float(end))
    # The bands must cover every rank (topk) or energy share (energybound) exactly once: a gap would
    # silently skip blocks, an overlap would make a block's level depend on the order of the table.
    reach = 0.0
    for level, (start, end) in sorted(bands.items(), key=lambda item: item[1]):
        if not math.isclose(start, reach, abs_tol=1e-9):
            if reach == 0.0:
                raise OptionError(f"mask_ratios: the bands must tile [0, 1], but the first one starts at {start:g}")
            raise OptionError(
                f"mask_ratios: the bands must tile [0, 1] without gaps or overlaps, but level {level}'s band "
                f"starts at {start:g} where the one before it ends at {reach:g}"
            )
        reach = end
    if not math.isclose(reach, 1.0, abs_tol=1e-9):
        raise OptionError(f"mask_ratios: the bands must tile [0, 1], but the last one ends at {reach:g}")
    return bands


def _thresholds(values) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 3:
        raise OptionError(f"similarity_thresholds must be 3 numbers (levels 2, 4, 8), not {values!r}")
    if not all(_number(v) and -1 <= v <= 1 for v in values):
        raise OptionError(f"similarity_thresholds must be cosine similarities in [-1, 1], not {list(values)!r}")
    return tuple(float(v) for v in values)


def _copy(value):
    return dict(value) if isinstance(value, dict) else value


class PSAStats:
    """Per-layer PSA statistics of one prefill, kept as device tensors until read (one sync)."""

    def __init__(self):
        self.layers: list[tuple[int, Any, Any]] = []  # (layer index, density [B, HQ], level fraction [B, HQ, 5])
        self.tokens = 0
        self._read: tuple | None = None

    def add(self, layer: int, stats: dict) -> None:
        self.layers.append((layer, stats["density"], stats["level_fraction"]))
        self._read = None

    def _host(self):
        """(density per layer [N], level shares per layer [N, 5]) on the host, averaged over heads."""
        if self._read is None:
            import torch

            density = torch.stack([d.float().mean() for _, d, _ in self.layers])
            fractions = torch.stack([f.float().mean(dim=(0, 1)) for _, _, f in self.layers])
            self._read = (density.cpu(), fractions.cpu())  # the one copy to the host of the request
        return self._read

    def summary(self) -> dict | None:
        """Mean density (share of dense attention cost) over heads, per layer and overall."""
        if not self.layers:
            return None
        density, fractions = self._host()
        overall = float(density.mean())
        return {
            "tokens": self.tokens,
            "layers": len(self.layers),
            "density": round(overall, 4),
            "sparsity": round(1 - overall, 4),
            "level_fraction": _shares(fractions.mean(0)),
            "per_layer_density": [round(float(d), 4) for d in density],
        }

    def per_layer(self) -> list[dict]:
        """One row per layer that ran PSA: layer, density, sparsity, level_fraction (mean over heads)."""
        if not self.layers:
            return []
        density, fractions = self._host()
        return [
            {
                "layer": layer,
                "density": round(float(d), 4),
                "sparsity": round(1 - float(d), 4),
                "level_fraction": _shares(f),
            }
            for (layer, _, _), d, f in zip(self.layers, density, fractions)
        ]


def _shares(fractions) -> dict:
    from qvl_kernels.level_mask import LEVELS

    return {str(level): round(float(v), 4) for level, v in zip(LEVELS, fractions)}


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


def psa_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, *, fallback=None, **kwargs
):
    """An `AttentionInterface` function: PSA for long causal prefill, SDPA for everything else
    (`fallback`, an attention function of the same arguments: transformers' SDPA where None).

    query: [B, HQ, S, D]; key, value: [B, HKV, S_kv, D]. Returns (out [B, S, HQ, D], None).
    """
    state = getattr(_active, "state", None)
    probe = state.probe if state is not None else None
    attend = (fallback, module, query, key, value, attention_mask, dropout, scaling)
    if probe is None:
        return _attend(state, *attend, kwargs)[0]
    started = probe.start()
    out, layer_stats = _attend(state, *attend, kwargs)
    probe.finish(started, module, query, key, value, attention_mask, out[0], layer_stats, scaling=scaling, **kwargs)
    return out


def _attend(state, fallback, module, query, key, value, attention_mask, dropout, scaling, kwargs):
    """((out [B, S, HQ, D], None), PSA's layer statistics or None where SDPA ran)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    # Batch 1 with no padding is the only case qvl sends; a padded batch falls back to SDPA.
    usable = state is not None and q_len == kv_len and query.shape[0] == 1
    if not usable or q_len < state.min_tokens:
        if fallback is None:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward as fallback
        sdpa = fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
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
