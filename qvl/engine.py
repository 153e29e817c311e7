"""The one engine: load a Qwen2.5-VL model and processor once, answer any number of requests.

`Engine.generate(Request) -> Result` is all the CLI and the Python API use. A request carries
already-decoded media (PIL images, or a video clip's frames with their real sampled fps), so the
engine never touches files: `qvl.media` owns those.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from qvl.errors import ModelError, OptionError

if TYPE_CHECKING:
    import numpy as np
    import torch

DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "bfloat16", "float16", "float32")
# Fraction of free GPU memory the weights may take before we spread the model with device_map="auto":
# the rest is left for activations and the KV cache of long videos.
_FIT_FRACTION = 0.8


@dataclass
class Timings:
    """Seconds spent in each stage of one request (load is the engine's, shared by all requests)."""

    load_s: float = 0.0
    media_s: float = 0.0  # opening images or sampling video frames, filled in by the caller
    preprocess_s: float = 0.0  # processor: resize, patchify, tokenize
    prefill_s: float = 0.0  # time to the first generated token
    decode_s: float = 0.0  # the remaining tokens
    tokens_per_s: float = 0.0  # decode rate, first token excluded

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


@dataclass
class Request:
    prompt: str
    images: Sequence[Any] = ()  # PIL images, in prompt order
    video: VideoFrames | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy
    top_p: float | None = None
    seed: int | None = None


@dataclass
class Result:
    text: str
    prompt_tokens: int
    generated_tokens: int
    timings: Timings = field(default_factory=Timings)
    psa: dict | None = None  # PSA statistics of the prefill (density, level shares, per layer)


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise OptionError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda: no CUDA device is available on this machine")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype not in DTYPES:
        raise OptionError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype == "auto":
        # bf16 where the GPU has it; CPU matmuls in half precision are slow and lossy, so fp32 there.
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


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
    ):
        """psa: a `qvl.psa.AttentionConfig` to run the language model's prefill with Pyramid
        Sparse Attention, or None for SDPA everywhere."""
        from qvl.models import resolve_model

        self.psa = psa
        if psa is not None:
            from qvl.psa import attn_implementation as psa_attn_implementation

            attn_implementation = psa_attn_implementation()
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        started = time.perf_counter()
        self.resolved = resolve_model(model)
        self.model, self.processor = _load(self.resolved.path, self.device, self.dtype, attn_implementation)
        self.load_s = time.perf_counter() - started

    @property
    def name(self) -> str:
        return self.resolved.spec

    @property
    def is_tiny(self) -> bool:
        return self.resolved.is_tiny

    def prepare(self, request: Request):
        """Run the processor on one request: the model inputs (`input_ids`, pixel values, grids, ...),
        on the model's device."""
        content: list[dict] = [{"type": "image"} for _ in request.images]
        if request.video is not None:
            content.append({"type": "video"})
        content.append({"type": "text", "text": request.prompt})
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs: dict[str, Any] = {}
        if request.images:
            kwargs["images"] = list(request.images)
        if request.video is not None:
            kwargs.update(_video_kwargs(request.video, self.processor.video_processor))
        return self.processor(text=[text], return_tensors="pt", **kwargs).to(self.model.device)

    def generate(self, request: Request, on_text: Callable[[str], None] | None = None) -> Result:
        """Answer one request. `on_text` receives the answer in pieces as tokens are generated."""
        import torch

        timings = Timings(load_s=self.load_s)
        started = time.perf_counter()
        inputs = self.prepare(request)
        timings.preprocess_s = time.perf_counter() - started

        streamer = _timing_streamer(self.processor.tokenizer, on_text)
        generation = _generation_kwargs(request, self.processor.tokenizer)
        if request.seed is not None:
            torch.manual_seed(request.seed)
        started = time.perf_counter()
        with torch.inference_mode(), self._psa_scope(inputs["input_ids"]) as psa_stats:
            output = self.model.generate(**inputs, **generation, streamer=streamer)
        finished = time.perf_counter()

        prompt_tokens = inputs["input_ids"].shape[1]
        new_tokens = output[0, prompt_tokens:]
        first = streamer.first_token_at or finished
        timings.prefill_s = first - started
        timings.decode_s = finished - first
        if len(new_tokens) > 1 and timings.decode_s > 0:
            timings.tokens_per_s = (len(new_tokens) - 1) / timings.decode_s
        text = self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return Result(
            text=text.strip(),
            prompt_tokens=prompt_tokens,
            generated_tokens=len(new_tokens),
            timings=timings,
            psa=psa_stats.summary() if psa_stats is not None else None,
        )

    def text_length(self, input_ids) -> int:
        """Tokens after the last image or video token: the text PSA keeps at full resolution."""
        vision_ids = input_ids.new_tensor([self.processor.image_token_id, self.processor.video_token_id])
        is_vision = (input_ids[0].unsqueeze(-1) == vision_ids).any(-1).nonzero()
        length = input_ids.shape[1]
        return length - (int(is_vision[-1]) + 1) if len(is_vision) else length

    def _psa_scope(self, input_ids):
        """PSA settings for this prompt, with fresh statistics; a null context without PSA."""
        import contextlib

        if self.psa is None:
            return contextlib.nullcontext()
        from qvl.psa import PSAStats, psa_request

        return psa_request(self.psa, self.text_length(input_ids), PSAStats())


def _load(path, device: str, dtype, attn_implementation):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device == "cuda":
        kwargs["device_map"] = "cuda" if _fits_one_gpu(path) else "auto"
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs)
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model from {path}: {_first_line(exc)}") from None
    except torch.cuda.OutOfMemoryError:
        raise ModelError(f"the model in {path} does not fit in GPU memory; try a smaller one (--model 3b)") from None
    model.eval()
    return model, processor


def _fits_one_gpu(path) -> bool:
    import torch

    weights = sum(p.stat().st_size for p in path.glob("*.safetensors")) or sum(
        p.stat().st_size for p in path.glob("*.bin")
    )
    free, _ = torch.cuda.mem_get_info()
    return weights <= _FIT_FRACTION * free or torch.cuda.device_count() == 1


def _video_kwargs(video: VideoFrames, video_processor) -> dict[str, Any]:
    count, height, width = video.frames.shape[:3]
    # The processor derives second_per_grid_ts from the metadata's sampled fps (transformers 5.x ignores
    # an `fps` keyword). frames_indices == range(count) with total_num_frames == count makes that
    # sampled fps exactly ours on every 5.x release.
    metadata = {
        "total_num_frames": count,
        "fps": video.sampled_fps,
        "frames_indices": list(range(count)),
        "duration": count / video.sampled_fps,
        "width": width,
        "height": height,
    }
    # The frames were already sized to the plan (sides multiples of 28): pin the pixel budget to
    # that size so the processor does not resize them a second time.
    pixels = height * width
    videos_kwargs: dict[str, Any] = {
        "do_sample_frames": False,
        "size": {"shortest_edge": pixels, "longest_edge": pixels},
    }
    if hasattr(video_processor, "cap_pixels_per_frame"):
        # Newer 5.x releases can cap pixels per frame themselves; our plan already applied the
        # video's token budget, and saying so silences their warning.
        videos_kwargs["cap_pixels_per_frame"] = False
    return {"videos": [video.frames], "video_metadata": [metadata], "videos_kwargs": videos_kwargs}


def _generation_kwargs(request: Request, tokenizer) -> dict[str, Any]:
    if request.max_new_tokens < 1:
        raise OptionError(f"--max-tokens must be at least 1, not {request.max_new_tokens}")
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


def _timing_streamer(tokenizer, on_text: Callable[[str], None] | None):
    """A transformers streamer that forwards decoded text and notes when the first new token came.

    Built inside a function so that importing this module does not import transformers.
    """
    from transformers import TextStreamer

    class TimingStreamer(TextStreamer):
        first_token_at: float | None = None

        def put(self, value):
            # The first put carries the prompt; the first one after it is the first new token.
            if not self.next_tokens_are_prompt and self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if on_text is not None and text:
                on_text(text)

    return TimingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
