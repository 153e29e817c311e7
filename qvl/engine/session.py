"""Ask again without waiting: a media prefix prefilled once, any number of questions on top of it.

The prompt of a question about images or a video is the chat template's system turn, the user
turn's media (`<|vision_start|>` ... `<|vision_end|>`), then the question and the assistant's turn.
Everything up to the last `<|vision_end|>` is the same for every question, and special tokens split
the tokenizer's merges, so the prompt's tokens are the prefix's tokens followed by the question's.
A `Session` runs the processor, the vision tower and the language model over the prefix once, into
a static KV cache of its own; each question prefills only its own tokens on top of it (their keys
and values go after the prefix, so the next question overwrites them and nothing leaks between
questions), then decodes as `Engine.generate` does. Greedy answers equal a fresh request's.

PSA, when the engine has it, runs in the prefix's prefill, where the long sequence is; a question's
tokens attend to the prefix through SDPA.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import torch

from qvl.engine.decode import Sampling, StaticDecoder, capacity_for
from qvl.engine.generate import TextStream, decode, eos_ids, sampling_for
from qvl.engine.prefill import prefill, prefill_text
from qvl.errors import OptionError

# Room in the session's cache for one question's tokens and its answer, past the prefix.
DEFAULT_HEADROOM = 4096


class Session:
    """`engine.session(images=..., video=...)`, then `ask(prompt)` as often as wanted."""

    def __init__(self, engine, images: Sequence = (), video=None, *, headroom: int = DEFAULT_HEADROOM):
        from qvl.engine import Request, Timings

        if not images and video is None:
            raise OptionError("a session needs images or a video to keep")
        self.engine, self.images, self.video = engine, tuple(images), video
        self.timings = Timings(load_s=engine.load_s)
        started = time.perf_counter()
        inputs = engine.prepare(Request("", images=self.images, video=video))
        self.timings.preprocess_s = time.perf_counter() - started
        ids = inputs["input_ids"]
        self.prefix_length = _prefix_length(ids, engine.processor.tokenizer)
        self.prefix_ids = ids[:, : self.prefix_length]
        self.decoder = StaticDecoder(
            engine.model, capacity_for(self.prefix_length + headroom), Sampling(), engine.device == "cuda"
        )
        started = time.perf_counter()
        length = ids.shape[1]
        # Per-token inputs (ids, attention mask, token types) cut at the prefix; pixels and grids whole.
        prefix_inputs = {
            k: v[:, : self.prefix_length] if torch.is_tensor(v) and v.dim() == 2 and v.shape == (1, length) else v
            for k, v in inputs.items()
        }
        with torch.inference_mode(), engine._psa_scope(self.prefix_ids) as psa_stats:
            done = prefill(engine.model, prefix_inputs, self.decoder.prefill_cache)
        self.rope_delta = done.rope_delta
        self.timings.vision_s = done.vision_s
        self.timings.prefill_s = time.perf_counter() - started
        self.psa = psa_stats.summary() if psa_stats is not None else None
        # The media's PSA layers go with the first answer only: that is the prefill that ran them.
        self._psa_layers = psa_stats.per_layer() if psa_stats is not None else []

    @property
    def cache_bytes(self) -> int:
        """GPU (or CPU) memory the session's KV cache holds."""
        return 2 * self.decoder.keys.numel() * self.decoder.keys.element_size()

    def ask(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ):
        """Answer one question about the session's media; a `Result` as `Engine.generate` gives."""
        from qvl.engine import Request, Timings, result_of

        if max_new_tokens < 1:
            raise OptionError(f"--max-tokens must be at least 1, not {max_new_tokens}")
        engine, model = self.engine, self.engine.model
        request = Request(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        timings = Timings(load_s=engine.load_s)
        started = time.perf_counter()
        question = self._question_ids(request)
        timings.preprocess_s = time.perf_counter() - started
        full = torch.cat([self.prefix_ids, question], dim=1)
        needed = full.shape[1] + max_new_tokens + 1
        if not self.decoder.fits(needed):
            room = self.decoder.capacity - self.prefix_length
            raise OptionError(
                f"the question and --max-tokens need {needed - self.prefix_length:,} tokens past the media and "
                f"the session keeps room for {room:,}; open the session with a larger headroom"
            )
        tokenizer = engine.processor.tokenizer
        stream = TextStream(tokenizer, on_text)
        sampling = sampling_for(request, model.generation_config)
        if seed is not None:
            torch.manual_seed(seed)
        started = time.perf_counter()
        with torch.inference_mode():
            logits = prefill_text(model, question, self.prefix_length, self.rope_delta, self.decoder.prefill_cache)
            eos = eos_ids(model, tokenizer)
            generated = decode(self.decoder, logits, full, self.rope_delta, sampling, max_new_tokens, stream, eos)
        stream.end()
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

    def _question_ids(self, request) -> torch.Tensor:
        """The question's tokens: the chat template's text after the media, tokenized alone."""
        engine = self.engine
        text = engine.chat_text(dataclasses.replace(request, images=self.images, video=self.video))
        tail = text[text.rindex(_VISION_END) + len(_VISION_END) :]
        ids = engine.processor.tokenizer(tail, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids.to(self.prefix_ids.device)


_VISION_END = "<|vision_end|>"


def _prefix_length(input_ids: torch.Tensor, tokenizer) -> int:
    """Tokens up to and including the last `<|vision_end|>`."""
    end = tokenizer.convert_tokens_to_ids(_VISION_END)
    where = (input_ids[0] == end).nonzero()
    if not len(where):
        raise OptionError("the prompt has no media to keep")
    return int(where[-1]) + 1
