"""Decoding one token at a time from a static KV cache, replayed as one CUDA graph per token.

Stock `generate` launches some 1,500 small kernels per token for a 7B model and waits on the host
between them, so on a fast GPU it runs at a third of what the weights' bandwidth allows. Here the
language model's decoder step is our own short loop over the model's weights (gpt-fast style):
q/k/v and gate/up projections fused into one matrix product each, the KV cache preallocated, and
the whole step captured once in a CUDA graph. The graph reads the last token and the position from
device buffers and writes the next token and position back, so replaying it N times decodes N
tokens with no host work in between; the host only copies each token out one step behind, to
stream text and stop at end-of-sequence.

Positions: after the prompt every mRoPE component is the same text position plus the request's
`rope_delta`, so decode uses plain 1-D rotary at `position + rope_delta`, computed as the model's
rotary module does (fp32 angles, cos/sin in the model's dtype).

On a CPU (and for tests) the same step runs eagerly, without a graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qvl.engine.fuse import fuse_linears, norm
from qvl.engine.kernels import decode_attention, rotary_qk, silu_mul

# Cache capacity grows in steps of this many tokens, so requests of similar length share one
# captured graph instead of capturing a new one each time.
CAPACITY_STEP = 256


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when temperature is 0."""

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return not self.temperature or self.temperature <= 0


class StaticDecoder:
    """A KV cache of fixed capacity for one sequence, and the decode step over it."""

    def __init__(self, model, capacity: int, sampling: Sampling, use_graph: bool):
        self._bind(model, capacity, sampling, use_graph)
        device, dtype = self.lm_head.weight.device, self.lm_head.weight.dtype
        shape = (len(self.layers), self.kv_heads, capacity, self.head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)  # slots past the position are never read
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # cache slot of `token`
        self.rope_delta = torch.zeros(1, dtype=torch.long, device=device)
        self.seen = torch.zeros(self.lm_head.weight.shape[0], dtype=torch.bool, device=device)

    def _bind(self, model, capacity: int, sampling: Sampling, use_graph: bool) -> None:
        """The model's weights and shapes, and the settings every decoder keeps."""
        text = model.model.language_model
        config = text.config
        self.text, self.lm_head = text, model.lm_head
        self.layers = list(text.layers)
        # The fused weights (views-backed, made once per model by `fuse_linears`), per layer.
        self.qkv = [fuse_linears(a, "qkv", (a.q_proj, a.k_proj, a.v_proj)) for a in (l.self_attn for l in self.layers)]
        self.gate_up = [fuse_linears(m, "gate_up", (m.gate_proj, m.up_proj))[0] for m in (l.mlp for l in self.layers)]
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.capacity = capacity
        self.sampling = sampling
        device = self.lm_head.weight.device
        self.inv_freq = text.rotary_emb.inv_freq.detach().float().to(device)
        self.temperature = torch.ones((), device=device)
        self.use_graph = use_graph and device.type == "cuda"
        self.graph = None
        self.last_logits: torch.Tensor | None = None

    def fits(self, tokens: int) -> bool:
        return tokens <= self.capacity

    def prefill_cache(self, offset: int = 0):
        """A transformers cache for one forward pass that stores each layer's keys and values
        straight into this decoder's buffers from slot `offset` on (no second copy of the prompt's
        cache); the slots before `offset` are the past it attends to."""
        return _prefill_cache(self.keys, self.values, offset)

    def start(self, prompt_ids: torch.Tensor, first_token: int, rope_delta: int, sampling: Sampling) -> None:
        """After the prompt went through `prefill_cache()`: set the first generated token at the
        slot after the prompt."""
        length = prompt_ids.shape[-1]
        self.token.fill_(first_token)
        self.position.fill_(length)
        self.rope_delta.fill_(rope_delta)
        self.seen.zero_()
        if sampling.repetition_penalty != 1.0:
            self.seen[prompt_ids.flatten()] = True
            self.seen[first_token] = True
        self.temperature.fill_(sampling.temperature if not sampling.greedy else 1.0)
        if sampling != self.sampling:
            self.sampling, self.graph = sampling, None

    def capture(self) -> None:
        """Record the step as a CUDA graph (after warm-up steps on a side stream). The warm-up and
        capture steps write to the cache slot of the current position, which the first real step
        overwrites, and leave token and position as they found them."""
        if not self.use_graph or self.graph is not None:
            return
        token, position = self.token.clone(), self.position.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.step()
                self.token.copy_(token)
                self.position.copy_(position)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()
        self.token.copy_(token)
        self.position.copy_(position)
        self.graph = graph

    def advance(self) -> None:
        """One decode step: `token` at `position` in, the next token and position out."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step()

    @torch.inference_mode()
    def step(self) -> None:
        x = self.text.embed_tokens(self.token).unsqueeze(0)  # [1, 1, hidden]
        cos, sin = self._rotary()
        length = self.position + 1  # cache slots the new token attends to, itself included
        h = norm(self.layers[0].input_layernorm, x)
        for i, layer in enumerate(self.layers):
            out = self._attention(i, layer.self_attn, h, cos, sin, length)
            h, x = norm(layer.post_attention_layernorm, out, x)
            out = layer.mlp.down_proj(silu_mul(*F.linear(h, self.gate_up[i]).chunk(2, dim=-1)))
            following = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.text.norm
            h, x = norm(following, out, x)
        logits = self._logits(h)
        self.last_logits = logits  # the step's output (a graph's own buffer under replay), for checks
        self.token.copy_(self._choose(logits))
        self.position.add_(1)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)[0, -1].float()  # [vocab]

    def _rotary(self):
        angle = (self.position + self.rope_delta).float().unsqueeze(-1) * self.inv_freq  # [1, dim / 2]
        emb = torch.cat((angle, angle), dim=-1)
        dtype = self.keys.dtype
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _attention(self, i, attn, h, cos, sin, length):
        qkv = F.linear(h, *self.qkv[i])[0]  # [sequences, (heads + 2 kv_heads) * head_dim]
        q, k, v = qkv.split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], -1
        )
        rows = qkv.shape[0]
        q = q.view(rows, self.heads, self.head_dim)
        k = k.view(rows, self.kv_heads, self.head_dim)
        # The text model's rotary: cos/sin in the model's dtype, each product rounded (in place).
        rotary_qk(q, k, cos, sin, fp32_math=False, out=(q, k))
        keys, values = self._store(i, k, v.view(rows, self.kv_heads, self.head_dim))
        out = decode_attention(q, keys, values, length)
        return attn.o_proj(out.reshape(1, rows, -1))  # [1, sequences, heads * head_dim]

    def _store(self, i: int, k: torch.Tensor, v: torch.Tensor):
        """Layer i's new keys and values ([1, kv_heads, head_dim]) into the cache at `position`;
        the layer's cache as `decode_attention` takes it ([1, kv_heads, capacity, head_dim])."""
        self.keys[i].index_copy_(1, self.position, k.transpose(0, 1))
        self.values[i].index_copy_(1, self.position, v.transpose(0, 1))
        return self.keys[i].unsqueeze(0), self.values[i].unsqueeze(0)

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        token = choose(logits, self.sampling, self.seen, self.temperature)
        if self.sampling.repetition_penalty != 1.0:
            self.seen.index_fill_(0, token, True)
        return token


def choose(logits: torch.Tensor, sampling: Sampling, seen: torch.Tensor, temperature) -> torch.Tensor:
    """The next token ([1]) from fp32 `logits` [vocab], as transformers' generate picks it: the
    repetition penalty on the `seen` tokens (a [vocab] mask), then greedy, or a draw at
    `temperature` after top-k and top-p. No host synchronisation."""
    p = sampling.repetition_penalty
    if p != 1.0:
        logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
    if sampling.greedy:
        return logits.argmax(-1, keepdim=True)
    return sample(logits / temperature, sampling.top_k, sampling.top_p)


def sample(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """One token from softmax(logits) after top-k and top-p, with no host synchronisation
    (exponential race instead of torch.multinomial), so it can live inside a CUDA graph."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - top_p
        drop[-1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return (probs / torch.empty_like(probs).exponential_(1)).argmax(-1, keepdim=True)


def _prefill_cache(keys: torch.Tensor, values: torch.Tensor, offset: int):
    """A transformers `Cache` whose layer i writes one forward pass's keys and values into
    keys[i, :, offset:offset + n] and values[i, ...] ([kv_heads, capacity, head_dim] buffers), with
    slots [0, offset) as its past: the attention gets the fresh tensors on an empty past, as a
    dynamic cache would, and views of the buffers over [0, offset + n) otherwise."""
    from transformers.cache_utils import Cache, DynamicLayer

    class BufferLayer(DynamicLayer):
        def __init__(self, key_buffer, value_buffer):
            super().__init__()
            self.key_buffer, self.value_buffer = key_buffer, value_buffer
            self.used = False
            if offset:
                self.device = key_buffer.device
                self.keys, self.values = key_buffer[None, :, :offset], value_buffer[None, :, :offset]
                self.is_initialized = True

        def lazy_initialization(self, key_states, value_states, *args, **kwargs):
            self.device = key_states.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if self.used:
                raise RuntimeError("a prefill cache takes one forward pass")
            self.used = True
            self.lazy_initialization(key_states, value_states)
            end = offset + key_states.shape[-2]
            self.key_buffer[:, offset:end].copy_(key_states[0])
            self.value_buffer[:, offset:end].copy_(value_states[0])
            self.keys, self.values = self.key_buffer[None, :, :end], self.value_buffer[None, :, :end]
            return (key_states, value_states) if offset == 0 else (self.keys, self.values)

    return Cache(layers=[BufferLayer(keys[i], values[i]) for i in range(keys.shape[0])])


def capacity_for(tokens: int) -> int:
    return -(-tokens // CAPACITY_STEP) * CAPACITY_STEP
