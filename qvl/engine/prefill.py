"""The prompt's forward pass for the fast path: our vision tower, the model's rope index, our
loop over the language model's layers, and the logits of the last position only.

This is what `model.generate` does before its first token, split into parts we can time and keep:
the media features come from `vision.run_tower` instead of the stock tower, and the language model
(`language.run_language_model`; the model's own forward where that loop does not apply, and for a
question's tokens on top of a kept cache) writes its keys and values into the cache that
`decode.StaticDecoder` takes over. The mRoPE positions come from the model's `get_rope_index`,
the same function its `generate` calls: the published positions that `rope_index.install` put
there (with the inputs its signature names), so they are the stock path's positions.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch

from qvl.engine import language
from qvl.engine.vision import TowerPlan, plan_tower, run_tower

# Processor outputs that get_rope_index may take, by the names transformers uses.
_ROPE_INPUTS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids", "attention_mask")
# A prompt's media: its pixels, their grid, and the token that stands for them, by kind.
_MEDIA = (
    ("pixel_values", "image_grid_thw", "image_token_id"),
    ("pixel_values_videos", "video_grid_thw", "video_token_id"),
)
# The key under which inputs made ahead of time carry their `PromptPlan` (never passed to the model).
PROMPT_PLAN = "qvl_prompt_plan"


@dataclass(frozen=True)
class PromptPlan:
    """What a prompt's prefill needs besides its tensors, from its token ids and media grids: the
    mRoPE positions and the towers' plans. Made on the CPU with the inputs (`plan_prompt`, in a
    thread that prepares requests ahead), it spares the thread driving the GPU that host work and
    the synchronisations of reading GPU ids back, between the kernels of one request and the
    next."""

    position_ids: torch.Tensor  # [3, 1, length]
    rope_delta: int  # decode positions are text positions + rope_delta
    text_delta: int  # text appended to this prompt sits at cache slot + text_delta on every axis
    max_position: int  # the largest mRoPE position of the prompt, on any axis
    towers: dict[str, TowerPlan]  # by pixel key


def plan_prompt(model, inputs) -> PromptPlan:
    """The `PromptPlan` of `inputs` (the processor's outputs, on any device; the CPU spares the GPU)."""
    core = model.model
    ids = inputs["input_ids"]
    rope_kwargs = {k: inputs[k] for k in _rope_parameters(core) if inputs.get(k) is not None}
    position_ids, rope_deltas = core.get_rope_index(ids, **rope_kwargs)
    towers = {
        pixels: plan_tower(inputs[grid], core.visual.config)
        for pixels, grid, _ in _MEDIA
        if inputs.get(pixels) is not None
    }
    # Text after the prompt continues from its last token's position, which a video's temporal
    # axis can exceed: the model's rope delta (from the largest position) is for decoding right after.
    return PromptPlan(
        position_ids=position_ids,
        rope_delta=int(rope_deltas.flatten()[0]),
        text_delta=int(position_ids[0, 0, -1]) + 1 - ids.shape[1],
        max_position=int(position_ids.max()),
        towers=towers,
    )


@dataclass
class Prefilled:
    logits: torch.Tensor  # [vocab] fp32, for the first generated token
    rope_delta: int  # decode positions are text positions + rope_delta
    vision_s: float  # wall time of the vision tower (synchronised)
    text_delta: int = 0  # text appended to this prompt sits at cache slot + text_delta on every mRoPE axis
    max_position: int = 0  # the largest mRoPE position of the prompt, on any axis


@torch.inference_mode()
def prefill(model, inputs, make_decoder) -> Prefilled:
    """The prompt's forward pass; the language model's keys and values go into the cache of the
    `decode.StaticDecoder` that `make_decoder()` returns, called once the vision tower is done (so
    its activations and the cache are never held at once). Inputs made ahead carry their
    `PromptPlan` (`PROMPT_PLAN`); others are planned here, from their ids on the model's device."""
    core = model.model
    ids = inputs["input_ids"]
    plan = inputs.get(PROMPT_PLAN) or plan_prompt(model, inputs)
    sync = ids.device.type == "cuda"
    started = time.perf_counter()
    embeds = core.get_input_embeddings()(ids)
    for pixels_key, grid_key, token_key in _MEDIA:
        if inputs.get(pixels_key) is None:
            continue
        features = run_tower(core.visual, inputs[pixels_key], inputs[grid_key], plan.towers[pixels_key])
        mask = (ids == getattr(model.config, token_key)).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, features.to(embeds.dtype))
    if sync:
        torch.cuda.synchronize()
    vision_s = time.perf_counter() - started
    position_ids = plan.position_ids.to(ids.device)
    decoder = make_decoder()
    if language.supported(model):
        hidden = language.run_language_model(model, embeds, position_ids, decoder.keys, decoder.values)
        logits = model.lm_head(hidden)[-1].float()
    else:
        logits = _last_logits(model, embeds, position_ids, decoder.prefill_cache())
    return Prefilled(
        logits=logits,
        rope_delta=plan.rope_delta,
        vision_s=vision_s,
        text_delta=plan.text_delta,
        max_position=plan.max_position,
    )


@torch.inference_mode()
def prefill_text(model, ids: torch.Tensor, offset: int, rope_delta: int, decoder) -> torch.Tensor:
    """Text tokens `ids` ([1, n]) after `offset` tokens already in `decoder`'s cache, their keys
    and values written after them: positions offset .. offset + n - 1 plus `rope_delta` on every
    mRoPE axis, as text after media has. Returns the last position's logits [vocab] in fp32."""
    embeds = model.model.get_input_embeddings()(ids)
    positions = torch.arange(offset, offset + ids.shape[1], device=ids.device) + rope_delta
    positions = positions.view(1, 1, -1).expand(3, 1, -1)
    if getattr(model.model.language_model, "attention_function", None) is not None:  # qvl's own tree
        hidden = language.run_language_model(model, embeds, positions, decoder.keys, decoder.values, offset)
        return model.lm_head(hidden)[-1].float()
    return _last_logits(model, embeds, positions, decoder.prefill_cache(offset))


def _last_logits(model, embeds, position_ids, cache) -> torch.Tensor:
    """The language model over `embeds` (keys and values into `cache`); the last position's logits
    [vocab] in fp32, the only ones computed."""
    text = model.model.language_model
    out = text(inputs_embeds=embeds, position_ids=position_ids, use_cache=True, **{_cache_keyword(text): cache})
    return model.lm_head(out.last_hidden_state[:, -1])[0].float()


def _cache_keyword(text_model) -> str:
    """The name the language model's forward takes its cache by (`cache` from transformers 5.2x)."""
    names = inspect.signature(text_model.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def _rope_parameters(core) -> tuple[str, ...]:
    names = inspect.signature(core.get_rope_index).parameters
    return tuple(k for k in _ROPE_INPUTS if k in names)
