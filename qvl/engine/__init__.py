"""The one engine: load a Qwen2.5-VL model and processor once, answer any number of requests.

`Engine.generate(Request) -> Result` is all the CLI and the Python API use. A request carries
already-decoded media (PIL images, or a video clip's frames with their real sampled fps), so the
engine never touches files: `qvl.media` owns those.
"""

from __future__ import annotations

import contextlib
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from qvl.engine.inputs import InputBuilder
from qvl.engine.load import DEVICES, DTYPES, resolve_device, resolve_dtype
from qvl.errors import InputError, ModelError, OptionError, first_line
from qvl.questions import check_question

__all__ = [
    "DEVICES",
    "DTYPES",
    "Engine",
    "Request",
    "Result",
    "Timings",
    "VideoFrames",
    "resolve_device",
    "resolve_dtype",
]

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Timings:
    """Seconds spent in each stage of one request (load is the engine's, shared by all requests)."""

    load_s: float = 0.0
    media_s: float = 0.0  # opening images or sampling video frames, filled in by the caller
    preprocess_s: float = 0.0  # processor: resize, patchify, tokenize
    prefill_s: float = 0.0  # time to the first generated token
    vision_s: float = 0.0  # the vision tower, part of prefill_s (where qvl runs it)
    warmup_s: float = 0.0  # the decode graph's capture (first request of a cache size), part of decode_s
    decode_s: float = 0.0  # the remaining tokens
    tokens_per_s: float = 0.0  # decode rate, first token excluded

    def add_media_prefill(self, media: Timings) -> None:
        """Count a session's one prefill of the media (processor, vision tower, prefill) in this
        request's: the first answer about kept media waited for it."""
        self.preprocess_s += media.preprocess_s
        self.vision_s += media.vision_s
        self.prefill_s += media.prefill_s

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


@dataclass
class VideoFrames:
    """Decoded frames of one video: uint8 `[T, H, W, 3]` and the real rate they were sampled at.

    `sampled_fps` sets the model's temporal positions (`second_per_grid_ts` = 2 / sampled_fps),
    so it must be the true frames-per-second of the sample, not the source's frame rate.
    """

    frames: np.ndarray
    sampled_fps: float

    def __post_init__(self) -> None:
        shape = getattr(self.frames, "shape", ())
        if len(shape) != 4 or shape[0] < 1 or shape[3] != 3 or 0 in shape:
            raise InputError(f"a video's frames are a [T, H, W, 3] array of at least one frame, not {tuple(shape)}")
        if not 0 < self.sampled_fps < float("inf"):
            raise InputError(f"a video's sampled_fps must be a positive number, not {self.sampled_fps}")


@dataclass
class Request:
    prompt: str
    images: Sequence[Any] = ()  # PIL images, in prompt order
    video: VideoFrames | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy
    top_p: float | None = None
    seed: int | None = None
    # Earlier turns of a conversation, (question, answer) pairs in order: the media goes with the
    # first question, and `prompt` is the next one.
    history: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        check_sampling(self.max_new_tokens, self.temperature, self.top_p)


def check_sampling(max_tokens: int, temperature: float, top_p: float | None) -> None:
    """An `OptionError` for an answer's length or sampling settings that mean nothing (the CLI's
    options, checked before any model loads, and every `Request`)."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral) or max_tokens < 1:
        raise OptionError(f"--max-tokens must be a whole number, at least 1, not {max_tokens!r}")
    if not temperature >= 0 or temperature == float("inf"):
        raise OptionError(f"--temperature must be a finite number >= 0, not {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise OptionError(f"--top-p must be in (0, 1], not {top_p}")


@dataclass
class Result:
    text: str
    prompt_tokens: int
    generated_tokens: int
    timings: Timings = field(default_factory=Timings)
    psa: dict | None = None  # PSA statistics of the prefill (density, level shares, per layer)
    psa_layers: list[dict] = field(default_factory=list)  # PSAStats.per_layer(): one row per PSA layer
    tokens: list[int] = field(default_factory=list)  # the generated token ids


class Engine:
    """A loaded model + processor. Construct once, call `generate` many times."""

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | dict | None = None,
        psa=None,
        progress: bool = True,
        native: bool | None = None,
    ):
        """psa: a `qvl.psa.AttentionConfig` to run the language model's prefill with Pyramid
        Sparse Attention, or None for SDPA everywhere. progress: the Hub's and transformers'
        progress bars on stderr while the model downloads and loads. native: the weights in qvl's
        own module tree with qvl's own inputs, which never import transformers' model classes
        (`engine.native`; a cold process's seconds): None takes them where a saved checkpoint is
        read straight onto one GPU or a random:<preset> model is made on one, True wherever the
        checkpoint loads into them, False never. Requests on the tree always take the fast path:
        `generate(fast=False)` needs transformers' model."""
        from qvl.engine.load import hide_load_progress, load_model
        from qvl.models import resolve_model

        if not progress:
            hide_load_progress()
        self.psa = psa
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        started = time.perf_counter()
        try:
            self.resolved = resolve_model(model)
            self.model, self.processor = load_model(
                self.resolved, self.device, self.dtype, attn_implementation, native=native, psa=psa is not None
            )
        except ImportError as exc:  # a broken install: a library that transformers or qvl imports
            raise ModelError(
                f"cannot load a model: {first_line(exc)} (an incomplete install: install qvl with its "
                "dependencies again, e.g. `make install` in its checkout)"
            ) from None
        self.load_s = time.perf_counter() - started
        from qvl.engine.native import NativeModel

        self.native = isinstance(self.model, NativeModel)
        """The weights are in qvl's own module tree (no transformers model: no stock path)."""
        self._inputs = self.processor.inputs if self.native else InputBuilder(self.processor)
        self._fast = None  # the fast path's generator, made on first use
        self.compiled_s = 0.0
        """Seconds `warm_up` spent where it was the first on this machine: the kernels compiled."""
        self._psa_compiled = False  # PSA's kernels known compiled on this machine (no need to look again)
        self.fast_path_problem = None if self.native else _fast_path_problem(self.model)
        """Why requests take the stock transformers path (None: they take qvl's fast path)."""
        if self.fast_path_problem is None:
            from qvl.engine.fuse import fuse_model

            fuse_model(self.model)

    @property
    def name(self) -> str:
        return self.resolved.spec

    @property
    def is_tiny(self) -> bool:
        return self.resolved.is_tiny

    @property
    def random_weights(self) -> bool:
        """The model's answers are random text (tiny, random:<preset>)."""
        return self.resolved.random_weights

    def chat_text(self, request: Request) -> str:
        """The request as the chat template writes it, ending with the start of the assistant's
        next turn."""
        return self.processor.apply_chat_template(
            self.chat_messages(request), tokenize=False, add_generation_prompt=True
        )

    @staticmethod
    def chat_messages(request: Request) -> list[dict]:
        """The request as chat messages: the user's turns (the first with its images and video, as
        placeholders the processor expands) between the `history`'s answers. An `InputError` for a
        question the model may not be asked (`check_question`)."""
        for question in (request.prompt, *(q for q, _ in request.history)):
            check_question(question)
        media: list[dict] = [{"type": "image"} for _ in request.images]
        if request.video is not None:
            media.append({"type": "video"})
        messages = []
        for question, answer in request.history:
            messages.append({"role": "user", "content": [*(media if not messages else []), _text(question)]})
            messages.append({"role": "assistant", "content": [_text(answer)]})
        messages.append({"role": "user", "content": [*(media if not messages else []), _text(request.prompt)]})
        return messages

    def prepare(self, request: Request, device: str | None = None):
        """Run the processor on one request: the model inputs (`input_ids`, pixel values, grids, ...),
        on `device` (default: the model's).

        device="cpu" keeps every step on the CPU and touches no GPU, so worker threads can prepare
        requests while the model answers others; `generate(request, inputs=...)` then moves them.
        Made ahead for the fast path, they carry their `prefill.PromptPlan` (positions, the towers'
        plans): the thread driving the GPU then neither makes it nor reads the ids back.
        """
        import torch

        target = torch.device(device) if device is not None else self.model.device
        inputs = self._inputs(self.chat_text(request), request.images, request.video, target)
        if device is not None and self.fast_path_problem is None:
            from qvl.engine.prefill import PROMPT_PLAN, plan_prompt

            inputs[PROMPT_PLAN] = plan_prompt(self.model, inputs)
        return inputs

    def generate(
        self,
        request: Request,
        on_text: Callable[[str], None] | None = None,
        *,
        fast: bool | None = None,
        psa: bool = True,
        inputs=None,
    ) -> Result:
        """Answer one request. `on_text` receives the answer in pieces as tokens are generated.

        fast: qvl's fast path (our vision tower, static KV cache, CUDA-graph decode) or transformers'
        `generate`; None takes the fast path wherever `fast_path_problem` is None. psa: False runs
        this request with SDPA even on an engine built with `psa=` (to compare the two). inputs:
        `prepare(request, device="cpu")`'s output, made ahead of time; `preprocess_s` is then only
        the move to the model's device.
        """
        import torch

        from qvl.engine.generate import TextStream, eos_ids, result_of, stock_generate

        check_sampling(request.max_new_tokens, request.temperature, request.top_p)  # as changed since made
        if fast is None:
            fast = self.fast_path_problem is None
        if not fast and self.native:
            raise OptionError("the stock path runs transformers' model: make the engine with native=False")
        timings = Timings(load_s=self.load_s)
        started = time.perf_counter()
        inputs = self.prepare(request) if inputs is None else inputs.to(self.model.device)
        timings.preprocess_s = time.perf_counter() - started
        self.check_room(inputs["input_ids"].shape[1], request.max_new_tokens)

        tokenizer = self.processor.tokenizer
        stream = TextStream(tokenizer, on_text)
        if request.seed is not None:
            torch.manual_seed(request.seed)
        started = time.perf_counter()
        scope = self._psa_scope(inputs["input_ids"]) if psa else contextlib.nullcontext()
        first_psa = psa and self._psa_first_on_this_gpu()
        with torch.inference_mode(), scope as psa_stats:
            if fast:
                generated = self._fast_generator().generate(inputs, request, stream, eos_ids(self.model, tokenizer))
            else:
                generated = stock_generate(self.model, tokenizer, inputs, request, stream)
        stream.end()
        summary = psa_stats.summary() if psa_stats is not None else None
        if summary is not None and first_psa:  # PSA ran: its kernels are compiled and tuned now
            from qvl.engine.compiled import remember_compiled

            remember_compiled(self._card(), "psa")
            self._psa_compiled = summary["compiled"] = True
        return result_of(
            generated,
            tokenizer,
            timings,
            started,
            prompt_tokens=inputs["input_ids"].shape[1],
            psa=summary,
            psa_layers=psa_stats.per_layer() if psa_stats is not None else [],
        )

    def check_room(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """An `OptionError` where the prompt and the answer pass the model's context: positions past
        it were never trained, and the fast path would make a KV cache that long up front."""
        context = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if context and prompt_tokens + max_new_tokens > context:
            raise OptionError(
                f"--max-tokens {max_new_tokens:,} with a prompt of {prompt_tokens:,} tokens passes the model's "
                f"context of {context:,} tokens: at most {max(context - prompt_tokens, 0):,} new tokens"
            )

    def _card(self) -> str:
        import torch

        return torch.cuda.get_device_name(self.model.device)

    def _psa_first_on_this_gpu(self) -> bool:
        """Whether PSA's kernels have never run on this machine's GPU: their compile and autotuning
        (seconds, once) then fall in this request's prefill."""
        if self.psa is None or self.device != "cuda" or self._psa_compiled:
            return False
        from qvl.engine.compiled import compiled_before

        self._psa_compiled = compiled_before(self._card(), "psa")  # once true, true for the process
        return not self._psa_compiled

    def generate_batch(self, requests: Sequence[Request], inputs: Sequence | None = None) -> list[Result]:
        """Greedy answers to `requests`, decoded together on qvl's fast path: each prompt is
        prefilled on its own, then every decode step makes a token for each of them
        (`batch_decode.BatchDecoder`); each gets the tokens `generate` would give it alone, up to
        floating-point near-ties (batched products round differently). inputs: each request's
        `prepare(request, device="cpu")`, made ahead of time. A row's `decode_s` runs until the
        last row ends."""
        import torch

        from qvl.engine.generate import eos_ids, result_of

        if not requests:
            return []
        if any(request.temperature and request.temperature > 0 for request in requests):
            raise OptionError("requests decoded together are answered greedily: --temperature 0")
        for request in requests:
            check_sampling(request.max_new_tokens, request.temperature, request.top_p)
        if self.psa is not None:
            raise OptionError("requests decoded together run without PSA")
        if self.device == "cuda" and self.fast_path_problem is not None:  # the CPU runs its plain form
            raise OptionError(f"requests are decoded together on qvl's fast path only: {self.fast_path_problem}")
        made = list(inputs) if inputs is not None else [None] * len(requests)
        prepared, timings = [], []
        for request, ahead in zip(requests, made):
            timings.append(Timings(load_s=self.load_s))
            started = time.perf_counter()
            prepared.append(self.prepare(request) if ahead is None else ahead.to(self.model.device))
            timings[-1].preprocess_s = time.perf_counter() - started
            self.check_room(prepared[-1]["input_ids"].shape[1], request.max_new_tokens)
        tokenizer = self.processor.tokenizer
        with torch.inference_mode():
            rows = self._fast_generator().generate_rows(prepared, requests, eos_ids(self.model, tokenizer))
        return [
            result_of(row, tokenizer, timing, row.started_at, prompt_tokens=x["input_ids"].shape[1])
            for row, timing, x in zip(rows, timings, prepared)
        ]

    def _fast_generator(self):
        """qvl's fast path over this model, made on first use."""
        if self._fast is None:
            from qvl.engine.generate import FastGenerator

            self._fast = FastGenerator(self.model, use_graph=self.model.device.type == "cuda")
        return self._fast

    def warm_up(self, tokens: int | None = None) -> float:
        """Answer a tiny video request (two black frames; two tokens, one where `tokens` is given) on
        the fast path and return the seconds it took (added to `load_s`): the one-time costs of a
        process's first request (cuBLAS handles, CUDA modules loaded on first use, each Triton
        kernel's load from its cache) are paid here, where the caller can overlap them with other
        work. tokens: the next request's prompt and answer tokens, where known: its KV cache and
        greedy decode graph are made here too. Off a GPU's fast path it does nothing; a failure
        is left for the first real request."""
        if self.fast_path_problem is not None or self.device != "cuda":  # a CPU has no such costs
            return 0.0
        import numpy as np

        from qvl.engine.compiled import compiled_before, remember_compiled
        from qvl.engine.generate import sampling_for

        started = time.perf_counter()
        vision = self.model.config.vision_config
        side = 2 * vision.patch_size * vision.spatial_merge_size
        # Two tokens run the decode step and capture its graph for the tiny request's own cache; with
        # the next request's size known that graph would be thrown away, so one token, and the
        # capture below is the first.
        frames = VideoFrames(np.zeros((2, side, side, 3), np.uint8), 2.0)
        card = self._card()
        first = not compiled_before(card)
        try:
            self.generate(Request("", video=frames, max_new_tokens=1 if tokens else 2))
            if tokens:
                self._fast_generator().reserve(tokens, sampling_for(Request(""), self.model.generation_config))
        except Exception:  # only an optimisation: the request that follows reports any real problem
            first = False
        spent = time.perf_counter() - started
        if first:
            remember_compiled(card)
            self.compiled_s = spent
        self.load_s += spent  # the wait before the first request, as a user meets it
        return spent

    def session(self, images=(), video: VideoFrames | None = None, **kwargs):
        """The media prefilled once; `session.ask(prompt)` answers questions about it and
        `session.chat(text)` holds a conversation about it, without prefilling the media again
        (`qvl.engine.session.Session`; keywords: `headroom`)."""
        from qvl.engine.session import Session

        return Session(self, images, video, **kwargs)

    def text_length(self, input_ids) -> int:
        """Tokens after the last image or video token: the text PSA keeps at full resolution."""
        vision_ids = input_ids.new_tensor([self.processor.image_token_id, self.processor.video_token_id])
        is_vision = (input_ids[0].unsqueeze(-1) == vision_ids).any(-1).nonzero()
        length = input_ids.shape[1]
        return length - (int(is_vision[-1]) + 1) if len(is_vision) else length

    def _psa_scope(self, input_ids):
        """PSA settings for this prompt, with fresh statistics; a null context without PSA."""
        if self.psa is None:
            return contextlib.nullcontext()
        from qvl.psa import PSAStats, psa_request

        return psa_request(self.psa, self.text_length(input_ids), PSAStats())


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _fast_path_problem(model) -> str | None:
    if model.device.type != "cuda":
        return "the fast path needs a CUDA device"
    if len({p.device for p in model.parameters()}) > 1:
        return "the model is spread over several devices"
    if model.config.get_text_config().hidden_act != "silu":
        return "the fast decode step implements the published SiLU MLP only"
    return None
