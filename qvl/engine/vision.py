"""Qwen2.5-VL's vision tower with every attention window of a layer in one call per window size.

The stock tower (transformers' SDPA path) runs one attention call per window in a Python loop and
reads the window boundaries back from the GPU in every layer: 64 frames at 448x448 are 512 windows
per windowed layer, so the tower spends its time launching small kernels. Here the windows and
the per-frame sequences are planned once per request on the CPU from `grid_thw` (`plan_tower`);
sequences of equal length are attended as one batch (`[n, heads, length, head_dim]`), which for
the usual frame sizes is a single SDPA call per layer, with no host synchronisation inside the
tower. Everything else (norms, MLPs, the patch merger) is the model's own modules, so the weights
and their meaning stay transformers'; only the orchestration is ours.

The planning follows the published model: windows of `window_size` pixels over the merged grid,
padded windows dropped, full attention per temporal patch in `fullatt_block_indexes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from qvl.engine.fuse import fuse_padded_mlp, gated_mlp, norm
from qvl.engine.kernels import rotary_qk


@dataclass(frozen=True)
class SequenceGroup:
    """`count` sequences of `length` tokens each: a contiguous run from `start` (index None), or
    gathered through `index` ([count * length] token positions) where they are scattered."""

    count: int
    length: int
    start: int = 0
    index: torch.Tensor | None = None


@dataclass(frozen=True)
class TowerPlan:
    """What one request's tower needs besides the pixels, computed once on the CPU."""

    window_index: torch.Tensor  # [units]: merge units in window order (a unit = merge**2 patches)
    reverse_index: torch.Tensor  # [units]: back to the processor's order
    positions: torch.Tensor  # [patches, 2]: (row, column) of each patch, in window order
    window_groups: tuple[SequenceGroup, ...]
    frame_groups: tuple[SequenceGroup, ...]

    def to(self, device) -> TowerPlan:
        def move(groups):
            return tuple(
                SequenceGroup(g.count, g.length, g.start, None if g.index is None else g.index.to(device))
                for g in groups
            )

        return TowerPlan(
            self.window_index.to(device),
            self.reverse_index.to(device),
            self.positions.to(device),
            move(self.window_groups),
            move(self.frame_groups),
        )


def plan_tower(grid_thw, config) -> TowerPlan:
    """Window order, rotary positions and attention groups for `grid_thw` ([n, 3] t, h, w in patches)."""
    grid = [tuple(int(x) for x in row) for row in torch.as_tensor(grid_thw).cpu().tolist()]
    merge = config.spatial_merge_size
    unit = merge * merge
    window = config.window_size // merge // config.patch_size  # merged units per window side
    window_index, window_lengths, positions, frame_lengths = [], [], [], []
    offset = 0
    for t, h, w in grid:
        gh, gw = h // merge, w // merge
        index = torch.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h, pad_w = (-gh) % window, (-gw) % window
        padded = F.pad(index, (0, pad_w, 0, pad_h), value=-1)
        nh, nw = (gh + pad_h) // window, (gw + pad_w) // window
        padded = padded.reshape(t, nh, window, nw, window).permute(0, 1, 3, 2, 4).reshape(t, nh * nw, -1)
        lengths = (padded >= 0).sum(-1).flatten()
        window_lengths += [int(n) * unit for n in lengths if n > 0]
        window_index.append(padded.flatten()[padded.flatten() >= 0] + offset)
        offset += t * gh * gw
        frame_lengths += [h * w] * t
        rows = torch.arange(h).unsqueeze(1).expand(h, w)
        cols = torch.arange(w).unsqueeze(0).expand(h, w)
        pos = torch.stack([_merge_order(rows, merge), _merge_order(cols, merge)], dim=-1)
        positions.append(pos.repeat(t, 1))
    window_index = torch.cat(window_index)
    positions = torch.cat(positions).reshape(-1, unit, 2)[window_index].reshape(-1, 2)
    return TowerPlan(
        window_index=window_index,
        reverse_index=torch.argsort(window_index),
        positions=positions,
        window_groups=_groups(window_lengths),
        frame_groups=_groups(frame_lengths),
    )


def _merge_order(grid: torch.Tensor, merge: int) -> torch.Tensor:
    """A [h, w] map flattened so that each merge x merge square of patches is contiguous."""
    h, w = grid.shape
    return grid.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3).flatten()


def _groups(lengths: list[int]) -> tuple[SequenceGroup, ...]:
    """Consecutive sequences of `lengths` grouped by length; a group that is one contiguous run of
    equal sequences needs no gather."""
    starts, position = [], 0
    for n in lengths:
        starts.append(position)
        position += n
    by_length: dict[int, list[int]] = {}
    for start, n in zip(starts, lengths):
        by_length.setdefault(n, []).append(start)
    groups = []
    for n, group_starts in sorted(by_length.items()):
        first = group_starts[0]
        if group_starts == list(range(first, first + n * len(group_starts), n)):
            groups.append(SequenceGroup(len(group_starts), n, start=first))
        else:
            index = (torch.tensor(group_starts).unsqueeze(1) + torch.arange(n)).flatten()
            groups.append(SequenceGroup(len(group_starts), n, index=index))
    return tuple(groups)


# Flash attention first: cuDNN (torch's first choice on Hopper) builds an execution plan for every
# new shape, which a fresh process pays on its first request, and the tower's sequences are short.
_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]


def _attend(q, k, v, groups: tuple[SequenceGroup, ...], scale: float) -> torch.Tensor:
    """Attention within each sequence of `groups`; q, k, v and the result are [tokens, heads, dim]."""
    tokens, heads, dim = q.shape
    out = torch.empty_like(q) if len(groups) > 1 or groups[0].count * groups[0].length != tokens else None
    for g in groups:
        span = g.count * g.length
        if g.index is None:
            parts = [x[g.start : g.start + span] for x in (q, k, v)]
        else:
            parts = [x.index_select(0, g.index) for x in (q, k, v)]
        qg, kg, vg = (x.view(g.count, g.length, heads, dim).transpose(1, 2) for x in parts)
        o = F.scaled_dot_product_attention(qg, kg, vg, scale=scale)
        o = o.transpose(1, 2).reshape(span, heads, dim)
        if out is None:
            return o
        if g.index is None:
            out[g.start : g.start + span] = o
        else:
            out.index_copy_(0, g.index, o)
    return out


def _attention(qkv, cos, sin, plan: TowerPlan, full: bool, scale: float) -> torch.Tensor:
    """One layer's attention, [tokens, heads, dim], from its q/k/v projection [tokens, 3, heads, dim]:
    the rotary embedding on q and k in place, then attention within frames (`full`) or windows,
    with the attention backends `run_tower` chose.
    One Triton kernel doing both lost to flash attention on the frames and saved too little on
    the windows to keep (benchmarks/experiments/tower_attention.py, docs/benchmarks.md)."""
    q, k, v = qkv.unbind(1)
    rotary_qk(q, k, cos, sin, fp32_math=True, out=(q, k))  # the tower's fp32 rotary, in place
    return _attend(q, k, v, plan.frame_groups if full else plan.window_groups, scale)


def _rotary(positions: torch.Tensor, head_dim: int, theta: float = 10000.0):
    """cos, sin [patches, head_dim] in fp32: half the rotary dims follow the row, half the column."""
    dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    freqs = (positions.float().unsqueeze(-1) * inv_freq).flatten(1)  # [patches, dim]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


@torch.inference_mode()
def run_tower(visual, pixel_values: torch.Tensor, grid_thw, plan: TowerPlan | None = None) -> torch.Tensor:
    """The tower's output features [tokens, out_hidden] for `pixel_values` [patches, C*T*P*P],
    in the processor's token order: what `visual(pixel_values, grid_thw)` returns as its merged output."""
    config = visual.config
    device = pixel_values.device
    plan = (plan or plan_tower(grid_thw, config)).to(device)
    proj = visual.patch_embed.proj
    # The patch embedding is a Conv3d whose stride equals its kernel: one matrix product.
    x = F.linear(pixel_values.to(proj.weight.dtype), proj.weight.reshape(proj.weight.shape[0], -1), proj.bias)
    unit = config.spatial_merge_size**2
    tokens = x.shape[0]
    x = x.reshape(tokens // unit, unit, -1)[plan.window_index].reshape(tokens, -1)
    heads = config.num_heads
    head_dim = config.hidden_size // heads
    cos, sin = _rotary(plan.positions, head_dim)
    full_layers = set(config.fullatt_block_indexes)
    blocks = list(visual.blocks)
    # Each residual add is fused into the norm after it: norm(out, x) returns (normed, x + out).
    # The layers call F.linear rather than the modules and choose the attention backends once:
    # on a slow host, issuing the tower's launches takes about as long as running them.
    h = norm(blocks[0].norm1, x)
    with sdpa_kernel(_BACKENDS, set_priority=True):
        for layer, block in enumerate(blocks):
            attn = block.attn
            qkv = F.linear(h, attn.qkv.weight, attn.qkv.bias).view(tokens, 3, heads, head_dim)
            o = _attention(qkv, cos, sin, plan, layer in full_layers, attn.scaling)
            out = F.linear(o.reshape(tokens, -1), attn.proj.weight, attn.proj.bias)
            del qkv, o  # freed before the MLP, whose activations are the layer's peak
            h, x = norm(block.norm2, out, x)
            out = _mlp(block.mlp, h, silu=config.hidden_act == "silu")
            if layer + 1 < len(blocks):
                h, x = norm(blocks[layer + 1].norm1, out, x)
            else:
                x = x + out
    return visual.merger(x)[plan.reverse_index]


# Patches per MLP product: 64 frames (32,768 patches) in one, whose [patches, 2 x 3,456] gate/up
# activations (0.45 GB in bf16) are fewer bytes than the stock MLP's three [patches, 3,420]
# intermediates; longer videos in chunks of that many, so the activations stay bounded. Each
# chunk is three launches the host issues, 32 layers over.
MLP_CHUNK = 32768


def _mlp(mlp, h: torch.Tensor, silu: bool) -> torch.Tensor:
    """The block's gated MLP, gate and up as one matrix product of padded width, over chunks of
    patches (the module itself for another activation than the published SiLU)."""
    if not silu:
        return mlp(h)
    weight, bias, down = fuse_padded_mlp(mlp)
    return gated_mlp(h, weight, bias, down, mlp.down_proj.bias, MLP_CHUNK)
