"""Bad input, one row each, through the real CLI: one `qvl: error:` line, the exit code, no traceback,
and nothing left in the frame cache. Every file is real (written by Pillow or ffmpeg here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import assert_one_error, error_lines, invoke, make_video, run_subprocess
from fs_helpers import uncreatable_dir, unwritable_dir
from PIL import Image

from qvl.media.cache import FrameCache


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-input")
    out = {"missing": d / "missing.jpg", "empty": d / "empty.jpg", "no_images": d / "no-images"}
    out["empty"].write_bytes(b"")
    out["no_images"].mkdir()
    (out["no_images"] / "notes.txt").write_text("no pictures here\n")
    out["photo"] = d / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out["photo"])
    out["corrupt_image"] = d / "corrupt.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(out["corrupt_image"])
    out["corrupt_image"].write_bytes(out["corrupt_image"].read_bytes()[:70])
    out["text_video"] = d / "notes.mp4"
    out["text_video"].write_text("this is not a video\n" * 20)
    good = make_video(d / "good.mp4", 2)
    out["good_video"] = good
    out["truncated_video"] = d / "truncated.mp4"  # moov at the end, cut off: no index at all
    out["truncated_video"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["empty_video"] = d / "empty.mp4"
    out["empty_video"].write_bytes(b"")
    configs = {
        "gap_config": ("gap.toml", 'mask_mode = "topk"\nmask_ratios = { 1 = [0.0, 0.5], 0 = [0.6, 1.0] }\n'),
        "level3_config": ("level3.json", '{"mask_ratios": {"3": [0.0, 1.0]}}'),
        "unknown_config": ("unknown.json", '{"mask_ratio": {"1": [0.0, 1.0]}}'),
        "broken_config": ("broken.json", '{\n  "mask_mode": "topk",\n  "block": 64,\n}\n'),
        "broken_toml": ("broken.toml", 'mask_mode = "topk"\nblock = \n'),
        "stride_config": ("stride.toml", "xattn_stride = 12\n"),
        "type_config": ("type.json", '{"min_tokens": "32"}'),
        "fast_config": ("fast.toml", 'preset = "fast"\n'),
    }
    for key, (name, text) in configs.items():
        out[key] = d / name
        out[key].write_text(text)
    return out


# (id, args with {placeholders}, exit code, words in the error line, words that must not be there)
ROWS = [
    ("missing image", ["describe", "{missing}"], 1, ["missing.jpg", "no such file"], []),
    ("empty image", ["describe", "{empty}"], 1, ["empty.jpg", "empty"], []),
    ("corrupt image", ["describe", "{corrupt_image}"], 1, ["corrupt.png", "truncated"], []),
    ("folder without images", ["describe", "{no_images}"], 1, ["no images"], []),
    ("missing video", ["video", "{missing}"], 1, ["missing.jpg", "no such file"], []),
    ("empty video", ["video", "{empty_video}"], 1, ["empty.mp4", "empty"], []),
    ("truncated video", ["video", "{truncated_video}"], 1, ["truncated"], []),
    ("text file as video", ["video", "{text_video}"], 1, ["notes.mp4", "not a video"], []),
    ("image given to video", ["video", "{photo}"], 1, ["still image", "qvl describe"], ["--end"]),
    ("video given to describe", ["describe", "{good_video}"], 1, ["is a video", "qvl video"], []),
    ("image given to video, dry run", ["video", "{photo}", "--dry-run"], 1, ["still image"], ["--end"]),
    ("bad --device", ["describe", "{photo}", "--device", "tpu"], 2, ["--device"], []),
    ("bad --dtype", ["describe", "{photo}", "--dtype", "int3"], 2, ["--dtype"], []),
    ("--frames 0", ["video", "{good_video}", "--frames", "0"], 2, ["--frames"], []),
    ("--fps -1", ["video", "{good_video}", "--fps", "-1"], 2, ["--fps"], []),
    ("--start after --end", ["video", "{good_video}", "--start", "10", "--end", "5"], 2, ["--start", "--end"], []),
    ("--start past the end", ["video", "{good_video}", "--start", "10"], 1, ["--start", "past the end"], []),
    ("unknown preset", ["describe", "{photo}", "-m", "13b"], 2, ["unknown model preset", "13b"], []),
    ("unknown random size", ["describe", "{photo}", "-m", "random:9b"], 2, ["random:9b"], []),
    (
        "random model too big for the memory",
        ["describe", "{photo}", "-m", "random:72b", "--device", "cpu"],
        2,
        ["random:72b needs", "GiB", "random:3b"],
        ["--dtype bfloat16"],  # half of 72b's fp32 weights fits no machine this runs on
    ),
    # Generation options are checked before any media is read or any model loads.
    ("--max-tokens 0", ["describe", "{photo}", "--max-tokens", "0"], 2, ["--max-tokens", "at least 1"], []),
    ("video --max-tokens 0", ["video", "{good_video}", "--max-tokens", "0"], 2, ["--max-tokens"], []),
    ("infer --max-tokens 0", ["infer", "--input", "{photo}", "--max-tokens", "0"], 2, ["--max-tokens"], []),
    ("--temperature -1", ["describe", "{photo}", "--temperature", "-1"], 2, ["--temperature"], []),
    ("--temperature nan", ["video", "{good_video}", "--temperature", "nan"], 2, ["--temperature"], []),
    ("--top-p 1.5", ["describe", "{photo}", "--top-p", "1.5"], 2, ["--top-p"], []),
    ("--top-p 0", ["video", "{good_video}", "--top-p", "0"], 2, ["--top-p"], []),
    ("--seed -1", ["describe", "{photo}", "--seed", "-1"], 2, ["--seed"], []),
    ("infer --type audio", ["infer", "--type", "audio", "--input", "{photo}"], 2, ["--type", "audio"], []),
    ("psa-profile --min-tokens -1", ["psa-profile", "{good_video}", "--min-tokens", "-1"], 2, ["--min-tokens"], []),
    ("psa-profile --out a file", ["psa-profile", "{good_video}", "--out", "{photo}"], 2, ["--out", "not a folder"], []),
    ("video --min-tokens -1", ["video", "{good_video}", "--psa", "--min-tokens", "-1"], 2, ["--min-tokens"], []),
    ("--min-tokens without PSA", ["describe", "{photo}", "--min-tokens", "64"], 2, ["--min-tokens", "--psa"], []),
    ("--psa-preset turbo", ["video", "{good_video}", "--psa", "--psa-preset", "turbo"], 2, ["turbo"], []),
    # PSA config files and logs: checked before any media is read or any model loads.
    ("--psa-config missing", ["video", "{good_video}", "--psa-config", "{missing}.toml"], 2, ["no such file"], []),
    ("--psa-config gap", ["video", "{good_video}", "--psa-config", "{gap_config}"], 2, ["mask_ratios", "tile"], []),
    (
        "--psa-config level 3",
        ["describe", "{photo}", "--psa-config", "{level3_config}"],
        2,
        ["level", "0, 1, 2, 4, 8"],
        [],
    ),
    (
        "--psa-config unknown field",
        ["describe", "{photo}", "--psa-config", "{unknown_config}"],
        2,
        ["'mask_ratio'", "allowed:", "mask_ratios"],
        [],
    ),
    (
        "--psa-config bad JSON",
        ["video", "{good_video}", "--psa-config", "{broken_config}"],
        2,
        ["not valid JSON", "line 4"],
        [],
    ),
    (
        "--psa-config bad TOML",
        ["video", "{good_video}", "--psa-config", "{broken_toml}"],
        2,
        ["not valid TOML", "line 2"],
        [],
    ),
    (
        "--psa-config stride",
        ["psa-profile", "{good_video}", "--psa-config", "{stride_config}"],
        2,
        ["xattn_stride"],
        [],
    ),
    (
        "--psa-config wrong type",
        ["describe", "{photo}", "--psa-config", "{type_config}"],
        2,
        ["min_tokens", "'32'"],
        [],
    ),
    ("--psa-config is a folder", ["describe", "{photo}", "--psa-config", "{no_images}"], 2, [".json or .toml"], []),
    (
        "--psa-config with another --psa-preset",
        ["video", "{good_video}", "--psa-config", "{fast_config}", "--psa-preset", "balanced"],
        2,
        ["--psa-preset balanced", "'fast'"],
        [],
    ),
    (
        "--psa-log-dir without PSA",
        ["describe", "{photo}", "--psa-log-dir", "{no_images}"],
        2,
        ["--psa-log-dir", "--psa"],
        [],
    ),
    (
        "--psa-log-dir under a file",
        ["video", "{good_video}", "--psa", "--psa-log-dir", "{photo}/logs"],
        2,
        ["--psa-log-dir", "cannot write"],
        [],
    ),
    (
        "infer --psa-log-dir under a file",
        ["infer", "--input", "{photo}", "--psa", "--psa-log-dir", "{photo}/logs"],
        2,
        ["--psa-log-dir", "cannot write"],
        [],
    ),
    # A question is checked before any model loads: its text alone decides.
    (
        "a question among several writes the media's token",
        ["describe", "{photo}", "-p", "What?", "-p", "<|image_pad|> here", "-p", "Why?"],
        2,
        ["--prompt '<|image_pad|> here' holds <|image_pad|>", "only the media's place"],
        ["What?", "Why?"],
    ),
    ("video --prompt with a media token", ["video", "{good_video}", "-p", "a <|vision_start|>"], 2, ["--prompt"], []),
    (
        "an empty --prompt among several",
        ["describe", "{photo}", "-p", "What?", "-p", " "],
        2,
        ["--prompt is empty"],
        [],
    ),
    (
        "--prompt with a media token through --server",
        ["describe", "{photo}", "-p", "<|video_pad|>", "--server", "http://127.0.0.1:9"],
        2,
        ["--prompt '<|video_pad|>'"],
        ["reach"],
    ),
    (
        "psa-profile --prompt with a media token",
        ["psa-profile", "{photo}", "-p", "<|vision_end|>"],
        2,
        ["--prompt"],
        [],
    ),
    ("infer --prompt with a media token", ["infer", "--input", "{photo}", "-p", "<|image_pad|>"], 2, ["--prompt"], []),
    ("preprocess: nothing there", ["preprocess", "{missing}"], 1, ["no such file"], []),
    ("preprocess: --frames 0", ["preprocess", "{good_video}", "--frames", "0"], 2, ["--frames"], []),
]

# A model name given where the CLI only checks it after the media: describe loads the image first.
MODEL_ARGS = {
    "describe": ["-m", "tiny"],
    "video": ["-m", "tiny"],
    "infer": ["-m", "tiny"],
    "psa-profile": ["-m", "tiny"],
}


def _args(template: list[str], files: dict[str, Path]) -> list[str]:
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in template]
    if "-m" not in args:
        args += MODEL_ARGS.get(args[0], [])
    return args


def _cache_is_clean(root: Path) -> None:
    cache = FrameCache(root)
    assert cache.entries() == [] and cache.stale() == [], list(root.rglob("*"))


@pytest.mark.parametrize(("template", "code", "words", "absent"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input(files, tmp_path, template, code, words, absent):
    cache_dir = tmp_path / "frames"
    args = _args(template, files)
    if args[0] in ("video", "preprocess", "psa-profile"):
        args += ["--cache-dir", str(cache_dir)]
    result = invoke(*args)
    line = assert_one_error(result, contains=words[0], exit_code=code)
    assert "loaded " not in result.stderr  # refused before a model loaded, not after
    for word in words[1:]:
        assert word.lower() in line.lower(), line
    for word in absent:
        assert word not in line, line
    _cache_is_clean(cache_dir)


def test_a_psa_log_dir_the_file_system_refuses_is_one_line_before_the_model_loads(files):
    # Root passes every permission check, yet /proc takes no new folder: only trying tells.
    args = ["describe", files["photo"], "-m", "tiny", "--psa", "--min-tokens", "0", "--max-tokens", "2"]
    result = invoke(*args, "--psa-log-dir", uncreatable_dir())
    assert_one_error(result, contains="--psa-log-dir", exit_code=2)
    assert result.stdout == "" and "loaded " not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["describe", "{photo}"],
        ["video", "{good_video}", "--frames", "2"],
        ["chat", "{photo}"],
        ["batch", "{photo}", "--out", "{out}"],
        ["psa-profile", "{photo}"],
        ["serve", "--port", "0"],
        ["bench", "--frames", "2"],
    ],
    ids=lambda args: args[0],
)
def test_an_unknown_psa_preset_is_refused_with_or_without_psa(files, tmp_path, args):
    # The model folder does not exist: the preset's error comes before anything loads or is read.
    if args[0] == "serve":
        pytest.importorskip("uvicorn")  # else the missing serve extra is the one error line
    named = {**files, "out": tmp_path / "results.jsonl"}
    args = [a.format(**{k: str(v) for k, v in named.items()}) for a in args]
    result = invoke(*args, "--psa-preset", "bogus", "--model", tmp_path / "no-model")
    line = assert_one_error(result, contains="unknown PSA preset 'bogus'", exit_code=2)
    assert "default, fast, balanced, dense" in line and result.stdout == ""
    assert not named["out"].exists()


def test_a_prompt_of_bytes_that_are_not_utf8_is_refused_before_the_model(files):
    """`-p $'\\xff'` from a shell: one line naming the question, exit 2, no model loaded."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "qvl", "describe", str(files["photo"]), "-m", "tiny", "-p", "why", "-p", b"\xffok"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert_one_error(result, contains="--prompt '\\udcffok' holds bytes that are not UTF-8 text", exit_code=2)
    assert "loaded " not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "command, name, other", [("video", "a photo's.jpg", "describe"), ("describe", "my clip.mp4", "video")]
)
def test_the_command_a_wrong_input_suggests_is_one_a_shell_runs(files, tmp_path, command, name, other):
    """The suggested command quotes the path, so that copying it into a shell names the file."""
    import shlex
    import shutil

    path = tmp_path / name
    shutil.copy(files["photo"] if command == "video" else files["good_video"], path)
    line = assert_one_error(invoke(command, path, "-m", "tiny", "--max-tokens", "1"), contains="use qvl", exit_code=1)
    assert shlex.split(line.split(": use ", 1)[1]) == ["qvl", other, str(path)]


# --- an unwritable cache folder: one line naming the folder and a fix that exists ------------------


def test_unwritable_cache_dir_for_the_tiny_model(files, tmp_path, monkeypatch):
    root = unwritable_dir(tmp_path)
    monkeypatch.setenv("QVL_CACHE_DIR", str(root))
    line = assert_one_error(invoke("describe", files["photo"], "-m", "tiny"), contains=str(root), exit_code=2)
    assert "QVL_CACHE_DIR" in line


def test_unwritable_cache_dir_for_download_tiny(tmp_path, monkeypatch):
    root = unwritable_dir(tmp_path)
    monkeypatch.setenv("QVL_CACHE_DIR", str(root))
    line = assert_one_error(invoke("download", "tiny"), contains=str(root), exit_code=2)
    assert "QVL_CACHE_DIR" in line


def test_unwritable_cache_dir_for_video(files, tmp_path, tiny_model_dir):
    root = unwritable_dir(tmp_path)
    result = invoke("video", files["good_video"], "--frames", "2", "-m", "tiny", "--cache-dir", root)
    line = assert_one_error(result, contains="not writable", exit_code=2)  # an option to change, as usage.md says
    assert str(root) in line and "--no-cache" in line  # qvl video has --no-cache
    assert "give --cache-dir a writable folder" in line and "QVL_CACHE_DIR" not in line  # the folder named is the fix


def test_unwritable_cache_dir_for_preprocess(files, tmp_path):
    root = unwritable_dir(tmp_path)
    line = assert_one_error(
        invoke("preprocess", files["good_video"], "--frames", "2", "--cache-dir", root),
        contains="not writable",
        exit_code=2,
    )
    assert str(root) in line and "--cache-dir" in line
    assert "--no-cache" not in line  # preprocess has no --no-cache


def test_download_offline_gives_advice_that_works(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = assert_one_error(invoke("download", "7b"), contains="HF_HUB_OFFLINE", exit_code=2)
    assert "qvl download" not in line and "--model" in line


def test_sixteen_bit_png_is_not_white(tmp_path, tiny_model_dir):
    import numpy as np

    from qvl.media.images import open_image

    path = tmp_path / "sixteen.png"
    Image.fromarray(np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (16, 1))).save(path)
    assert np.asarray(open_image(str(path))).mean() < 140  # clipped, it was ~253
    result = invoke("describe", path, "-m", "tiny", "--max-tokens", "2")
    assert result.exit_code == 0, result.stderr


def test_cache_size_reports_leftovers_apart(tmp_path):
    import json

    from qvl.media import cache as cache_mod

    leftover = tmp_path / "c" / "tmp" / f"{'ab' * 20}.{cache_mod._HOST}-999999999.00000000"
    leftover.mkdir(parents=True)
    (leftover / "000000.jpg").write_bytes(b"x" * 5000)
    record = json.loads(invoke("cache", "size", "--cache-dir", tmp_path / "c", "--json").stdout)
    assert record["entries"] == 0 and record["stale_bytes"] == 5000
    text = invoke("cache", "size", "--cache-dir", tmp_path / "c").stdout
    assert "left over" in text


def test_an_error_line_that_announces_its_reason_takes_the_reason_along():
    """A library's message whose first line ends in a colon (transformers' config validation):
    the line says what is wrong, not just where."""
    from qvl.errors import first_line

    error = ValueError("Validation error for field 'hidden_size':\n  TypeError: expected int, got NoneType\n")
    assert first_line(error) == "Validation error for field 'hidden_size': TypeError: expected int, got NoneType"
    assert first_line(ValueError("one line\nmore")) == "one line" and first_line(ValueError()) == "ValueError"


def test_a_checkpoint_lacking_a_weight_is_one_line_and_nothing_else(tiny_model_dir, tmp_path):
    """transformers' own load report (a multi-line table with terminal colours) stays unsaid:
    qvl's line names the weight, even with -q."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "lacking"
    shutil.copytree(tiny_model_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors.pop(next(name for name in tensors if name.endswith("layers.0.mlp.up_proj.weight")))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    photo = tmp_path / "red.png"
    Image.new("RGB", (56, 56), "red").save(photo)
    result = run_subprocess("describe", photo, "-m", folder, "--device", "cpu", "-q")
    assert_one_error(result, contains="lacks model.language_model.layers.0.mlp.up_proj.weight", exit_code=2)
    assert result.stderr.strip().splitlines() == error_lines(result.stderr)


def test_a_random_model_too_big_suggests_bfloat16_only_where_half_fits(tiny_model_dir, monkeypatch):
    import torch

    from qvl.engine import load
    from qvl.engine.native import config_from_dict
    from qvl.errors import ModelError
    from qvl.models import resolve_model

    resolved = resolve_model("random:7b")
    config = config_from_dict(load.random_config("7b", resolved.path))
    need = load._parameter_count(config) * 4
    for free, suggested in ((need * 3 // 4, True), (need // 4, False)):
        monkeypatch.setattr(load, "free_memory", lambda device, free=free: (free, "this machine"))
        with pytest.raises(ModelError, match="random:7b needs") as refused:
            load._check_random_fits(resolved, config, "cpu", torch.float32)
        assert ("--dtype bfloat16" in str(refused.value)) == suggested
