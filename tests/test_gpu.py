"""The app on a CUDA device (cuda + bf16) with the tiny model. Skipped where there is no CUDA.

The GPU host has no ffmpeg, so the video case hands the engine synthetic frames directly.
"""

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, json_lines

pytestmark = pytest.mark.gpu

HOUSE = Path(__file__).resolve().parent.parent / "examples" / "house.jpg"


def test_describe_runs_on_cuda_in_bf16(tiny_model_dir):
    result = invoke(
        "describe", HOUSE, "--model", "tiny", "--device", "cuda", "--dtype", "bfloat16", "--json", "--max-tokens", "8"
    )
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["error"] is None and record["tokens"]["generated"] >= 1
    assert "on cuda" in result.stderr


def test_auto_picks_cuda_and_bf16_and_video_frames_generate(tiny_model_dir):
    import torch

    from qvl.engine import Engine, Request, VideoFrames

    engine = Engine("tiny")
    assert engine.device == "cuda" and engine.dtype == torch.bfloat16
    assert next(engine.model.parameters()).device.type == "cuda"
    frames = np.random.default_rng(0).integers(0, 255, (16, 56, 84, 3), dtype=np.uint8)
    inputs = engine.prepare(Request("What happens?", video=VideoFrames(frames, sampled_fps=2.0)))
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([1.0])
    result = engine.generate(Request("What happens?", video=VideoFrames(frames, sampled_fps=2.0), max_new_tokens=6))
    assert 1 <= result.generated_tokens <= 6 and result.timings.prefill_s > 0


def test_video_inputs_made_on_the_gpu_equal_the_processors_own(tiny_model_dir):
    import torch

    from qvl.engine import Engine, Request
    from qvl.engine.inputs import video_kwargs

    engine = Engine("tiny")
    for count in (16, 7):
        request = Request("What happens?", video=_tiny_video(count))
        ours = engine.prepare(request)
        assert engine._inputs._text_keys is not None
        processor = engine.processor
        kwargs = video_kwargs(request.video, processor.video_processor, torch.device("cuda"))
        reference = processor(text=[engine.chat_text(request)], return_tensors="pt", **kwargs).to("cuda")
        assert set(ours) == set(reference)
        for key, value in reference.items():
            assert ours[key].device.type == "cuda" and torch.equal(ours[key], value), key


def test_a_warmed_up_engine_answers_as_a_cold_one(tiny_model_dir):
    from qvl.engine import Engine, Request

    request = Request("What happens?", video=_tiny_video(), max_new_tokens=12)
    cold = Engine("tiny").generate(request)
    warm = Engine("tiny")
    assert warm.warm_up() > 0
    assert warm.generate(request).tokens == cold.tokens
    # Warmed up for the request's size: its cache and decode graph are made ahead and used.
    sized = Engine("tiny")
    sized.warm_up(len(sized.prepare(request)["input_ids"][0]) + request.max_new_tokens)
    decoder = sized._fast.decoder
    assert decoder.graph is not None
    result = sized.generate(request)
    assert result.tokens == cold.tokens and sized._fast.decoder is decoder and result.timings.warmup_s < 0.01


def test_the_first_warm_up_on_a_machine_says_it_compiled_the_kernels(tiny_model_dir, tmp_path, monkeypatch):
    """A Triton cache of the test's own stands for a new machine: the first warm-up is told
    (`compiled_s`, which `qvl video` prints), the next one is not."""
    from qvl.engine import Engine

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    first = Engine("tiny")
    assert first.warm_up() > 0 and first.compiled_s > 0
    second = Engine("tiny")
    assert second.warm_up() > 0 and second.compiled_s == 0
    result = invoke("describe", HOUSE, "--model", "tiny", "--max-tokens", "2")
    assert result.exit_code == 0 and "compiled qvl's GPU kernels" not in result.stderr
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "another"))
    result = invoke("describe", HOUSE, "--model", "tiny", "--max-tokens", "2")
    assert result.exit_code == 0 and "compiled qvl's GPU kernels for this machine" in result.stderr


def test_the_first_psa_prompt_on_a_machine_says_it_compiled_the_kernels(tiny_model_dir, tmp_path, monkeypatch):
    """A Triton cache of the test's own stands for a new machine: the first prompt PSA runs on
    carries `psa["compiled"]` (which `qvl video` prints), a later one does not."""
    from qvl.engine import Engine, Request
    from qvl.psa import AttentionConfig

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    engine = Engine("tiny", device="cuda", psa=AttentionConfig.preset("dense", min_tokens=0))
    request = Request("What happens?", video=_tiny_video(32, 280, 392), max_new_tokens=4)
    assert engine.generate(request, psa=False).psa is None  # no PSA, no mark
    assert engine.generate(request).psa["compiled"] is True
    assert "compiled" not in engine.generate(request).psa


@pytest.fixture
def exact_fp32():
    """fp32 without TF32 anywhere: the stock tower's patch embedding is a Conv3d, and cuDNN's
    convolutions use TF32 by default, which the fast tower's matrix product does not."""
    import torch

    kept = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = kept


def _tiny_video(count: int = 16, h: int = 140, w: int = 196):
    from qvl.engine import VideoFrames

    return VideoFrames(np.random.default_rng(1).integers(0, 255, (count, h, w, 3), dtype=np.uint8), 2.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fast_path_graph_decode_matches_stock_generate(tiny_model_dir, exact_fp32, dtype):
    """The CUDA-graph decode against transformers' generate, greedy: identical tokens in fp32; in
    bf16 the fused projections round differently from the stock ones, so only the first 32."""
    from qvl.engine import Engine, Request

    engine = Engine("tiny", device="cuda", dtype=dtype, native=False)
    assert engine.fast_path_problem is None
    request = Request("What happens?", video=_tiny_video(), max_new_tokens=48)
    stock = engine.generate(request, fast=False).tokens
    fast = engine.generate(request).tokens
    assert engine._fast.decoder.graph is not None
    assert fast == stock if dtype == "float32" else fast[:32] == stock[:32]
    assert engine.generate(request).tokens == fast  # the captured graph replays the same answer


@pytest.mark.parametrize("chunk", [None, 100], ids=["one MLP product", "MLP in chunks"])
def test_fast_tower_matches_stock_in_bf16(tiny_model_dir, monkeypatch, chunk):
    import torch

    from qvl.engine import Engine, Request, vision
    from qvl.engine.vision import run_tower

    if chunk is not None:  # each chunk's down product written into its rows of the result
        monkeypatch.setattr(vision, "MLP_CHUNK", chunk)
    engine = Engine("tiny", device="cuda", dtype="bfloat16")
    inputs = engine.prepare(Request("x", video=_tiny_video(8, 252, 364)))
    visual = engine.model.model.visual
    with torch.inference_mode():
        ref = visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    ref = getattr(ref, "pooler_output", ref).float()
    out = run_tower(visual, inputs["pixel_values_videos"], inputs["video_grid_thw"]).float()
    assert float((out - ref).norm() / ref.norm()) < 1e-2


def test_a_chunked_mlp_holds_one_chunks_activations_at_a_time():
    """The chunks' [rows, 2 x width] products are the MLP's peak: the next chunk's is made only
    after the last one's is freed, so the peak is the result and one chunk's product."""
    import torch

    from qvl.engine.fuse import gated_mlp

    rows, chunk, hidden, width = 4096, 1024, 256, 2048
    torch.manual_seed(0)
    h = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    gate_up = torch.randn(2 * width, hidden, device="cuda", dtype=torch.bfloat16) / hidden**0.5
    down = torch.randn(hidden, width, device="cuda", dtype=torch.bfloat16) / width**0.5
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = gated_mlp(h, gate_up, None, down, None, chunk)
    torch.cuda.synchronize()
    held = torch.cuda.max_memory_allocated() - before
    one_chunk = chunk * 2 * width * h.element_size()
    assert held < out.numel() * out.element_size() + 1.5 * one_chunk
    whole = gated_mlp(h, gate_up, None, down, None, rows)
    assert torch.allclose(out.float(), whole.float(), rtol=2e-2, atol=2e-2)


def test_session_answers_as_fresh_stock_requests_on_cuda(tiny_model_dir, exact_fp32):
    """A session's questions through the CUDA graph, greedy, fp32: the tokens of a fresh request
    through qvl's fast path and through transformers' generate, a long question between two short ones."""
    from qvl.engine import Engine, Request

    engine = Engine("tiny", device="cuda", dtype="float32", native=False)
    video = _tiny_video()
    session = engine.session(video=video)
    for question in ("What happens?", "Describe the colours of every object in great detail, please.", "Why?"):
        request = Request(question, video=video, max_new_tokens=24)
        asked = session.ask(question, max_new_tokens=24).tokens
        assert asked == engine.generate(request).tokens
        assert asked == engine.generate(request, fast=False).tokens
    assert session.decoder.graph is not None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_all_level_one_psa_gives_the_dense_tokens_on_cuda(tiny_model_dir, dtype):
    """PSA with every block at full resolution is exact causal attention: greedy tokens as SDPA's
    (in bf16 the kernels' accumulation order differs from SDPA's: the first 16)."""
    from qvl.engine import Engine, Request
    from qvl.psa import AttentionConfig

    engine = Engine("tiny", device="cuda", dtype=dtype, psa=AttentionConfig.preset("dense", min_tokens=0))
    request = Request("What happens?", video=_tiny_video(32, 280, 392), max_new_tokens=24)
    with_psa = engine.generate(request)
    assert with_psa.psa is not None and with_psa.psa["density"] == 1.0
    dense = engine.generate(request, psa=False).tokens
    assert with_psa.tokens == dense if dtype == "float32" else with_psa.tokens[:16] == dense[:16]


def test_graph_decode_step_logits_match_stock_generate(tiny_model_dir, exact_fp32):
    """Each graph-replayed decode step's logits against transformers' generate's, fp32."""
    from engine_checks import assert_decode_logits_match_stock

    from qvl.engine import Engine, Request

    engine = Engine("tiny", device="cuda", dtype="float32", native=False)
    inputs = engine.prepare(Request("What happens?", video=_tiny_video()))
    assert_decode_logits_match_stock(engine, inputs, use_graph=True)


def test_weights_read_onto_the_gpu_during_the_imports_build_the_same_model(tiny_model_dir):
    import torch

    from qvl.engine.load import _pretrained_model, _weight_reader

    reader = _weight_reader(tiny_model_dir, "cuda", torch.float32)  # the tiny model is stored in fp32
    assert reader is not None
    model = _pretrained_model(tiny_model_dir, "cuda", torch.float32, None, reader)
    plain = _pretrained_model(tiny_model_dir, "cuda", torch.float32, None)
    mine, theirs = dict(model.named_parameters()), dict(plain.named_parameters())
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert all(p.is_cuda for p in mine.values())


def test_requests_decoded_together_on_the_gpu_match_each_alone(tiny_model_dir, exact_fp32):
    """The batch decoder's CUDA graph (per-row cache writes and lengths) against transformers'
    generate of each request, greedy, fp32: identical tokens; a smaller batch after it too, on the
    same graph."""
    from qvl.engine import Engine, Request

    engine = Engine("tiny", device="cuda", dtype="float32", native=False)
    requests = [
        Request("What happens?", video=_tiny_video(16), max_new_tokens=40),
        Request("Describe it.", video=_tiny_video(8, 112, 112), max_new_tokens=24),
        Request("Anything moving?", video=_tiny_video(4), max_new_tokens=33),
    ]
    stock = [engine.generate(r, fast=False).tokens for r in requests]
    assert [r.tokens for r in engine.generate_batch(requests)] == stock
    graph = engine._fast.batch_decoder.graph
    assert graph is not None
    assert [r.tokens for r in engine.generate_batch(requests[:2])] == stock[:2]
    assert engine._fast.batch_decoder.graph is graph  # the third row rested, nothing captured again
    # Made ahead on the CPU, as `qvl batch`'s workers make them: each carries its plan
    # (positions and the towers' plans), and the answers stay the same.
    ahead = [engine.prepare(r, device="cpu") for r in requests]
    assert all("qvl_prompt_plan" in inputs for inputs in ahead)
    assert [r.tokens for r in engine.generate_batch(requests, ahead)] == stock


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_engine_on_qvls_tree_gives_transformers_tokens_on_cuda(tiny_model_dir, exact_fp32, dtype):
    """qvl's own tree and inputs (`engine.native`), through the fast path with CUDA graphs, and a
    session over them: transformers' stock tokens, greedy (in bf16 the first 16: near-ties of
    random weights). In fp32 (the tiny model's stored dtype) the engine takes the tree by itself,
    its weights read by the `WeightReader`; a bf16 engine is asked for it."""
    from qvl.engine import Engine

    stock = Engine("tiny", device="cuda", dtype=dtype, native=False)
    engine = Engine("tiny", device="cuda", dtype=dtype, native=None if dtype == "float32" else True)
    assert engine.native and engine.fast_path_problem is None and not stock.native
    request = _tiny_video_request(max_new_tokens=24)
    expected = stock.generate(request, fast=False).tokens
    same = (lambda a: a == expected) if dtype == "float32" else (lambda a: a[:16] == expected[:16])
    assert same(engine.generate(request).tokens)
    assert engine._fast.decoder.graph is not None
    assert same(engine.session(video=request.video).ask(request.prompt, max_new_tokens=24).tokens)


def test_a_random_preset_takes_the_tree_on_one_gpu(tiny_model_dir):
    """random:3b on one GPU: qvl's tree by default, its random weights made on the card, answering
    through the fast path with a CUDA graph (tests/test_native.py compares its tokens with
    transformers' model holding the same weights)."""
    import torch

    from qvl.engine import Engine

    tree = Engine("random:3b", device="cuda", dtype="bfloat16")
    assert tree.native and tree.fast_path_problem is None
    assert len(tree.generate(_tiny_video_request(max_new_tokens=16)).tokens) >= 1
    assert tree._fast.decoder.graph is not None
    del tree
    torch.cuda.empty_cache()


def _tiny_video_request(max_new_tokens: int):
    from qvl.engine import Request

    return Request("What happens?", video=_tiny_video(16, 140, 196), max_new_tokens=max_new_tokens)
