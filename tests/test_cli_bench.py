"""`qvl bench` through the real CLI on the tiny model: one JSON object per frame count, the table,
and bad options stopped before any model loads."""

import pytest
from cli_helpers import assert_one_error, invoke, json_lines

FAST = ("--model", "tiny", "--frames", "4,8", "--max-tokens", "4", "--repeat", "1")
PATH_KEYS = {
    "vision_s",
    "ttft_s",
    "frames_ttft_s",
    "tokens_per_s",
    "answer_s",
    "cold_ttft_s",
    "cold_answer_s",
    "warmup_s",
    "generated",
    "peak_gpu_gb",
}


@pytest.fixture(scope="module")
def bench_json(tiny_model_dir):
    result = invoke("bench", *FAST, "--json")
    assert result.exit_code == 0, result.stderr
    return result


def test_bench_json_is_one_object_per_frame_count_with_every_stage(bench_json):
    records = json_lines(bench_json.stdout)
    assert [r["frames"] for r in records] == [4, 8]
    for record in records:
        assert {"model", "card", "torch", "transformers", "date", "device", "dtype"} <= record.keys()
        assert record["model"] == "tiny" and record["frame_size"] == [448, 448]
        assert record["extract_s"] > 0 and record["processor_s"] > 0 and record["prompt_tokens"] > 0
        for path in ("stock", "qvl"):
            assert PATH_KEYS <= record[path].keys(), record[path]
            assert record[path]["vision_s"] > 0 and record[path]["answer_s"] > 0
            expected = record["processor_s"] + record[path]["ttft_s"]  # from decoded frames
            assert record[path]["frames_ttft_s"] == pytest.approx(expected, abs=2e-3)
            assert record[path]["peak_gpu_gb"] is None  # on the CPU
        greedy = record["greedy"]
        assert 0 <= greedy["same_leading_tokens"] <= min(greedy["stock_tokens"], greedy["qvl_tokens"])
        assert record["vision_rel_rmse"] < 1e-3  # the two towers compute the same thing
    assert records[1]["prompt_tokens"] > records[0]["prompt_tokens"]
    assert "tiny model" in bench_json.stderr and "synthetic video" in bench_json.stderr


def test_bench_table_prints_every_stage(tiny_model_dir):
    result = invoke("bench", *FAST[:3], "4", *FAST[4:], "--quiet")
    assert result.exit_code == 0, result.stderr
    for stage in ("frame extraction", "processor", "vision tower", "time to first token", "decode", "peak GPU"):
        assert stage in result.stdout
    assert "speed-up" in result.stdout and "greedy tokens" in result.stdout
    assert not result.stderr.strip()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "64,abc"], "--frames"),
        (["--frames", ""], "--frames"),
        (["--frames", "0"], "--frames"),
        (["--frames", "7"], "--frames"),
        (["--frames", "64,100000"], "at most 2,048"),
        (["--repeat", "0"], "--repeat"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--device", "tpu"], "--device"),
        (["--psa", "--psa-preset", "nope"], "preset"),
    ],
    ids=["not a number", "empty", "zero", "odd", "too many", "repeat 0", "max-tokens 0", "device", "psa preset"],
)
def test_bad_options_are_one_line_before_any_model(monkeypatch, args, message):
    import qvl.engine

    def no_model(*_, **__):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(qvl.engine, "Engine", no_model)
    result = invoke("bench", "--model", "no-such-model", *args)
    assert_one_error(result, contains=message, exit_code=2)
    assert not result.stdout
