"""Ask again without waiting: a media prefix prefilled once, any number of questions on top of it.

The prompt of a question about images or a video is the chat template's system turn, the user
turn's media (`<|vision_start|>` ... `<|vision_end|>`), then the question and the assistant's turn.
Everything up to the last `<|vision_end|>` is the same for every question, and special tokens split
the tokenizer's merges, so the prompt's tokens are the prefix's tokens followed by the question's.
A `Session` runs the processor, the vision tower and the language model over the prefix once, into
a static KV cache of its own; each question prefills only its own tokens on top of it, then decodes
as `Engine.generate` does. Greedy answers equal a fresh request's.

A conversation (`chat`) is the same prompt with the earlier questions and answers between the
media and the new question. The session remembers which tokens its cache holds past the prefix
(the last prompt and its answer): a new prompt reuses the longest run of them it starts with and
prefills the rest, so a follow-up prefills only the previous answer's end and the new question, a
question with no history overwrites the conversation (nothing leaks between questions), and a
conversation after it is prefilled again. Reuse is by token ids, so whatever the cache holds is
what a fresh request of the same prompt would compute.

PSA, when the engine has it, runs in the prefix's prefill, where the long sequence is; the text
after it attends to the prefix through SDPA.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import torch

from qvl.engine.decode import Sampling, StaticDecoder, capacity_for
from qvl.engine.generate import TextStream, decode, eos_ids, sampling_for
from qvl.engine.load import fits, free_memory
from qvl.engine.prefill import prefill, prefill_text
from qvl.errors import OptionError
from qvl.questions import DEFAULT_HEADROOM


class Session:
    """`engine.session(images=..., video=...)`, then `ask(prompt)` or `chat(text)` as often as wanted.

    history: the conversation `chat` keeps, (question, answer) pairs; `reset()` empties it.
    """

    def __init__(self, engine, images: Sequence = (), video=None, *, headroom: int = DEFAULT_HEADROOM):
        from qvl.engine import Request, Timings

        if not images and video is None:
            raise OptionError("a session needs images or a video to keep")
        if headroom < 1:
            raise OptionError(f"a session's headroom must be at least 1 token, not {headroom}")
        self.engine, self.images, self.video = engine, tuple(images), video
        self.history: list[tuple[str, str]] = []
        self.timings = Timings(load_s=engine.load_s)
        started = time.perf_counter()
        request = Request("", images=self.images, video=video)
        inputs = engine.prepare(request)
        self.timings.preprocess_s = time.perf_counter() - started
        ids = inputs["input_ids"]
        self.prefix_length = _prefix_length(ids, engine.processor.tokenizer)
        self.prefix_ids = ids[:, : self.prefix_length]
        text = engine.chat_text(request)
        self._prefix_text = text[: text.rindex(_VISION_END) + len(_VISION_END)]
        capacity = capacity_for(self.prefix_length + headroom)
        per_token = kv_bytes_per_token(engine.model)
        problem = memory_problem(
            capacity * per_token, self.prefix_length * per_token, *free_memory(engine.device), video=video is not None
        )
        if problem:
            raise OptionError(problem)
        self.decoder = StaticDecoder(engine.model, capacity, Sampling(), engine.device == "cuda")
        started = time.perf_counter()
        length = ids.shape[1]
        # Per-token inputs (ids, attention mask, token types) cut at the prefix; pixels and grids whole.
        prefix_inputs = {
            k: v[:, : self.prefix_length] if torch.is_tensor(v) and v.dim() == 2 and v.shape == (1, length) else v
            for k, v in inputs.items()
        }
        with torch.inference_mode(), engine._psa_scope(self.prefix_ids) as psa_stats:
            done = prefill(engine.model, prefix_inputs, lambda: self.decoder)
        # A question's tokens continue the text after the media (`text_delta`); decoding after a
        # prompt uses the model's rope delta, counted from the prompt's largest position.
        self.text_delta, self.max_position = done.text_delta, done.max_position
        self.timings.vision_s = done.vision_s
        self.timings.prefill_s = time.perf_counter() - started
        self.psa = psa_stats.summary() if psa_stats is not None else None
        # The media's PSA layers go with the first answer only: that is the prefill that ran them.
        self._psa_layers = psa_stats.per_layer() if psa_stats is not None else []
        self._kept: list[int] = []  # token ids past the prefix whose keys and values the cache holds, in order
        self.last_prefilled = 0
        """Tokens the last answer's prompt prefilled; the rest of it came from the kept cache."""

    def decode_delta(self, length: int) -> int:
        """The rope delta of decoding after a prompt of `length` tokens (the media, then text), as
        the model computes it for the whole prompt: its largest position + 1 - length."""
        last_text = length - 1 + self.text_delta
        return max(self.max_position, last_text) + 1 - length

    @property
    def cache_bytes(self) -> int:
        """GPU (or CPU) memory the session's KV cache holds."""
        return 2 * self.decoder.keys.numel() * self.decoder.keys.element_size()

    @property
    def capacity(self) -> int:
        """Tokens the session's cache has room for: the media's and `headroom` more, rounded up."""
        return self.decoder.capacity

    @property
    def kept_tokens(self) -> int:
        """Tokens the cache holds now: the media's, and the last prompt and answer after them."""
        return self.prefix_length + len(self._kept)

    def chat(self, text: str, **options):
        """Answer `text` with the conversation so far in view, then add the turn to `history`;
        keywords as `ask`'s. Greedy answers equal a fresh request with the same history."""
        result = self.ask(text, history=self.history, **options)
        self.history.append((text, result.text))
        return result

    def reset(self) -> None:
        """Forget the conversation: the next `chat` starts again from the media alone."""
        self.history.clear()
        self._kept = []

    def ask(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        history: Sequence[tuple[str, str]] = (),
    ):
        """Answer one question about the session's media, after the earlier turns `history`
        ((question, answer) pairs, none by default; `history` is not changed); a `Result` as
        `Engine.generate` gives."""
        from qvl.engine import Request, Timings
        from qvl.engine.generate import result_of

        if max_new_tokens < 1:
            raise OptionError(f"--max-tokens must be at least 1, not {max_new_tokens}")
        engine, model = self.engine, self.engine.model
        request = Request(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            history=tuple(history),
        )
        timings = Timings(load_s=engine.load_s)
        started = time.perf_counter()
        tail = self._tail_ids(request)
        timings.preprocess_s = time.perf_counter() - started
        self._check_room(len(tail) + max_new_tokens + 1, bool(request.history))
        # The kept tokens this prompt starts with are reused; its last token is always prefilled,
        # for the logits of the first answer token.
        reused = _common_length(self._kept, tail, len(tail) - 1)
        self._kept = self._kept[:reused]  # the prefill overwrites the rest, even if it is interrupted
        full = torch.cat([self.prefix_ids, torch.tensor([tail], device=self.prefix_ids.device)], dim=1)
        offset = self.prefix_length + reused
        tokenizer = engine.processor.tokenizer
        stream = TextStream(tokenizer, on_text)
        sampling = sampling_for(request, model.generation_config)
        if seed is not None:
            torch.manual_seed(seed)
        started = time.perf_counter()
        with torch.inference_mode():
            logits = prefill_text(model, full[:, offset:], offset, self.text_delta, self.decoder)
            eos = eos_ids(model, tokenizer)
            rope_delta = self.decode_delta(full.shape[1])
            generated = decode(self.decoder, logits, full, rope_delta, sampling, max_new_tokens, stream, eos)
        stream.end()
        # The cache holds the prompt and every answer token but the last, which was never fed back.
        self._kept = tail + generated.tokens[:-1]
        self.last_prefilled = len(tail) - reused
        first_answer_layers, self._psa_layers = self._psa_layers, []
        return result_of(
            generated,
            tokenizer,
            timings,
            started,
            prompt_tokens=full.shape[1],
            psa=self.psa,
            psa_layers=first_answer_layers,
        )

    def _tail_ids(self, request) -> list[int]:
        """The prompt's tokens after the media: the chat template's text after the prefix, tokenized
        alone (the history's turns, the question, the start of the answer)."""
        engine = self.engine
        text = engine.chat_text(dataclasses.replace(request, images=self.images, video=self.video))
        if not text.startswith(self._prefix_text):
            raise RuntimeError("the chat template changed the text before the media between questions")
        tail = text[len(self._prefix_text) :]
        return engine.processor.tokenizer(tail, add_special_tokens=False)["input_ids"]

    def _check_room(self, needed: int, conversation: bool) -> None:
        """An `OptionError` unless `needed` tokens past the media fit in the cache."""
        room = self.decoder.capacity - self.prefix_length
        if needed <= room:
            return
        what = "the conversation, the question and --max-tokens" if conversation else "the question and --max-tokens"
        over = "start the conversation over (/reset in qvl chat, session.reset()) or " if conversation else ""
        raise OptionError(
            f"{what} need {needed:,} tokens past the media and the session keeps room for {room:,}; "
            f"{over}open the session with a larger headroom (--headroom in qvl chat)"
        )


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token takes in a session's cache (`StaticDecoder`'s layout)."""
    config = model.model.language_model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = model.lm_head.weight.element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element


def memory_problem(need: int, media_need: int, free: int | None, where: str, *, video: bool) -> str | None:
    """Why a session cache of `need` bytes (`media_need` of them the media's) does not fit in the
    `free` bytes of `where`, naming what makes it fit; None when it fits (or `free` is unknown)."""
    if fits(need, free):
        return None
    if not fits(media_need, free):
        remedy = (
            "fewer frames (--frames, --fps) or smaller ones (--max-pixels) make it fit"
            if video
            else "fewer or smaller images make it fit"
        )
    else:
        remedy = "a smaller --headroom makes it fit"
    return (
        f"the session's KV cache needs {_size(need)} ({_size(media_need)} of it for the media) and {where} "
        f"has {_size(free)} free; {remedy}"
    )


def _size(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _common_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading items `a` and `b` share, at most `limit`."""
    n = 0
    for x, y in zip(a[:limit], b[:limit]):
        if x != y:
            break
        n += 1
    return n


_VISION_END = "<|vision_end|>"


def _prefix_length(input_ids: torch.Tensor, tokenizer) -> int:
    """Tokens up to and including the last `<|vision_end|>`."""
    end = tokenizer.convert_tokens_to_ids(_VISION_END)
    where = (input_ids[0] == end).nonzero()
    if not len(where):
        raise OptionError("the prompt has no media to keep")
    return int(where[-1]) + 1
