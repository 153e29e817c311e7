"""PSA configuration files (`--psa-config`, `AttentionConfig.from_file`) and PSA logs (`--psa-log-dir`).

The CLI tests run the real app on the tiny model with a short generated video; a config sets
`min_tokens` small so PSA runs on its ~300-token prompt, and `block` small so that prompt has
enough blocks for a mask to matter.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_error, invoke, json_lines

from qvl.errors import OptionError
from qvl.psa import AttentionConfig
from qvl.psa_log import PSALog

SMALL = {"min_tokens": 32, "block": 32}
# Every visible block at full resolution: exactly dense attention, density 1.
ALL_LEVEL_1 = {"preset": "fast", "mask_ratios": {"1": [0.0, 1.0]}, **SMALL}
# A quarter of each row's blocks kept, the rest skipped (no similarity cap, so no block is raised).
QUARTER_TOML = """\
# the published example's names, plus qvl's own
mask_mode = "topk"
importance_method = "xattn"
xattn_stride = 8
causal_main = true
use_similarity_cap = false
min_tokens = 32
block = 32

[mask_ratios]
1 = [0.0, 0.25]
0 = [0.25, 1.0]
"""


def _cpu_video(tmp_path_factory) -> Path:
    from cli_helpers import make_video_or_skip

    return make_video_or_skip(tmp_path_factory.mktemp("psa-config") / "clip.mp4", seconds=2)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return _cpu_video(tmp_path_factory)


def _video(clip: Path, *args) -> list:
    return ["video", clip, "--frames", "4", "-m", "tiny", "--max-tokens", "1", "--no-cache", *args]


# --- the Python API -------------------------------------------------------------------------------


def test_json_and_toml_files_give_the_same_config(tmp_path):
    as_json = tmp_path / "psa.json"
    as_json.write_text(
        json.dumps(
            {
                "mask_mode": "topk",
                "importance_method": "xattn",
                "xattn_stride": 8,
                "causal_main": True,
                "use_similarity_cap": False,
                "mask_ratios": {"1": [0.0, 0.25], "0": [0.25, 1.0]},
                **SMALL,
            }
        )
    )
    as_toml = tmp_path / "psa.toml"
    as_toml.write_text(QUARTER_TOML)
    from_json, from_toml = AttentionConfig.from_file(as_json), AttentionConfig.from_file(as_toml)
    assert from_json == from_toml
    assert from_toml.mask_ratios == {1: (0.0, 0.25), 0: (0.25, 1.0)}  # string keys became levels
    assert from_toml.min_tokens == 32 and from_toml.block == 32 and not from_toml.use_similarity_cap
    assert from_toml.preset_name == "psa.toml"
    # The same settings from Python, integer keys and tuples as the published example writes them.
    direct = AttentionConfig(
        mask_mode="topk", mask_ratios={1: (0.0, 0.25), 0: (0.25, 1.0)}, use_similarity_cap=False, **SMALL
    )
    assert direct == from_toml
    assert direct.kernel_config(5).ratios == {1: (0.0, 0.25), 0: (0.25, 1.0)}


def test_a_preset_is_the_starting_point_and_fields_override_it():
    config = AttentionConfig.from_dict({"preset": "fast", "min_tokens": 7, "similarity_thresholds": [0.9, 0.8, 0.7]})
    fast = AttentionConfig.preset("fast")
    assert config.mask_ratios == fast.mask_ratios and config.mask_mode == "topk"
    assert config.min_tokens == 7 and config.similarity_thresholds == (0.9, 0.8, 0.7)
    assert config.kernel_config(0).thresholds == (0.9, 0.8, 0.7)
    assert AttentionConfig.from_dict({}) == AttentionConfig.preset("default")


def test_the_published_example_config_is_accepted_as_written():
    config = AttentionConfig(
        mask_mode="energybound",
        mask_ratios={1: (0.0, 0.7), 2: (0.7, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)},
        importance_method="xattn",
        xattn_stride=8,
        causal_main=True,
    )
    assert config.kernel_config(0).mode == "energybound"


# (id, settings, words the one error line must hold)
BAD = [
    ("unknown fields", {"mask_ratio": {}, "speed": 1}, ["'mask_ratio'", "'speed'", "allowed:", "mask_ratios"]),
    ("bad mode", {"mask_mode": "top-k"}, ["mask_mode", "'topk' or 'energybound'"]),
    ("bad method", {"importance_method": "flash"}, ["importance_method", "'xattn' or 'pooling'"]),
    ("level 3", {"mask_ratios": {"3": [0, 1]}}, ["mask_ratios", "level '3'", "0, 1, 2, 4, 8"]),
    ("gap", {"mask_ratios": {"1": [0, 0.5], "0": [0.6, 1]}}, ["mask_ratios", "tile [0, 1]", "0.6"]),
    ("overlap", {"mask_ratios": {"1": [0, 0.7], "0": [0.5, 1]}}, ["mask_ratios", "tile [0, 1]"]),
    ("short of 1", {"mask_ratios": {"1": [0, 0.9]}}, ["mask_ratios", "ends at 0.9"]),
    ("not from 0", {"mask_ratios": {"1": [0.1, 1]}}, ["mask_ratios", "starts at 0.1"]),
    ("band of text", {"mask_ratios": {"1": "all"}}, ["mask_ratios", "[start, end]"]),
    ("band reversed", {"mask_ratios": {"1": [1, 0]}}, ["mask_ratios", "0 <= start <= end <= 1"]),
    ("ratios a list", {"mask_ratios": [[0, 1]]}, ["mask_ratios", "table"]),
    ("stride 3", {"xattn_stride": 3}, ["xattn_stride", "power of two"]),
    ("stride > block", {"xattn_stride": 64, "block": 32}, ["xattn_stride", "at most block"]),
    ("block 100", {"block": 100}, ["block", "power of two >= 16"]),
    ("block as text", {"block": "128"}, ["block", "'128'"]),
    ("not causal", {"causal_main": False}, ["causal_main", "true"]),
    ("causal as text", {"causal_main": "yes"}, ["causal_main", "true or false"]),
    ("min_tokens -1", {"min_tokens": -1}, ["min_tokens", ">= 0"]),
    ("min_tokens 1.5", {"min_tokens": 1.5}, ["min_tokens", "whole number"]),
    ("two thresholds", {"similarity_thresholds": [0.7, 0.7]}, ["similarity_thresholds", "3 numbers"]),
    ("threshold 2", {"similarity_thresholds": [0.7, 0.7, 2]}, ["similarity_thresholds", "[-1, 1]"]),
    ("fp8 as text", {"importance_fp8": "auto"}, ["importance_fp8", "true, false or null"]),
    ("unknown preset", {"preset": "turbo"}, ["preset", "default, fast, balanced, dense"]),
]


@pytest.mark.parametrize(("settings", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_field_is_one_line_naming_it(settings, words):
    with pytest.raises(OptionError) as caught:
        AttentionConfig.from_dict(settings, source="PSA config x.json")
    message = str(caught.value)
    assert message.startswith("PSA config x.json: ") and "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("psa.json", '{"mask_mode": "topk",\n "min_tokens": 32,}', ["not valid JSON", "line 2"]),
        ("psa.toml", 'mask_mode = "topk"\nmin_tokens = \n', ["not valid TOML", "line 2"]),
        ("psa.json", "[1, 2]", ["one table"]),
        ("psa.yaml", "mask_mode: topk", [".json or .toml"]),
        ("psa.json", b"\xff\xfe{}", ["UTF-8"]),
    ],
    ids=["json syntax", "toml syntax", "json list", "yaml", "not utf-8"],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(OptionError) as caught:
        AttentionConfig.from_file(path)
    assert str(caught.value).startswith(f"PSA config {path}: ")
    for word in words:
        assert word in str(caught.value), caught.value


def test_toml_without_a_parser_says_what_to_install(tmp_path, monkeypatch):
    # Python 3.10 has no tomllib: without tomli the error names the package to install.
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    path = tmp_path / "psa.toml"
    path.write_text(QUARTER_TOML)
    with pytest.raises(OptionError, match="needs tomli"):
        AttentionConfig.from_file(path)


# --- the command line -----------------------------------------------------------------------------


def test_cli_json_config_reaches_the_engine(clip, tmp_path):
    config = tmp_path / "dense.json"
    config.write_text(json.dumps(ALL_LEVEL_1))
    result = invoke(*_video(clip, "--psa-config", config, "--json"))  # no --psa: the file implies it
    assert result.exit_code == 0, result.stderr
    (record,) = json_lines(result.stdout)
    psa = record["psa"]
    assert psa is not None and psa["tokens"] == record["tokens"]["prompt"] > 32  # PSA ran: min_tokens 32
    assert psa["density"] == 1.0 and psa["level_fraction"]["1"] == 1.0 and psa["per_layer_density"] == [1.0, 1.0]


def test_cli_toml_config_reaches_the_engine_and_logs_each_layer(clip, tmp_path):
    config = tmp_path / "quarter.toml"
    config.write_text(QUARTER_TOML)
    logs = tmp_path / "logs" / "psa"  # created, parents too
    result = invoke(*_video(clip, clip, "--psa-config", config, "--psa-log-dir", logs, "--json"))
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert len(records) == 2
    for record in records:
        psa = record["psa"]
        # A quarter of each row's ranks at level 1 plus the forced diagonal, sink and text blocks.
        assert 0.25 < psa["density"] < 0.75 and psa["level_fraction"]["0"] > 0.25
        assert set(psa["level_fraction"]) == {"0", "1", "2", "4", "8"} and psa["level_fraction"]["2"] == 0.0
    (log,) = logs.iterdir()
    assert log.name.startswith("psa-") and log.suffix == ".jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2 * 2  # two requests, two layers each
    assert len({line["request"] for line in lines}) == 2
    for line, record in zip(lines, [records[0]] * 2 + [records[1]] * 2):
        assert line["input"] == str(clip) and line["model"] == "tiny" and line["config"] == "quarter.toml"
        assert line["tokens"] == record["psa"]["tokens"] and line["layers"] == 2
        assert line["density"] == record["psa"]["per_layer_density"][line["layer"]]
        assert line["sparsity"] == pytest.approx(1 - line["density"], abs=1e-4)
        assert sum(line["level_fraction"].values()) == pytest.approx(1.0, abs=1e-3)
        assert line["time"].endswith("Z")
    assert [line["layer"] for line in lines] == [0, 1, 0, 1]


@pytest.mark.parametrize("command", ["describe", "video"])
def test_cli_short_prompt_logs_nothing(clip, tmp_path, command):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(image)
    logs = tmp_path / "logs" / "psa"
    args = ["describe", image, "-m", "tiny", "--max-tokens", "1"] if command == "describe" else _video(clip)
    result = invoke(*args, "--psa", "--psa-log-dir", logs, "--json")
    assert result.exit_code == 0, result.stderr
    assert json_lines(result.stdout)[0]["psa"] is None  # under min_tokens: PSA did not run
    assert not (tmp_path / "logs").exists()  # no empty day file, nor the folders for it


def test_psa_profile_takes_a_config_file(clip, tmp_path):
    config = tmp_path / "dense.json"
    config.write_text(json.dumps(ALL_LEVEL_1))
    args = ["psa-profile", clip, "-m", "tiny", "--frames", "4", "--repeat", "1", "--no-cache", "--psa-config", config]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    (report,) = json_lines(result.stdout)
    assert report["psa"]["density"] == 1.0 and report["preset"] == "dense.json"


def test_psa_preset_with_a_config_file(tmp_path):
    named = tmp_path / "named.toml"
    named.write_text('preset = "fast"\nmin_tokens = 32\n')
    line = assert_one_error(
        invoke("describe", tmp_path / "x.png", "--psa-config", named, "--psa-preset", "balanced"),
        contains="--psa-preset balanced",
        exit_code=2,
    )
    assert "'fast'" in line
    # A file that names no preset starts from --psa-preset's; the file's fields still win.
    from qvl.options import psa_config

    unnamed = tmp_path / "unnamed.toml"
    unnamed.write_text("min_tokens = 32\n")
    config = psa_config(False, "balanced", str(unnamed))
    assert config.mask_ratios == AttentionConfig.preset("balanced").mask_ratios and config.min_tokens == 32
    assert psa_config(False, "fast", str(named)).min_tokens == 32  # the same preset twice is no conflict


# --- logs written by several processes at once ----------------------------------------------------


def _append_many(folder: str, tag: int) -> None:
    log = PSALog(folder)
    rows = [
        {"layer": i, "density": 0.5, "sparsity": 0.5, "level_fraction": {"1": 0.5}, "pad": "x" * 20000}
        for i in range(3)
    ]
    for n in range(40):
        log.write(request=f"{tag}-{n}", label=f"proc {tag}", model="tiny", config="fast", tokens=9, layers=rows)


def test_parallel_writers_leave_whole_lines(tmp_path):
    # Lines far longer than a pipe's atomic size, from four processes at once.
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_append_many, args=(str(tmp_path), tag)) for tag in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    (log,) = tmp_path.iterdir()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 4 * 40 * 3
    by_request: dict = {}
    for index, line in enumerate(lines):
        by_request.setdefault(line["request"], []).append((index, line["layer"]))
    # One request's lines were one write: they sit together, in layer order.
    for rows in by_request.values():
        assert [layer for _, layer in rows] == [0, 1, 2] and rows[-1][0] - rows[0][0] == 2


def test_two_cli_runs_append_to_one_folder(tmp_path, tiny_model_dir):
    from PIL import Image

    image = tmp_path / "big.png"
    Image.new("RGB", (448, 448), (120, 40, 200)).save(image)
    config = tmp_path / "psa.json"
    config.write_text(json.dumps(ALL_LEVEL_1))
    logs = tmp_path / "logs"
    args = ["describe", image, image, "-m", "tiny", "--psa-config", config, "--psa-log-dir", logs]
    command = [sys.executable, "-m", "qvl", *map(str, args), "--max-tokens", "1", "--json", "-q"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert all(record["psa"] is not None for record in json_lines(out))
    (log,) = logs.iterdir()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2 * 2 * 2  # two runs, two images each, two layers per prefill
    assert len({line["request"] for line in lines}) == 4
