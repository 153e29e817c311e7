"""A deterministic tiny Qwen2.5-VL with random weights, built offline.

It has the real architecture (mRoPE text model, windowed vision tower, patch merger), a small
byte-level BPE tokenizer with the Qwen special tokens, the Qwen2.5-VL chat template and processor
configs, so the whole pipeline (processor, vision tower, prefill, decode) runs anywhere in well
under a second on a CPU. Its answers are random text.

The folder is built on first use under the qvl cache (``$QVL_CACHE_DIR``, else the platformdirs
user cache dir for "qvl") as ``models/tiny-<TINY_VERSION>`` and reused after. Change
``TINY_VERSION`` whenever the recipe changes so old folders are not reused.

    from qvl.tiny import tiny_model_dir
    path = tiny_model_dir()                      # builds once, then returns at once
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from qvl.architectures import VISION
from qvl.paths import cache_root

TINY_VERSION = "1"
TINY_SEED = 1234

# Special tokens of the Qwen2.5 tokenizer, in the real order (their ids follow the BPE vocabulary).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The chat template of Qwen/Qwen2.5-VL-*-Instruct (chat_template.json), unchanged.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The Qwen2 pre-tokenizer split (as in transformers' Qwen2Tokenizer).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

BPE_VOCAB_SIZE = 640  # 256 byte symbols + merges learned from the corpus (fewer if it runs out)

# Processor sizes: one LLM token is 28x28 pixels (over 2 frames for video). These budgets keep an
# image at 4..16 tokens and a video frame pair at 4..16 tokens, so a CPU run takes milliseconds.
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16 * 28 * 28
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

# Shapes of the tiny model. Text: head_dim 16, mrope_section sums to head_dim / 2.
TEXT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "use_sliding_window": False,
    "max_window_layers": 2,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "rope_theta": 1000000.0,
}
# Vision: the published tower's patching and windows at toy width (head_dim 16), one windowed
# block then one full-attention block.
VISION_CONFIG = {
    **VISION,
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "fullatt_block_indexes": [1],
    "out_hidden_size": TEXT_CONFIG["hidden_size"],
}

# A small built-in corpus for the BPE merges: English and some Chinese, a few KB.
CORPUS = """\
The picture shows a small red house beside a river. Two people walk along the path, and a dog runs
ahead of them. The sky is blue with a few white clouds. In the distance there are green hills and a
tall tree. A boat is tied to a wooden post near the water.
What is happening in this video? A man opens the door, looks around the room, picks up a book from
the table and sits down by the window. Later a woman comes in with two cups of tea. They talk for a
while, then both of them laugh. At the end of the clip the camera moves to the street outside.
Describe the image in one sentence. Count the cars in the picture. Read the text on the sign.
Summarize the video. When does the ball first appear? Which person is wearing a yellow jacket?
The answer is yes. The answer is no. There are three cats, four birds and one horse in the field.
Please describe the main events in order, with the time in seconds when each one starts.
The chart has a title, two axes and five bars. The tallest bar is blue and the shortest is orange.
This is a photo of a kitchen: a sink, a stove, a white fridge, plates, knives, forks and spoons.
The weather is sunny in the morning, cloudy in the afternoon and rainy in the evening.
A video is a sequence of frames; every frame is an image. The model reads frames in pairs, cuts
them into patches of fourteen pixels, merges four patches into one token and reads the question.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 24 30 60 64 100 128 256 448 1000 2024 2025 3.14 0.5 1/2
Time stamps: 00:00, 00:05, 00:10, 01:30, 12:45. Sizes: 448x448, 1280x720, 1920x1080.
Punctuation, quotes and code: "hello", 'world', (a, b), [1, 2], {key: value}, a + b = c; x * y.
def main(): print("hello world") # return 0 if ok else 1
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore.
I can see a person riding a bicycle on a road, a bus stop and a traffic light that is green.
It's a cat. It isn't a dog. They're playing. We've seen it. I'm sure. You'll see. He'd know.
这张图片显示了一座红色的小房子，旁边有一条河。两个人沿着小路散步，一只狗跑在他们前面。
天空是蓝色的，有几朵白云。远处有绿色的山和一棵高高的树。水边的木桩上系着一条小船。
这个视频里发生了什么？一个男人打开门，环顾房间，从桌子上拿起一本书，然后坐在窗边。
请用一句话描述这张图片。请总结这个视频。图片中有几辆汽车？穿黄色夹克的人是谁？
答案是肯定的。答案是否定的。田野里有三只猫、四只鸟和一匹马。
视频是一系列的帧，每一帧都是一张图片。模型把帧切成小块，再合并成词元。
今天早上天气晴朗，下午多云，晚上下雨。我们在厨房里看到了水槽、炉子和白色的冰箱。
"""


def tiny_model_dir(cache_root_dir: Path | None = None) -> Path:
    """Return the tiny model folder, building it on first use.

    The folder is ``<cache root>/models/tiny-<TINY_VERSION>``. A build goes into a fresh temporary
    folder next to it and is renamed into place in one step, so a half-built folder is never seen
    and concurrent builders cannot corrupt each other (the loser of the race throws its copy away).
    """
    root = Path(cache_root_dir) if cache_root_dir is not None else cache_root()
    final = root / "models" / f"tiny-{TINY_VERSION}"
    if _is_complete(final):
        return final
    with _BUILD_LOCK:  # threads share torch's global RNG; processes are kept apart by the rename
        if not _is_complete(final):
            try:
                _build_into(final)
            except OSError as exc:
                raise not_writable(final.parent, exc) from None
    return final


def not_writable(folder: Path, exc: OSError):
    """The one-line ModelError for a cache folder the tiny model cannot be built in."""
    from qvl.errors import ModelError

    reason = exc.strerror or type(exc).__name__
    return ModelError(f"cannot build the tiny model in {folder} ({reason}): set QVL_CACHE_DIR to a writable folder")


def _build_into(final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{uuid.uuid4().hex[:8]}-", dir=final.parent))
    try:
        build_tiny_model(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        try:
            os.rename(tmp, final)  # atomic; fails if another builder got there first
        except OSError:
            if not _is_complete(final):
                if final.exists():  # an incomplete leftover from an older, non-atomic writer
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_DONE_MARKER = ".qvl-tiny-complete"
_BUILD_LOCK = threading.RLock()


def _is_complete(path: Path) -> bool:
    return (path / _DONE_MARKER).is_file()


def _remove_stale_builds(final: Path, max_age_s: float = 3600.0) -> None:
    """Delete temporary build folders left by killed builders (older than an hour)."""
    now = time.time()
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def build_tokenizer():
    """Train the byte-level BPE tokenizer (deterministic) and add the Qwen special tokens.

    The pipeline matches transformers' Qwen2Tokenizer: NFC, the Qwen2 regex split, byte-level.
    Returns a ``tokenizers.Tokenizer``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def build_tiny_model(out_dir: Path | str) -> Path:
    """Write the tiny model, tokenizer and processor configs into ``out_dir`` (created if needed).

    Same bytes on every build with the same library versions: fixed seed, fixed corpus, sorted JSON.
    The completion marker is written last.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _BUILD_LOCK:
        _build(out)
    (out / _DONE_MARKER).write_text(TINY_VERSION + "\n")
    return out


def _build(out: Path) -> None:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    vocab_size = _round_up(tok.get_vocab_size(), 64)  # padded like Qwen's embedding tables

    text = dict(TEXT_CONFIG)
    text.update(
        vocab_size=vocab_size,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(VISION_CONFIG),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(state)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-second build needs no "Writing model shards" bar
    try:
        model.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()

    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
            "do_sample": False,
        },
    )
    _write_tokenizer(out, tok)
    _write_processor(out)


def _write_tokenizer(out: Path, tok) -> None:
    tok.save(str(out / "tokenizer.json"), pretty=False)
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "added_tokens_decoder": added,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            "split_special_tokens": False,
            "model_max_length": 32768,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    # The real repos ship chat_template.json for the processor; keep that layout.
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})


def _write_processor(out: Path) -> None:
    common = {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": VISION_CONFIG["patch_size"],
        "temporal_patch_size": VISION_CONFIG["temporal_patch_size"],
        "merge_size": VISION_CONFIG["spatial_merge_size"],
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_resize": True,
        "do_convert_rgb": True,
        "processor_class": "Qwen2_5_VLProcessor",
    }
    _write_json(out / "preprocessor_config.json", {**common, "image_processor_type": "Qwen2VLImageProcessor"})
    _write_json(
        out / "video_preprocessor_config.json",
        {
            **common,
            "video_processor_type": "Qwen2VLVideoProcessor",
            "do_sample_frames": False,
        },
    )


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m
