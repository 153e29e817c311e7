"""Decoding several answers at once: their KV caches side by side, one step for all of them.

A decode step of one sequence reads every weight of the model to make one token, so on a GPU it is
bound by memory bandwidth, not by arithmetic: the same step over a few sequences takes about as
long and makes a token for each. `BatchDecoder` is `decode.StaticDecoder` with a row per sequence:
keys and values [layers, rows, kv_heads, capacity, head_dim], and token, position and rope delta
per row. Each row's prompt is prefilled on its own into its slot (`slot(row)`, which the prefill
takes as it takes a single decoder); the step then runs every row, each at its own position, its
attention over its own first `position + 1` slots (`decode_attention`'s per-row lengths), and is
captured as one CUDA graph for the batch. A row that has ended keeps stepping, unread, until all
have. A decoder is kept for later batches of as many rows or fewer (the rows past a batch's step
from the first slot, unread), so a job whose batches vary in size allocates its caches and
captures its graph once, not at every change. Greedy with the checkpoint's repetition penalty, as
the single decoder chooses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qvl.engine.decode import Sampling, StaticDecoder, _prefill_cache, choose


@dataclass
class Slot:
    """One row's cache, shaped as a single decoder's ([layers, kv_heads, capacity, head_dim]), for
    the prefill to write its prompt into."""

    keys: torch.Tensor
    values: torch.Tensor

    def prefill_cache(self, offset: int = 0):
        return _prefill_cache(self.keys, self.values, offset)


class BatchDecoder(StaticDecoder):
    """KV caches for `rows` sequences of up to `capacity` tokens and a greedy step over all of them."""

    def __init__(self, model, rows: int, capacity: int, repetition_penalty: float, use_graph: bool):
        self._bind(model, capacity, Sampling(repetition_penalty=repetition_penalty), use_graph)
        device, dtype = self.lm_head.weight.device, self.lm_head.weight.dtype
        self.rows = rows
        shape = (len(self.layers), rows, self.kv_heads, capacity, self.head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.token = torch.zeros(rows, dtype=torch.long, device=device)
        self.position = torch.zeros(rows, dtype=torch.long, device=device)
        self.rope_delta = torch.zeros(rows, dtype=torch.long, device=device)
        self.seen = torch.zeros(rows, self.lm_head.weight.shape[0], dtype=torch.bool, device=device)
        self.row_index = torch.arange(rows, device=device)

    def slot(self, row: int) -> Slot:
        return Slot(self.keys[:, row], self.values[:, row])

    def start_row(self, row: int, prompt_ids: torch.Tensor, first_token: int, rope_delta: int) -> None:
        """After the row's prompt went through `slot(row)`: its first generated token, at the slot
        after the prompt."""
        self.token[row] = first_token
        self.position[row] = prompt_ids.shape[-1]
        self.rope_delta[row] = rope_delta
        self.seen[row] = False
        if self.sampling.repetition_penalty != 1.0:
            self.seen[row, prompt_ids.flatten()] = True
            self.seen[row, first_token] = True

    def rest(self, first: int) -> None:
        """Rows from `first` on hold no sequence: they step from the first slot, where each writes
        and reads only its own keys and values, and their tokens are not read."""
        self.token[first:] = 0
        self.position[first:] = 0
        self.rope_delta[first:] = 0

    def _store(self, i: int, k: torch.Tensor, v: torch.Tensor):
        self.keys[i][self.row_index, :, self.position] = k  # each row's new token at its own slot
        self.values[i][self.row_index, :, self.position] = v
        return self.keys[i], self.values[i]

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)[0].float()  # [rows, vocab]

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        token = choose(logits, self.sampling, self.seen, self.temperature)  # [rows, 1]: greedy
        if self.sampling.repetition_penalty != 1.0:
            self.seen.scatter_(1, token, True)
        return token.squeeze(1)
