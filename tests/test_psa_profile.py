"""`qvl psa-profile`: the real CLI on the tiny model (CPU, the blocked reference path of PSA)."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
from cli_helpers import assert_one_error, invoke, json_lines
from fs_helpers import uncreatable_dir

from qvl.psa_profile import ProfileOptions, first_difference


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from cli_helpers import make_video_or_skip

    return make_video_or_skip(tmp_path_factory.mktemp("video") / "clip.mp4", seconds=4)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "a.png"
    Image.new("RGB", (448, 448), (10, 200, 30)).save(path)
    return path


def _profile(source, *args, env=None):
    common = ["--model", "tiny", "--frames", "8", "--min-tokens", "32", "--repeat", "1", "--tokens", "6", "--no-cache"]
    result = invoke("psa-profile", source, *common, *args, env=env)
    assert result.exit_code == 0, result.stderr
    return result


def test_json_has_per_layer_fidelity_and_the_token_comparison(clip, tmp_path):
    out = tmp_path / "profile"
    result = _profile(clip, "--psa-preset", "fast", "--json", "--out", out, "--layers", "0,last", "--heads", "0,3")
    (report,) = json_lines(result.stdout)
    assert report["psa"] is not None and report["psa"]["tokens"] == report["tokens"] > 128
    assert [row["layer"] for row in report["per_layer"]] == [0, 1]
    for row in report["per_layer"]:
        assert 0 < row["density"] < 1 and sum(row["level_fraction"].values()) == pytest.approx(1, abs=1e-3)
        assert row["attention_ms"]["psa"] > 0 and row["attention_ms"]["sdpa"] > 0
        assert 0 < row["rel_error"] < 1 and math.isfinite(row["rel_error"])  # blocks were pooled or skipped
    assert report["fidelity"]["max_rel_error"] == max(row["rel_error"] for row in report["per_layer"])
    assert report["prefill_ms"]["psa"] > 0 and report["ttft_ms"]["psa"] > 0 and report["ttft_ms"]["sdpa"] > 0
    generated = report["generated"]
    assert 1 <= len(generated["psa"]) <= 6 and 1 <= len(generated["sdpa"]) <= 6
    assert generated["first_difference"] == first_difference(generated["psa"], generated["sdpa"])
    assert "masks" not in report  # the masks go to profile.json only
    assert "timings say little about real models" in result.stderr  # the tiny model's timings

    # --out: profile.json (the report plus the kept masks) and the documented pictures
    saved = json.loads((out / "profile.json").read_text())
    assert saved["per_layer"] == report["per_layer"]
    assert [(m["layer"], m["head"]) for m in saved["masks"]] == [(0, 0), (0, 3), (1, 0), (1, 3)]
    blocks = math.ceil(report["tokens"] / 128)
    levels = saved["masks"][0]["levels"]
    assert len(levels) == blocks and all(v in (0, 1, 2, 4, 8) for row in levels for v in row)
    assert all(levels[i][i] == 1 for i in range(blocks))  # the diagonal block stays at full resolution
    if importlib.util.find_spec("matplotlib") is None:  # the `test` extra brings it; a bare install may not
        assert sorted(p.name for p in out.iterdir()) == ["profile.json"] and "qvl[plots]" in result.stderr
        return
    names = {"mask-layer0-head0.png", "mask-layer0-head3.png", "mask-layer1-head0.png", "mask-layer1-head3.png"}
    for name in names | {"density-by-layer.png"}:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "wrote 6 files" in result.stderr


def test_a_dense_preset_matches_sdpa(clip):
    report = json_lines(_profile(clip, "--psa-preset", "dense", "--json").stdout)[0]
    assert report["psa"]["density"] == 1.0
    assert all(row["rel_error"] < 1e-5 for row in report["per_layer"])  # fp32 on the CPU: the same function
    assert report["generated"]["psa"] == report["generated"]["sdpa"] and report["generated"]["first_difference"] is None


def test_an_image_goes_through_the_image_loader_and_the_table_reads(image):
    report = json_lines(_profile(image, "--min-tokens", "8", "--json").stdout)[0]
    assert "frames" not in report and report["tokens"] > 8 and len(report["per_layer"]) == 2
    table = _profile(image, "--min-tokens", "8", env={"COLUMNS": "80"})  # a pipe's width
    assert "density" in table.stdout and "error" in table.stdout and "greedy answers" in table.stdout
    assert "qvl:" not in table.stdout  # notes and warnings stay on stderr
    # The title, the table, the caption and the summary: each whole on its own line(s), nothing
    # wrapped onto a stray line however long the path or the caption.
    lines = table.stdout.splitlines()
    assert lines[0] == f"{image}: {report['tokens']:,} tokens, PSA preset default"
    assert all(line[0] in "┏┃┡│└" for line in lines[1:-2]), lines
    assert lines[-2] == "error: relative RMSE of PSA's attention output against SDPA on the same layer input"
    assert lines[-1].startswith("prefill: PSA ") and "; greedy answers: " in lines[-1]


def test_a_short_prompt_says_psa_did_not_run(image):
    result = _profile(image, "--min-tokens", "100000")
    assert "PSA did not run" in result.stdout
    report = json_lines(_profile(image, "--min-tokens", "100000", "--json").stdout)[0]
    assert report["psa"] is None and all(row["rel_error"] is None for row in report["per_layer"])


def test_without_matplotlib_out_still_writes_profile_json(image, tmp_path):
    out = tmp_path / "profile"
    script = "import sys\nsys.modules['matplotlib'] = None\nfrom qvl.start import main\nsys.argv = ['qvl', *sys.argv[1:]]\nmain()\n"
    args = ["psa-profile", image, "-m", "tiny", "--min-tokens", "8", "--max-tokens", "2", "--repeat", "1", "--out", out]
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["profile.json"]
    assert [line for line in done.stderr.splitlines() if "qvl[plots]" in line] == [
        "qvl: pictures need matplotlib: pip install 'qvl[plots]'"
    ]


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--layers", "top"),
        ("--layers", "0,,1"),
        ("--layers", "-1"),
        ("--heads", "x"),
        ("--heads", "-2"),
        ("--tokens", "0"),
        ("--repeat", "0"),
    ],
)
def test_bad_values_are_one_line_before_anything_loads(tmp_path, flag, value):
    # The input does not exist and the model folder is not one: the option is reported first.
    result = invoke("psa-profile", tmp_path / "missing.mp4", flag, value, "--model", tmp_path / "no-model")
    assert_one_error(result, contains=flag, exit_code=2)


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("psa-profile", tmp_path / "missing.mp4", "--out", tmp_path / "file", "--model", tmp_path / "none")
    assert_one_error(result, contains="--out", exit_code=2)


def test_an_out_folder_that_cannot_be_made_is_one_line_before_anything_loads(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke(
        "psa-profile", tmp_path / "missing.mp4", "--out", tmp_path / "file" / "sub", "--model", tmp_path / "none"
    )
    assert_one_error(result, contains="cannot write there", exit_code=2)


def test_an_out_folder_the_file_system_refuses_is_one_line_before_anything_loads(image):
    # Root passes every permission check, yet /proc takes no new folder: only trying tells.
    result = invoke("psa-profile", image, "-m", "tiny", "--min-tokens", "8", "--out", uncreatable_dir())
    assert_one_error(result, contains="--out", exit_code=2)
    assert result.stdout == "" and "random weights" not in result.stderr  # no profile, no model


def test_a_picture_that_cannot_be_written_is_one_line_and_leaves_no_part_of_itself(image, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    (out / "density-by-layer.png").mkdir(parents=True)  # in the way of the last picture
    common = ["--model", "tiny", "--min-tokens", "8", "--repeat", "1", "--tokens", "2", "--no-cache"]
    result = invoke("psa-profile", image, *common, "--json", "--out", out)
    assert_one_error(result, contains="density-by-layer.png", exit_code=2)
    assert json_lines(result.stdout)[0]["per_layer"]  # the report itself is out before the files
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    "flag, value, message", [("--layers", "first,7", "layers 0..1"), ("--heads", "9", "heads 0..")]
)
def test_layers_and_heads_beyond_the_model_are_one_line_and_leave_no_out_folder(image, tmp_path, flag, value, message):
    out = tmp_path / "new" / "profile"
    result = invoke("psa-profile", image, "-m", "tiny", "--min-tokens", "8", flag, value, "--out", out)
    assert_one_error(result, contains=message, exit_code=2)
    assert list(tmp_path.iterdir()) == []  # neither --out nor the folder above it was made


@pytest.mark.parametrize(
    "model, flag, value, message",
    [
        ("tiny", "--layers", "0,99", "layers 0..1, not 99"),
        ("random:7b", "--layers", "last,28", "layers 0..27, not 28"),
        ("3b", "--heads", "16", "heads 0..15, not 16"),  # not downloaded: its published shape
    ],
)
def test_layers_and_heads_beyond_a_known_shape_are_refused_before_the_media_is_read(
    tmp_path, model, flag, value, message
):
    result = invoke("psa-profile", tmp_path / "missing.png", "-m", model, flag, value)
    assert_one_error(result, contains=message, exit_code=2)


def test_a_model_folders_shape_is_read_from_its_config_json(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    text = config.pop("text_config")
    (folder / "config.json").write_text(json.dumps({**config, **text, "num_hidden_layers": 5}))  # the older layout
    result = invoke("psa-profile", tmp_path / "missing.png", "-m", folder, "--layers", "5")
    assert_one_error(result, contains="layers 0..4, not 5", exit_code=2)


def test_layer_names_and_first_difference():
    assert ProfileOptions.parse(layers="first, middle,last,3").layer_indices(28) == [0, 3, 14, 27]
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
