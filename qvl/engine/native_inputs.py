"""A request's model inputs without transformers, for the cold path over `native`'s tree: the chat
template (Jinja, rendered as transformers renders it), the tokenizer (`tokenizers`, from the
model's tokenizer.json), and a video's frames rescaled, normalised and laid out in the patches the
vision tower reads. Images keep transformers' processor (their resize is its own), loaded when the
first image comes. `NativeProcessor` gathers them behind what the engine asks of a processor.

Each output is checked against transformers' processor on the tiny model (tests/test_native.py):
the same text, ids and pixel values, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from qvl.engine import VideoFrames


class Tokenizer:
    """The model's tokenizer.json through `tokenizers`: what the engine asks of transformers'
    tokenizer (`decode`, the end-of-turn and padding ids)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer as Backend

        self._backend = Backend.from_file(str(folder / "tokenizer.json"))
        config = _json(folder / "tokenizer_config.json")
        if config.get("clean_up_tokenization_spaces"):  # Qwen's are False; transformers' decode would differ
            raise ValueError(f"{folder}: a tokenizer that cleans up spaces when it decodes")
        self.eos_token_id = self._id(config.get("eos_token"))
        self.pad_token_id = self._id(config.get("pad_token"))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict[str, list]:
        """{"input_ids": ids} of `text`, or a list of ids per text of a list, as transformers'
        tokenizers answer."""
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(one, add_special_tokens) for one in text]}

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _id(self, token) -> int | None:
        token = token.get("content") if isinstance(token, dict) else token
        return None if token is None else self._backend.token_to_id(token)


class ChatTemplate:
    """The model's chat template, rendered with the settings transformers renders it with."""

    def __init__(self, folder: Path):
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # Where transformers' processor looks, in its order: the legacy JSON file, the raw
        # template newer releases save, then the tokenizer's own.
        source = _json(folder / "chat_template.json").get("chat_template")
        if not source and (folder / "chat_template.jinja").is_file():
            source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        source = source or _json(folder / "tokenizer_config.json").get("chat_template")
        if not source:
            raise ValueError(f"{folder}: no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source)

    def render(self, messages: list[dict]) -> str:
        return self._template.render(messages=messages, add_generation_prompt=True)


class VideoPixels:
    """A clip's uint8 frames [T, H, W, 3] (sides multiples of patch x merge) as the vision tower's
    input: rescaled and normalised in one step, as transformers' processor does it, and laid out
    merge square by merge square; a last frame repeated to fill the last temporal patch."""

    def __init__(self, folder: Path):
        config = _json(folder / "video_preprocessor_config.json") or _json(folder / "preprocessor_config.json")
        self.patch_size = config.get("patch_size", 14)
        self.temporal_patch_size = config.get("temporal_patch_size", 2)
        self.merge_size = config.get("merge_size", 2)
        rescale = config.get("rescale_factor", 1 / 255)
        self.mean = torch.tensor(config["image_mean"]) * (1.0 / rescale)
        self.std = torch.tensor(config["image_std"]) * (1.0 / rescale)

    def fits(self, size) -> bool:
        """Whether frames of `size` (height, width) need no resize: sides multiples of patch x merge."""
        side = self.patch_size * self.merge_size
        return all(n > 0 and n % side == 0 for n in size)

    def __call__(self, frames: torch.Tensor, fps: float) -> dict[str, torch.Tensor]:
        """pixel_values_videos [patches, C * T * P * P], video_grid_thw [1, 3], second_per_grid_ts [1]."""
        video = frames.permute(0, 3, 1, 2).float()  # [T, C, H, W]
        mean, std = self.mean.to(video.device), self.std.to(video.device)
        video = (video - mean[:, None, None]) / std[:, None, None]
        t, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -video.shape[0] % t:
            video = torch.cat((video, video[-1:].expand(pad, -1, -1, -1)))
        count, channels, height, width = video.shape
        grid_t, grid_h, grid_w = count // t, height // p, width // p
        patches = video.view(grid_t, t, channels, grid_h // m, m, p, grid_w // m, m, p)
        patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(grid_t * grid_h * grid_w, channels * t * p * p)
        return {
            "pixel_values_videos": patches,
            "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]]),
            "second_per_grid_ts": torch.tensor([t / fps]),
        }


def video_inputs(tokenizer: Tokenizer, pixels: VideoPixels, text: str, frames, fps: float, video_token_id: int):
    """The model inputs of chat `text` holding one video placeholder, for `frames` (a uint8
    tensor [T, H, W, 3] on the device they should be processed on): the placeholder repeated once
    per merged patch, as the processor expands it."""
    media = pixels(frames, fps)
    ids = torch.tensor(tokenizer.encode(text))
    places = (ids == video_token_id).nonzero().flatten()
    if len(places) != 1:
        raise ValueError(f"the prompt holds {len(places)} video placeholders, not one")
    repeats = torch.ones_like(ids)
    repeats[places] = int(media["video_grid_thw"].prod()) // pixels.merge_size**2
    ids = ids.repeat_interleave(repeats).unsqueeze(0).to(frames.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **media}


class ModelInputs(dict):
    """A request's model inputs by name, movable as transformers' `BatchFeature` is."""

    def to(self, device) -> ModelInputs:
        return ModelInputs({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


class NativeProcessor:
    """What the engine asks of transformers' processor, for a model folder read by qvl itself: the
    chat template, the tokenizer, the media token ids, and `inputs` (a request's model inputs).
    Raises OSError or ValueError where the folder lacks what it reads."""

    def __init__(self, folder: Path, image_token_id: int, video_token_id: int):
        self.folder = Path(folder)
        self.tokenizer = Tokenizer(self.folder)
        self.template = ChatTemplate(self.folder)
        self.pixels = VideoPixels(self.folder)
        self.image_token_id, self.video_token_id = image_token_id, video_token_id
        self._images = None  # transformers' processor behind an `InputBuilder`, made for the first image

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True):
        if tokenize or not add_generation_prompt:
            raise ValueError("the chat template is rendered as text, ending with the answer's start")
        return self.template.render(messages)

    def inputs(self, text: str, images, video: VideoFrames | None, device) -> ModelInputs:
        """The model inputs of chat `text` with its media, on `device`: a video's (frames sized as
        qvl's decoder sizes them) and a text's made here; images', and frames of other sizes, by
        transformers' processor, whose resize they need."""
        if images or (video is not None and not self.pixels.fits(video.frames.shape[1:3])):
            return ModelInputs(self._image_inputs()(text, images, video, device))
        if video is None:
            ids = torch.tensor([self.tokenizer.encode(text)], device=device)
            return ModelInputs(input_ids=ids, attention_mask=torch.ones_like(ids))
        frames = torch.from_numpy(video.frames).to(device)
        try:
            made = video_inputs(self.tokenizer, self.pixels, text, frames, video.sampled_fps, self.video_token_id)
        except ValueError as exc:  # questions cannot write it (`check_question`): the config's id is wrong
            from qvl.errors import ModelError

            raise ModelError(f"{exc}: {self.folder}/config.json's video_token_id is not its tokenizer's") from None
        return ModelInputs(made)

    def _image_inputs(self):
        if self._images is None:
            from qvl.engine.inputs import InputBuilder
            from qvl.engine.load import load_processor

            self._images = InputBuilder(load_processor(self.folder))
        return self._images


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _raise(message: str):
    raise ValueError(message)
