"""What PSA does to one prompt, layer by layer, and what it costs in accuracy (`qvl psa-profile`).

One loaded engine (built with `psa=`) prefills the same inputs with PSA and with SDPA (outside a
PSA request its attention is SDPA). Four measurements:

- whole prefills, each kind `repeat` times after a warm-up (medians);
- one probed PSA prefill: around every layer's attention call a `LayerProbe` times PSA, then runs
  SDPA on the *same* q, k, v (timed too) and takes the relative RMSE of PSA's output against it.
  Both attentions run inside one prefill, so every layer is compared on the input PSA's own
  earlier layers produced: the error is that layer's, not the sum of those before it. The probe
  syncs the device around each call, which is why it has a prefill of its own;
- greedy answers of `tokens` tokens both ways (time to first token, the tokens, where they part).

The level masks of chosen layers and heads are kept for pictures (`qvl.psa_plots`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from qvl.errors import OptionError

LAYER_NAMES = ("first", "middle", "last")


@dataclass(frozen=True)
class ProfileOptions:
    """What `profile_prefill` measures and keeps.

    repeat: 3 timed prefills of each kind (median). tokens: 16 greedy tokens generated each way.
    layers: the layers whose level masks are kept, as indices or "first"/"middle"/"last" (default:
    those three). heads: (0,), the query heads whose masks are kept.
    """

    repeat: int = 3
    tokens: int = 16
    layers: tuple = LAYER_NAMES
    heads: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        for name, value in (("--repeat", self.repeat), ("--tokens", self.tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} must be a whole number >= 1, not {value}")
        if not self.layers:
            raise OptionError("--layers needs at least one layer")
        if not self.heads:
            raise OptionError("--heads needs at least one head")

    @classmethod
    def parse(cls, *, repeat: int = 3, tokens: int = 16, layers: str = "first,middle,last", heads: str = "0"):
        """From the command line's text: `layers` "0,last" (indices or first/middle/last), `heads`
        "0,3"; an impossible value raises `OptionError` (before any model loads)."""
        return cls(repeat=repeat, tokens=tokens, layers=_parse_layers(layers), heads=_parse_indices("--heads", heads))

    def layer_indices(self, count: int) -> list[int]:
        """The chosen layers of a model with `count` layers, in order; OptionError if out of range."""
        named = {"first": 0, "middle": count // 2, "last": count - 1}
        chosen = sorted({named[x] if isinstance(x, str) else x for x in self.layers})
        if chosen[-1] >= count:
            raise OptionError(f"--layers: this model has layers 0..{count - 1}, not {chosen[-1]}")
        return chosen

    def check_heads(self, count: int) -> list[int]:
        chosen = sorted(set(self.heads))
        if chosen[-1] >= count:
            raise OptionError(f"--heads: this model has query heads 0..{count - 1}, not {chosen[-1]}")
        return chosen

    def check_model(self, spec: str | None) -> None:
        """`layer_indices` and `check_heads` against the model `spec` names, where its shape is
        known before it loads (`text_shape`); elsewhere the loaded model is checked."""
        shape = text_shape(spec)
        if shape is not None:
            self.layer_indices(shape[0])
            self.check_heads(shape[1])


def text_shape(spec: str | None) -> tuple[int, int] | None:
    """(layers, query heads) of the language model `spec` names, read without loading, building or
    fetching it: tiny's and the presets' published shapes, else a local folder's or a downloaded
    model's config.json. None where only the load can tell (a model not downloaded, an unreadable
    config.json, a spec that is no model: the load reports that)."""
    import json

    from qvl.architectures import ARCHITECTURES
    from qvl.errors import QvlError
    from qvl.models import RANDOM_PREFIX, TINY_SENTINEL, default_model_spec, preset_for, resolve_model

    spec = (spec or default_model_spec()).strip()
    low = spec.lower()
    name = low.removeprefix(RANDOM_PREFIX)  # random:7b has 7b's shape
    preset = name if name in ARCHITECTURES else preset_for(spec)
    if low in ("tiny", TINY_SENTINEL):
        from qvl.tiny import TEXT_CONFIG as text
    elif preset in ARCHITECTURES:
        text = ARCHITECTURES[preset]["text"]
    else:
        try:
            config = json.loads((resolve_model(spec, allow_download=False).path / "config.json").read_text())
            text = config.get("text_config") or config  # older config.json files keep it at the top
        except (QvlError, OSError, ValueError, AttributeError):
            return None
    try:
        return int(text["num_hidden_layers"]), int(text["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None


def _parse_layers(text: str) -> tuple:
    items = []
    for part in _parts("--layers", text):
        if part.lower() in LAYER_NAMES:
            items.append(part.lower())
        else:
            items.append(_index("--layers", part, "a layer index >= 0 or first, middle, last"))
    return tuple(items)


def _parse_indices(flag: str, text: str) -> tuple[int, ...]:
    return tuple(_index(flag, part, "a head index >= 0") for part in _parts(flag, text))


def _parts(flag: str, text: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts) or not all(parts):
        raise OptionError(f"{flag} takes comma-separated values, not {text!r}")
    return parts


def _index(flag: str, part: str, what: str) -> int:
    if not part.isdigit():
        raise OptionError(f"{flag}: {part!r} is not {what}")
    return int(part)


@dataclass
class LayerProbe:
    """Sees every attention call of one prefill (through `qvl.psa.psa_request(probe=...)`).

    For each call: the wall time of the call as it ran (PSA, or SDPA where PSA did not run), the
    wall time of SDPA on the same q, k, v, PSA's density and level shares, the relative RMSE of
    its output against SDPA's, and for `keep` {layer: heads} the level masks of head 0's batch row.
    """

    keep: dict[int, list[int]]
    device: Any = None  # the model's torch.device: CUDA calls are synced before they are timed
    rows: list[dict] = field(default_factory=list)
    masks: list[dict] = field(default_factory=list)

    def start(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def finish(self, started, module, query, key, value, attention_mask, out, layer_stats, **kwargs) -> None:
        import torch
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _sync(self.device)
        ran_ms = (time.perf_counter() - started) * 1000
        layer = getattr(module, "layer_idx", len(self.rows))
        if layer_stats is None:  # SDPA ran: it is its own reference
            self.rows.append({"layer": layer, "psa": False, "sdpa_ms": ran_ms})
            return
        started = self.start()
        dense, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        _sync(self.device)
        sdpa_ms = (time.perf_counter() - started) * 1000
        error = (out.float() - dense.float()).norm() / dense.float().norm().clamp_min(torch.finfo(torch.float32).tiny)
        from qvl_kernels.level_mask import LEVELS

        shares = layer_stats["level_fraction"].float().mean(dim=(0, 1)).cpu()
        self.rows.append(
            {
                "layer": layer,
                "psa": True,
                "density": round(float(layer_stats["density"].float().mean()), 4),
                "level_fraction": {str(level): round(float(v), 4) for level, v in zip(LEVELS, shares)},
                "psa_ms": ran_ms,
                "sdpa_ms": sdpa_ms,
                "rel_error": float(error),
            }
        )
        levels = layer_stats["levels"]
        for head in self.keep.get(layer, ()):
            self.masks.append({"layer": layer, "head": head, "levels": levels[0, head].to(torch.int8).cpu().numpy()})


def _sync(device) -> None:
    import torch

    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_prefill(engine, request, options: ProfileOptions | None = None) -> tuple[dict, list[dict]]:
    """Profile PSA on `request` (prompt and media; its generation settings are ignored).

    The engine must have been built with `psa=`. Returns (report, masks): the report is JSON-ready
    (see docs/psa.md, "Profiling PSA"); masks are {"layer", "head", "levels": [nb, nb] int8 numpy
    array in {0, 1, 2, 4, 8}, 0 also above the diagonal} for the chosen layers and heads.
    """
    import dataclasses

    import torch

    from qvl.psa import PSAStats, psa_request

    options = options or ProfileOptions()
    text_config = engine.model.config.get_text_config()
    layer_count, head_count = text_config.num_hidden_layers, text_config.num_attention_heads
    keep = {layer: options.check_heads(head_count) for layer in options.layer_indices(layer_count)}
    inputs = engine.prepare(request)
    config, text_length = engine.psa, engine.text_length(inputs["input_ids"])

    def prefill(with_psa: bool, probe: LayerProbe | None = None) -> tuple[float, PSAStats]:
        stats = PSAStats()
        _sync(engine.model.device)
        started = time.perf_counter()
        with torch.inference_mode():
            if with_psa:
                with psa_request(config, text_length, stats, probe):
                    engine.model(**inputs)
            else:
                engine.model(**inputs)
        _sync(engine.model.device)
        return (time.perf_counter() - started) * 1000, stats

    prefill(True), prefill(False)  # warm-up: kernel compilation, allocator
    probe = LayerProbe(keep, engine.model.device)
    _, probed = prefill(True, probe)
    psa_ms = [prefill(True)[0] for _ in range(options.repeat)]
    sdpa_ms = [prefill(False)[0] for _ in range(options.repeat)]

    greedy = dataclasses.replace(request, max_new_tokens=options.tokens, temperature=0.0, top_p=None, seed=None)
    answers = {kind: engine.generate(greedy, psa=kind == "psa") for kind in ("psa", "sdpa")}
    psa_tokens, sdpa_tokens = answers["psa"].tokens, answers["sdpa"].tokens

    psa_median, sdpa_median = statistics.median(psa_ms), statistics.median(sdpa_ms)
    per_layer = [_layer_row(row) for row in probe.rows]
    errors = [row["rel_error"] for row in per_layer if row["rel_error"] is not None]
    report = {
        "tokens": int(inputs["input_ids"].shape[1]),
        "text_tokens": text_length,
        "min_tokens": config.min_tokens,
        "layers": layer_count,
        "prefill_ms": {"psa": round(psa_median, 3), "sdpa": round(sdpa_median, 3)},
        "speedup": round(sdpa_median / psa_median, 3) if psa_median > 0 else None,
        "ttft_ms": {kind: round(answer.timings.prefill_s * 1000, 3) for kind, answer in answers.items()},
        "psa": probed.summary(),
        "fidelity": {
            "max_rel_error": _significant(max(errors)) if errors else None,
            "mean_rel_error": _significant(statistics.fmean(errors)) if errors else None,
        },
        "generated": {
            "psa": psa_tokens,
            "sdpa": sdpa_tokens,
            "first_difference": first_difference(psa_tokens, sdpa_tokens),
            "psa_text": answers["psa"].text,
            "sdpa_text": answers["sdpa"].text,
        },
        "per_layer": per_layer,
    }
    return report, probe.masks


def _layer_row(row: dict) -> dict[str, Any]:
    """One layer of the report: null density, shares and error where PSA did not run."""
    ran = row["psa"]
    return {
        "layer": row["layer"],
        "density": row["density"] if ran else None,
        "level_fraction": row["level_fraction"] if ran else None,
        "attention_ms": {"psa": round(row["psa_ms"], 3) if ran else None, "sdpa": round(row["sdpa_ms"], 3)},
        "rel_error": _significant(row["rel_error"]) if ran else None,
    }


def _significant(x: float) -> float:
    return float(f"{x:.4g}")


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The index of the first token where `a` and `b` differ (a shorter one differs where it ends),
    or None when they are the same."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def profile_media(settings, prompt: str, media, options=None, *, on_loaded=None) -> tuple[Any, dict, list]:
    """(engine, report, level masks) of `profile_prefill(options)` on a `qvl.runner.Media` and
    `prompt`, the engine loaded from `settings` (`settings.psa` set); `on_loaded(engine)` runs
    before anything is measured."""
    from qvl.engine import Request
    from qvl.runner import load_engine

    engine = load_engine(settings, native=False)  # the profile runs transformers' forward
    if on_loaded is not None:
        on_loaded(engine)
    return (engine, *profile_prefill(engine, Request(prompt, images=media.images, video=media.video), options))
