"""The two ways an answer is generated: transformers' `generate` (stock), and qvl's fast path
(`prefill.prefill` + `decode.StaticDecoder`). Both take the processor's inputs and return the new
token ids with the time the first one came; both stream text through `TextStream`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from qvl.engine import Result, Timings  # the package imports this module only inside its methods
from qvl.engine.batch_decode import BatchDecoder
from qvl.engine.decode import Sampling, StaticDecoder, capacity_for, choose
from qvl.engine.prefill import PROMPT_PLAN, prefill


@dataclass
class Generated:
    tokens: list[int]
    first_token_at: float
    vision_s: float = 0.0  # fast path only: the vision tower, within the time to the first token
    warmup_s: float = 0.0  # fast path only: the decode graph's capture (first request of a cache size)
    started_at: float | None = None  # batched: when this row's own prefill began


class TextStream:
    """Turns token ids into text pieces as they come, decoding only a short window each time
    (as vLLM's incremental detokenizer does) instead of the whole answer per token. Joined, the
    pieces are exactly the answer's text (`Result.text`, stripped), wherever they are shown."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens: list[int] = []
        self.start = 0  # first token of the window still being decoded
        self.emitted = ""  # text of tokens[start:] already decoded
        self._trim = TrimmedPieces()

    def put(self, token: int) -> None:
        self.tokens.append(token)
        if self.on_text is None:
            return
        text = self.tokenizer.decode(self.tokens[self.start :], skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return
        self._emit(text)
        if len(self.tokens) - self.start > 8:
            self.start, self.emitted = len(self.tokens), ""

    def end(self) -> None:
        """Hand out what is still held back (a character that never completed)."""
        if self.on_text is not None:
            self._emit(self.tokenizer.decode(self.tokens[self.start :], skip_special_tokens=True))

    def _emit(self, text: str) -> None:
        if text.startswith(self.emitted) and len(text) > len(self.emitted):
            piece = self._trim(text[len(self.emitted) :])
            if piece:
                self.on_text(piece)
        self.emitted = text


class TrimmedPieces:
    """Pieces without the whitespace the answer's text is stripped of: leading whitespace dropped,
    trailing whitespace held back until more text follows (and dropped at the end)."""

    def __init__(self):
        self.started, self.held = False, ""

    def __call__(self, piece: str) -> str:
        text = self.held + piece
        if not self.started:
            text = text.lstrip()
        body = text.rstrip()
        self.held = text[len(body) :]
        self.started = self.started or bool(body)
        return body


def sampling_for(request, generation_config) -> Sampling:
    """The token choice both paths make: the request's temperature/top-p over the checkpoint's
    repetition penalty (and top-k when sampling), as transformers' generate applies them."""
    penalty = float(getattr(generation_config, "repetition_penalty", None) or 1.0)
    if not request.temperature or request.temperature <= 0:
        return Sampling(repetition_penalty=penalty)
    top_k = getattr(generation_config, "top_k", None)
    return Sampling(request.temperature, request.top_p, top_k or None, penalty)


def eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos])


def stock_generate(model, tokenizer, inputs, request, stream: TextStream) -> Generated:
    """`model.generate`, with the first token's time taken by the streamer."""
    from transformers.generation.streamers import BaseStreamer

    class Timing(BaseStreamer):
        first_at: float | None = None
        prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:  # the first put carries the prompt
                self.prompt_seen = True
                return
            if self.first_at is None:
                self.first_at = time.perf_counter()
            for token in value.flatten().tolist():
                stream.put(token)

        def end(self):
            pass

    timing = Timing()
    model_inputs = {k: v for k, v in inputs.items() if k != PROMPT_PLAN}  # the fast path's alone
    output = model.generate(**model_inputs, **_generation_kwargs(request, tokenizer), streamer=timing)
    finished = time.perf_counter()
    new = output[0, inputs["input_ids"].shape[1] :].tolist()
    return Generated(tokens=new, first_token_at=timing.first_at or finished)


def _generation_kwargs(request, tokenizer) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": request.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
    }
    if request.temperature and request.temperature > 0:
        kwargs.update(do_sample=True, temperature=request.temperature)
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
    else:
        # Greedy; unset the sampling knobs a checkpoint's generation_config may carry, so
        # transformers does not warn that they are ignored.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


class FastGenerator:
    """The fast path, holding the static decoder (its cache and graph) between requests."""

    def __init__(self, model, use_graph: bool):
        self.model = model
        self.use_graph = use_graph
        self.decoder: StaticDecoder | None = None
        self.batch_decoder: BatchDecoder | None = None

    def generate(self, inputs, request, stream: TextStream, eos: set[int]) -> Generated:
        sampling = sampling_for(request, self.model.generation_config)
        prompt = inputs["input_ids"]

        def make_decoder():
            # One slot past the last token: the step after end-of-sequence is already queued.
            self._ensure_decoder(prompt.shape[1] + request.max_new_tokens + 1, sampling)
            return self.decoder

        done = prefill(self.model, inputs, make_decoder)
        generated = decode(
            self.decoder, done.logits, prompt, done.rope_delta, sampling, request.max_new_tokens, stream, eos
        )
        generated.vision_s = done.vision_s
        return generated

    @torch.inference_mode()
    def generate_rows(self, inputs_list, requests, eos: set[int]) -> list[Generated]:
        """Greedy answers to several requests at once: each prompt prefilled on its own into its row
        of a `BatchDecoder`, then one decode step for every row at a time, each row stopping at its
        end-of-sequence token or its `max_new_tokens`."""
        sampling = sampling_for(requests[0], self.model.generation_config)
        prompts = [inputs["input_ids"] for inputs in inputs_list]
        limits = [request.max_new_tokens for request in requests]
        # Every row steps until the last one ends: room for the longest prompt and the most tokens.
        decoder = self._ensure_batch_decoder(
            len(requests), max(p.shape[1] for p in prompts) + max(limits) + 1, sampling
        )
        rows: list[Generated] = []
        for row, (inputs, prompt) in enumerate(zip(inputs_list, prompts)):
            started = time.perf_counter()
            done = prefill(self.model, inputs, lambda row=row: decoder.slot(row))
            first = first_token(done.logits, prompt, sampling)
            rows.append(Generated([first], time.perf_counter(), vision_s=done.vision_s, started_at=started))
            decoder.start_row(row, prompt, first, done.rope_delta)
        decoder.rest(len(rows))
        active = [row.tokens[0] not in eos and limit > 1 for row, limit in zip(rows, limits)]
        if any(active):
            started = time.perf_counter()
            decoder.capture()
            for row in rows:
                row.warmup_s = time.perf_counter() - started

            def take(step_tokens: list[int]) -> bool:
                for i, token in enumerate(step_tokens[: len(rows)]):
                    if active[i]:
                        rows[i].tokens.append(token)
                        active[i] = token not in eos and len(rows[i].tokens) < limits[i]
                return any(active)

            _run_steps(decoder, max(limits) - 1, take)
        return rows

    def _ensure_batch_decoder(self, rows: int, tokens: int, sampling: Sampling) -> BatchDecoder:
        """A batch decoder of at least `rows` rows and room for `tokens`: the last one unless it has
        fewer rows, too little room or more than twice the room needed, or another repetition
        penalty. A step of a few more rows costs about the same (it reads the same weights)."""
        current = self.batch_decoder
        if (
            not _serves(current, tokens)
            or current.rows < rows
            or current.sampling.repetition_penalty != sampling.repetition_penalty
        ):
            self.batch_decoder = None  # the old caches are freed before the new ones are allocated
            self.batch_decoder = BatchDecoder(
                self.model, rows, capacity_for(tokens), sampling.repetition_penalty, self.use_graph
            )
        return self.batch_decoder

    @torch.inference_mode()
    def reserve(self, tokens: int, sampling: Sampling) -> None:
        """Make the decoder a request of `tokens` slots will use and record its step graph now, so
        that the request does not pay for the capture (`Engine.warm_up`)."""
        self._ensure_decoder(tokens, sampling)
        self.decoder.capture()

    def _ensure_decoder(self, tokens: int, sampling: Sampling) -> None:
        """A decoder for `tokens` slots: the last one (its cache and graph) unless it is too small or
        more than twice the size needed."""
        if _serves(self.decoder, tokens):
            return
        self.decoder = None  # the old cache is freed before the new one is allocated
        self.decoder = StaticDecoder(self.model, capacity_for(tokens), sampling, self.use_graph)


def _serves(decoder, tokens: int) -> bool:
    """Whether `decoder` (None: none yet) is kept for a request of `tokens` slots: it is big enough,
    and not more than twice the size needed."""
    return decoder is not None and decoder.fits(tokens) and decoder.capacity <= 2 * capacity_for(tokens)


def decode(decoder, logits, prompt, rope_delta: int, sampling: Sampling, max_new_tokens: int, stream, eos) -> Generated:
    """The answer after a prefill that left the prompt `prompt` ([1, n]) in `decoder`'s cache and
    the last position's `logits`: the first token from them, then the graph-replayed steps."""
    first = first_token(logits, prompt, sampling)
    first_at = time.perf_counter()
    stream.put(first)
    if first in eos or max_new_tokens == 1:
        return Generated([first], first_at)
    started = time.perf_counter()
    decoder.start(prompt, first, rope_delta, sampling)
    decoder.capture()
    warmup_s = time.perf_counter() - started
    return Generated([first, *_loop(decoder, max_new_tokens - 1, stream, eos)], first_at, warmup_s=warmup_s)


def _loop(decoder: StaticDecoder, steps: int, stream: TextStream, eos: set[int], ahead: int | None = None) -> list[int]:
    """Run up to `steps` decode steps of one sequence, streaming each token, stopping after an
    end-of-sequence token."""
    tokens: list[int] = []

    def take(step_tokens: list[int]) -> bool:
        tokens.append(step_tokens[0])
        stream.put(step_tokens[0])
        return step_tokens[0] not in eos

    _run_steps(decoder, steps, take, ahead)
    return tokens


def _run_steps(decoder, steps: int, take: Callable[[list[int]], bool], ahead: int | None = None) -> None:
    """Run up to `steps` decode steps, handing each step's tokens (one per row of `decoder.token`)
    to `take` until it returns False. On a GPU the host queues `ahead` steps (default 1) past the
    one whose tokens it reads, so the GPU has work while the host streams text or waits for the
    GIL; a stop then leaves those steps' results unused. On the CPU a step is done when queued, so
    none run ahead unless asked."""
    on_gpu = decoder.token.device.type == "cuda"
    ahead = (1 if on_gpu else 0) if ahead is None else ahead
    host = torch.empty((steps, *decoder.token.shape), dtype=torch.long, pin_memory=on_gpu)
    done = [torch.cuda.Event() if on_gpu else None for _ in range(ahead + 1)]
    queued = 0
    for read in range(steps):
        while queued < steps and queued <= read + ahead:
            decoder.advance()
            host[queued : queued + 1].copy_(decoder.token, non_blocking=on_gpu)
            if on_gpu:
                done[queued % len(done)].record()
            queued += 1
        if on_gpu:
            done[read % len(done)].synchronize()
        if not take(host[read].tolist()):
            break
    if on_gpu:
        torch.cuda.synchronize()


def first_token(logits: torch.Tensor, prompt: torch.Tensor, sampling: Sampling) -> int:
    """The first generated token, penalising the prompt's tokens as the decode step does its own."""
    seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    seen[prompt.flatten()] = True
    return int(choose(logits, sampling, seen, sampling.temperature))


def result_of(generated, tokenizer, timings: Timings, started: float, **fields) -> Result:
    """A `Result` from a path's `Generated` (new tokens, first token's time): `timings` completed
    with the stages from `started` (when generation began) to now."""
    finished = time.perf_counter()
    tokens = generated.tokens
    timings.prefill_s = generated.first_token_at - started
    timings.vision_s = generated.vision_s
    timings.warmup_s = generated.warmup_s
    timings.decode_s = finished - generated.first_token_at
    if len(tokens) > 1 and timings.decode_s > 0:
        timings.tokens_per_s = (len(tokens) - 1) / timings.decode_s
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Result(text=text, generated_tokens=len(tokens), timings=timings, tokens=tokens, **fields)
