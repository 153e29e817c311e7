"""PSA in the app: the engine's prefill through qvl.psa, on the tiny model (CPU: the blocked torch path)."""

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_error, invoke, json_lines

from qvl.engine import Engine, Request, VideoFrames
from qvl.psa import AttentionConfig, PSAStats, replace_psa_attention_qwen2vl

FRAMES = np.random.default_rng(0).integers(0, 255, (32, 112, 112, 3), dtype=np.uint8)
REQUEST = Request("Describe this video.", video=VideoFrames(FRAMES, sampled_fps=2.0), max_new_tokens=4)


@pytest.fixture(scope="module")
def sdpa_engine(tiny_model_dir):
    return Engine("tiny")


def _logits(engine, scope=None):
    inputs = engine.prepare(REQUEST)
    with torch.no_grad(), (scope or engine._psa_scope)(inputs["input_ids"]) as stats:
        return engine.model(**inputs).logits, stats


def test_dense_preset_is_exactly_sdpa(sdpa_engine):
    psa_engine = Engine("tiny", psa=AttentionConfig.preset("dense", block=16, min_tokens=64))
    expected, _ = _logits(sdpa_engine)
    got, stats = _logits(psa_engine)
    assert stats.summary()["density"] == 1.0 and stats.summary()["layers"] == 2
    error = ((got.float() - expected.float()).norm() / expected.float().norm()).item()
    # fp32 on the CPU: the same function; bf16 on a GPU: Triton kernels against SDPA's rounding.
    assert error < (1e-5 if got.dtype == torch.float32 else 2e-2), error


def test_fast_preset_skips_work_and_still_answers(sdpa_engine):
    psa_engine = Engine("tiny", psa=AttentionConfig.preset("fast", block=16, min_tokens=64))
    result = psa_engine.generate(REQUEST)
    assert result.generated_tokens >= 1
    summary = result.psa
    assert summary["tokens"] == result.prompt_tokens and summary["layers"] == 2
    assert 0 < summary["density"] < 0.9 and summary["sparsity"] == pytest.approx(1 - summary["density"], abs=1e-3)
    assert sum(summary["level_fraction"].values()) == pytest.approx(1.0, abs=1e-3)
    expected, _ = _logits(sdpa_engine)
    got, _ = _logits(psa_engine)
    assert torch.isfinite(got).all() and not torch.allclose(got, expected)


def test_short_prompts_keep_sdpa(sdpa_engine):
    psa_engine = Engine("tiny", psa=AttentionConfig.preset("fast"))  # min_tokens 16384 > this prompt
    assert psa_engine.generate(REQUEST).psa is None


def test_published_entry_point_switches_only_the_language_model(tiny_model_dir):
    engine = Engine("tiny")
    model = replace_psa_attention_qwen2vl(engine.model, AttentionConfig(block=16, min_tokens=64))
    assert model.config.text_config._attn_implementation == "qvl_psa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    inputs = engine.prepare(REQUEST)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_cli_psa_json_and_bad_preset(tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(image)
    result = invoke("describe", image, "--model", "tiny", "--psa", "--json", "--max-tokens", "2")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert "psa" in record and record["psa"] is None  # a short prompt: PSA left it to SDPA
    text = invoke("describe", image, "--model", "tiny", "--psa", "--max-tokens", "2")
    assert text.exit_code == 0 and "psa: not used for this prompt" in text.stderr
    assert "psa:" not in text.stdout  # the note is on stderr, the answer alone on stdout
    assert_one_error(invoke("describe", image, "--model", "tiny", "--psa", "--psa-preset", "turbo"), contains="turbo")


def test_a_psa_preset_alone_turns_psa_on(tmp_path):
    """`--psa-preset fast` without `--psa` runs PSA (a budget asked for is not dense attention in
    silence); `--min-tokens 0` makes it run on this short prompt."""
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(image)
    args = ("describe", image, "--model", "tiny", "--json", "--max-tokens", "2", "--min-tokens", "0")
    result = invoke(*args, "--psa-preset", "fast")
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["psa"] is not None and record["psa"]["tokens"] == record["tokens"]["prompt"]
    assert_one_error(invoke(*args), contains="--min-tokens needs --psa")


def test_stats_summary_of_nothing_is_none():
    assert PSAStats().summary() is None


def test_psa_profile_takes_the_video_options_of_qvl_video(tmp_path):
    # Checked before anything is read or loaded: one line, exit 2.
    for flag, value in (("--seek", "sideways"), ("--min-frames", "0"), ("--max-download-mb", "0")):
        result = invoke("psa-profile", tmp_path / "clip.mp4", flag, value, "--model", "tiny")
        assert_one_error(result, contains=flag, exit_code=2)


def test_psa_profile_times_both_and_reports_each_layer(tmp_path):
    pytest.importorskip("av")  # the GPU host has neither PyAV nor ffmpeg
    from qvl.errors import InputError
    from qvl.media.ffmpeg import ffmpeg_exe

    try:
        ffmpeg_exe()
    except InputError:
        pytest.skip("no ffmpeg")
    from cli_helpers import make_video

    video = make_video(tmp_path / "clip.mp4", seconds=4)
    args = [
        "psa-profile",
        video,
        "--model",
        "tiny",
        "--frames",
        "8",
        "--min-tokens",
        "32",
        "--psa-preset",
        "fast",
        "--repeat",
        "1",
        "--cache-dir",
        tmp_path / "cache",
    ]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    (report,) = json_lines(result.stdout)
    assert report["prefill_ms"]["psa"] > 0 and report["prefill_ms"]["sdpa"] > 0
    assert len(report["per_layer"]) == 2 and report["psa"]["tokens"] == report["tokens"]
    table = invoke(*args)
    assert table.exit_code == 0 and "density" in table.stdout and "prefill: PSA" in table.stdout
    assert report["cache"] == "miss"  # --cache-dir: the frames went into this cache, not the user's
    assert json_lines(invoke("cache", "size", "--cache-dir", tmp_path / "cache", "--json").stdout)[0]["entries"] == 1


def test_cli_psa_on_a_long_cpu_prompt_keeps_memory_bounded(tmp_path, tiny_model_dir):
    # 128 frames are ~9K prompt tokens: the references' L x L scores took over 10 GB here; the
    # blocked CPU path keeps the whole run (model, frames, vision tower) near 1.5 GB.
    import json
    import subprocess
    import sys

    from cli_helpers import make_video

    video = make_video(tmp_path / "clip.mp4", seconds=16)
    script = (
        "import os, resource, sys\n"
        "exit = os._exit\n"  # video ends its process with os._exit: the peak is written just before
        "os._exit = lambda code: (sys.stderr.write(f'maxrss_kib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n'),"
        " sys.stderr.flush(), exit(code))\n"
        "from qvl.start import main\n"
        "sys.argv = ['qvl', *sys.argv[1:]]\n"
        "main()\n"
    )
    args = [
        "video",
        video,
        "--frames",
        "128",
        "--psa",
        "--min-tokens",
        "0",
        "-m",
        "tiny",
        "--json",
        "--max-tokens",
        "2",
    ]
    args.append("--no-cache")
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["error"] is None and record["frames"] == 128
    assert record["psa"] is not None and record["psa"]["tokens"] > 8000  # PSA ran on the whole prompt
    peak_gib = int(done.stderr.split("maxrss_kib")[-1].split()[0]) / 2**20
    assert peak_gib < 3, f"peak memory {peak_gib:.1f} GiB"


@pytest.mark.parametrize("preset", ["dense", "fast"])
def test_fast_path_prefills_with_psa_as_the_stock_path_does(tiny_model_dir, preset):
    """The fast path's own prefill runs the language model with PSA too: the same statistics and
    the same greedy tokens as transformers' generate (dense: exactly SDPA's answer)."""
    engine = Engine("tiny", device="cpu", psa=AttentionConfig.preset(preset, block=16, min_tokens=64))
    stock = engine.generate(REQUEST, fast=False)
    fast = engine.generate(REQUEST, fast=True)
    assert fast.psa is not None and fast.psa == stock.psa
    assert fast.tokens == stock.tokens


@pytest.mark.parametrize("preset", ["dense", "fast"])
def test_qvls_own_tree_prefills_with_psa_as_transformers_model_does(tiny_model_dir, preset):
    """PSA on `engine.native`'s tree (its attention function, SDPA its fallback): the statistics
    and greedy tokens of transformers' model through its own generate."""
    config = AttentionConfig.preset(preset, block=16, min_tokens=64)
    ours = Engine("tiny", device="cpu", psa=config, native=True)
    assert ours.native
    stock = Engine("tiny", device="cpu", psa=config).generate(REQUEST, fast=False)
    mine = ours.generate(REQUEST)
    assert mine.psa is not None and mine.psa == stock.psa
    assert mine.tokens == stock.tokens
