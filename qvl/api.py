"""The Python API, under the names of the published Qwen2.5-VL example it grew from.

    from qvl import QwenVLInference
    model = QwenVLInference(model_name="7b")
    print(model.inference_image("photo.jpg", "What is in this picture?"))

Each call returns the answer as a string; `last_result` keeps the full `Result` (token counts,
timings) of the latest call.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from qvl.engine import Engine, Request, Result

DEFAULT_IMAGE_PROMPT = "Describe this image."
DEFAULT_VIDEO_PROMPT = "Describe this video."


class QwenVLInference:
    """Load a model once and ask it about images and videos.

    model_name: preset (3b, 7b, 72b, tiny), Hub id or local folder; None means $QVL_MODEL, else 7b.
    device, dtype: as on the command line ("auto", "cuda", "cpu"; "auto", "bfloat16", ...).
    use_psa: run the language model's prefill with Pyramid Sparse Attention; psa_config
        (a `qvl.psa.AttentionConfig`, or the path of a .json/.toml file of its fields) sets its
        budget, the published default otherwise.
    cache: use the frame cache for videos (default True); cache_dir overrides its location.
    """

    def __init__(
        self,
        model_name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        use_psa: bool = False,
        psa_config=None,
        max_new_tokens: int = 512,
        cache: bool = True,
        cache_dir: str | Path | None = None,
    ):
        psa = None
        if use_psa or psa_config is not None:
            from qvl.psa import AttentionConfig

            if isinstance(psa_config, (str, Path)):
                psa_config = AttentionConfig.from_file(psa_config)
            psa = psa_config or AttentionConfig.preset("default")
        self.engine = Engine(model_name, device=device, dtype=dtype, psa=psa)
        self.max_new_tokens = max_new_tokens
        self.cache, self.cache_dir = cache, cache_dir
        self.last_result: Result | None = None

    def inference_image(
        self, image_path: str, prompt: str = DEFAULT_IMAGE_PROMPT, max_new_tokens: int | None = None
    ) -> str:
        return self.inference_multi_image([image_path], prompt, max_new_tokens)

    def inference_multi_image(
        self, image_paths: Sequence[str], prompt: str = DEFAULT_IMAGE_PROMPT, max_new_tokens: int | None = None
    ) -> str:
        from qvl.media.images import open_image

        started = time.perf_counter()
        images = [open_image(str(path)) for path in image_paths]
        request = Request(prompt=prompt, images=images, max_new_tokens=max_new_tokens or self.max_new_tokens)
        return self._answer(request, time.perf_counter() - started)

    def inference_video(
        self,
        video_path: str,
        prompt: str = DEFAULT_VIDEO_PROMPT,
        preprocess_frames: int | None = None,
        max_new_tokens: int | None = None,
        **video_options,
    ) -> str:
        """`preprocess_frames` is the number of frames to sample; other keywords go to `VideoOptions`
        (fps, start, end, min_frames, max_frames, max_pixels, total_pixels)."""
        from qvl.media.video import VideoOptions
        from qvl.runner import frame_cache, load_clip

        started = time.perf_counter()
        options = VideoOptions(frames=preprocess_frames, **video_options)
        media = load_clip(str(video_path), options, frame_cache(self.cache_dir, enabled=self.cache))
        request = Request(prompt=prompt, video=media.video, max_new_tokens=max_new_tokens or self.max_new_tokens)
        return self._answer(request, time.perf_counter() - started)

    def session(
        self,
        *,
        video: str | None = None,
        images: Sequence[str] = (),
        frames: int | None = None,
        headroom: int | None = None,
        **video_options,
    ):
        """The media read and prefilled once, for `session.ask(prompt)` (each question on its own)
        or `session.chat(text)` (a conversation; `session.reset()` starts it over) any number of
        times (`qvl.engine.session.Session`; each returns a `Result`, its `.text` the answer):

            session = model.session(video="clip.mp4", frames=64)
            for question in ("What happens?", "Who speaks?"):
                print(session.ask(question).text)
            print(session.chat("What happens?").text, session.chat("And then?").text)

        headroom: tokens of questions and answers kept past the media (the session's default
        otherwise); a conversation longer than that has to be reset.
        """
        from qvl.media.images import open_image

        media_video = None
        if video is not None:
            from qvl.media.video import VideoOptions
            from qvl.runner import frame_cache, load_clip

            options = VideoOptions(frames=frames, **video_options)
            media_video = load_clip(str(video), options, frame_cache(self.cache_dir, enabled=self.cache)).video
        opened = [open_image(str(path)) for path in images]
        return self.engine.session(images=opened, video=media_video, **({"headroom": headroom} if headroom else {}))

    def _answer(self, request: Request, media_s: float) -> str:
        """The answer; `last_result` keeps the whole `Result`, with the time the media took to open."""
        self.last_result = self.engine.generate(request)
        self.last_result.timings.media_s = media_s
        return self.last_result.text
