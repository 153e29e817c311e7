"""The mRoPE positions of a prompt with images and videos, as Qwen2.5-VL was trained with them.

Each text token takes the next position on all three axes; an image's or video's tokens take
(time, row, column) positions from where the text before them stopped: time advances by
`tokens_per_second` x seconds per temporal patch (`second_per_grid_ts`), rows and columns by one
per merged patch. The text after a media item starts one past the largest position the item took
on any axis. That is the published model's code (Qwen's own release in transformers 4.49-5.2,
vLLM, PaddleNLP). transformers 5.3 and later start that text one past the item's largest row or
column instead, so that after a video whose time runs further than its rows (64 frames at 2 fps:
62 against 16) the question sits at positions inside the video's time span. The engine puts this
function in the model's place (`install`), so the stock path and the fast path both use it.
"""

from __future__ import annotations

import functools
from itertools import groupby

import torch


def rope_index(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
    tokens_per_second: float,
    **_unused,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_ids [3, batch, length], deltas [batch, 1]) for `input_ids` [batch, length]: a
    padded slot (attention_mask 0) gets position 1, and delta is what a token after the prompt
    adds to its index to get its position (the largest position + 1 - the unpadded length)."""
    batch, length = input_ids.shape
    positions = torch.ones(3, batch, length, dtype=input_ids.dtype, device=input_ids.device)
    grids = {
        image_token_id: iter([] if image_grid_thw is None else image_grid_thw.tolist()),
        video_token_id: iter([] if video_grid_thw is None else video_grid_thw.tolist()),
    }
    seconds = iter([] if second_per_grid_ts is None else second_per_grid_ts.tolist())
    deltas = []
    for row in range(batch):
        kept = (
            attention_mask[row].bool()
            if attention_mask is not None
            else torch.ones_like(input_ids[row], dtype=torch.bool)
        )
        ids = input_ids[row][kept].tolist()
        parts, start = [], 0
        for token, run in groupby(ids, key=lambda t: t if t in grids else None):
            count = len(list(run))
            if token is None:  # text: one position per token on every axis
                part = torch.arange(count).expand(3, -1) + start
            else:
                t, h, w = next(grids[token])
                step = tokens_per_second * next(seconds, 1.0) if token == video_token_id else 0.0
                part = _media_positions(t, h // spatial_merge_size, w // spatial_merge_size, step) + start
                if part.shape[1] != count:
                    raise ValueError(f"{count} media tokens where the grid {t}x{h}x{w} makes {part.shape[1]}")
            parts.append(part)
            start = int(part.max()) + 1
        placed = torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)
        positions[:, row, kept] = placed.to(positions)
        deltas.append(start - len(ids))
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def _media_positions(t: int, h: int, w: int, step: float) -> torch.Tensor:
    """[3, t*h*w] (time, row, column) of an item's tokens, from 0: time is the temporal patch's
    index times `step`, rounded down after the product."""
    time = (torch.arange(t).view(-1, 1).expand(-1, h * w) * step).long().flatten()
    rows = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()
    cols = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()
    return torch.stack([time, rows, cols])


def for_config(config):
    """`rope_index` with the token ids and sizes of a Qwen2.5-VL `config` bound: what a model's
    `get_rope_index` takes."""
    return functools.partial(
        rope_index,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        spatial_merge_size=config.vision_config.spatial_merge_size,
        tokens_per_second=config.vision_config.tokens_per_second,
    )


def install(model) -> None:
    """Give `model` (a Qwen2.5-VL model of transformers) these positions in place of its own
    `get_rope_index`, for its generate and for qvl's fast path alike."""
    model.model.get_rope_index = for_config(model.config)
