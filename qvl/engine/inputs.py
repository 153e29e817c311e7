"""A request's model inputs: transformers' processor, with a video prompt tokenized before its
placeholder is expanded and the frames handed over on the model's device.

The processor writes one `<|video_pad|>` per video token into the prompt and tokenizes the result:
for 256 frames at 448x448 that is 32,768 special tokens through the tokenizer, more than half of
the processor's time. The placeholder is a special token, which the tokenizer splits on, so the
tokens around it do not depend on how many there are: `InputBuilder` tokenizes the prompt with one
placeholder and repeats it in the ids (and in every other per-token row). The frames go through
the processor's own video processor; on a CUDA device they are copied there first, as they are,
so that its channel reorder runs on the GPU rather than as a copy on the CPU.

The shortcut is checked once per builder against the processor's own output for a small video; if
they differ (a transformers release that builds its inputs otherwise), every request takes the
processor's whole path.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qvl.engine import VideoFrames


class InputBuilder:
    """Builds model inputs from chat text and decoded media with `processor`."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, text: str, images, video: VideoFrames | None, device):
        """The processor's output for `text` with `images` and `video`, on `device`."""
        if video is not None and not images and self._text_keys is not None:
            inputs = self._expanded(text, video, device, self._text_keys)
            if inputs is not None:
                return inputs
        kwargs: dict[str, Any] = {}
        if images:
            kwargs["images"] = list(images)
        if video is not None:
            kwargs.update(video_kwargs(video, self.processor.video_processor, device))
        return self.processor(text=[text], return_tensors="pt", **kwargs).to(device)

    def _expanded(self, text: str, video: VideoFrames, device, text_keys: tuple[str, ...]):
        import torch
        from transformers import BatchFeature

        # One plain copy of the uint8 frames to the device: the processor would first reorder them
        # to channels-first on the CPU. Not through pinned memory: a one-shot process would pay
        # pinning a new buffer of the frames' size (about as long as the copy) on its one request.
        frames = torch.from_numpy(video.frames).to(device)
        kwargs = video_kwargs(video, self.processor.video_processor, device)
        kwargs["videos"] = [frames]
        media = self.processor(text=None, return_tensors="pt", **kwargs)
        merge = self.processor.video_processor.merge_size**2
        counts = [int(n) // merge for n in media["video_grid_thw"].prod(-1)]
        rows = self._text_rows(text, counts, text_keys)
        return None if rows is None else BatchFeature({**rows, **media}).to(device)

    def _text_rows(self, text: str, video_counts: list[int], text_keys: tuple[str, ...]) -> dict | None:
        """The per-token rows (`text_keys`: `input_ids`, `attention_mask`, ...) with each video placeholder repeated
        `video_counts[i]` times, as the processor's own expansion would tokenize them; None where the
        prompt's placeholders do not match the videos (a prompt that writes one itself): the
        processor decides what that means."""
        import torch

        processor = self.processor
        ids = processor.tokenizer([text])["input_ids"]
        rows = {"input_ids": ids, "attention_mask": [[1] * len(ids[0])]}
        if "mm_token_type_ids" in text_keys:
            rows["mm_token_type_ids"] = processor.create_mm_token_type_ids(ids)
        ids_row = torch.tensor(ids[0])
        places = (ids_row == processor.video_token_id).nonzero().flatten()
        if len(places) != len(video_counts):
            return None
        repeats = torch.ones_like(ids_row)
        repeats[places] = torch.tensor(video_counts, dtype=repeats.dtype)
        return {key: torch.tensor(value).repeat_interleave(repeats, dim=1) for key, value in rows.items()}

    @functools.cached_property
    def _text_keys(self) -> tuple[str, ...] | None:
        """The processor's per-token rows where the shortcut gives its inputs exactly for a small
        video, else None (checked once: ~10 ms)."""
        try:
            return self._probe()
        except Exception:  # any difference in behaviour means: use the processor's path
            return None

    def _probe(self) -> tuple[str, ...] | None:
        import numpy as np
        import torch

        from qvl.engine import VideoFrames

        side = 2 * self.processor.video_processor.patch_size * self.processor.video_processor.merge_size
        frames = np.arange(4 * side * side * 3, dtype=np.int64).reshape(4, side, side, 3) % 251
        video = VideoFrames(frames.astype(np.uint8), sampled_fps=2.0)
        text = f"What happens in<|vision_start|>{self.processor.video_token}<|vision_end|>?"
        cpu = torch.device("cpu")
        kwargs = video_kwargs(video, self.processor.video_processor, cpu)
        reference = self.processor(text=[text], return_tensors="pt", **kwargs)
        media = self.processor(text=None, return_tensors="pt", **kwargs)
        text_keys = tuple(k for k in reference if k not in media)
        ours = self._expanded(text, video, cpu, text_keys)
        same = (
            ours is not None and set(ours) == set(reference) and all(_equal(ours[k], reference[k]) for k in reference)
        )
        return text_keys if same else None


def _equal(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    return a == b


def video_kwargs(video: VideoFrames, video_processor, device) -> dict[str, Any]:
    """The processor's keywords for one clip of already-sized frames."""
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
    if device.type == "cuda":
        # Rescale, normalise and patchify on the GPU: for hundreds of frames the CPU's share of
        # these per-pixel passes is larger than the vision tower's.
        videos_kwargs["device"] = device
    return {"videos": [video.frames], "video_metadata": [metadata], "videos_kwargs": videos_kwargs}
