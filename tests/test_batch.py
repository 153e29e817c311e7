"""`qvl batch` end to end on the tiny model: a 40-row manifest of real images and videos with bad
rows among them, a job killed with SIGKILL and resumed, --retry-failed, bad options, and the
same job on a local Ray cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_error, error_lines, invoke, json_lines
from PIL import Image

from qvl.bench import write_video

TINY = ["-m", "tiny", "--max-tokens", "4", "--no-cache", "--workers", "2"]
BAD = {"missing": "no such file", "corrupt-image": "not an image", "corrupt-video": "not a video"}


def _image(path: Path, seed: int) -> Path:
    Image.new("RGB", (56 + 4 * (seed % 5), 48), (seed * 37 % 256, seed * 91 % 256, 120)).save(path)
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """40 rows: 22 images, 15 videos (8 frames, 64x64, sampled at 4 frames; some with their own frames, prompt or
    max_tokens), a missing file, a corrupt image and a corrupt video; paths relative to it."""
    folder = tmp_path_factory.mktemp("batch")
    (folder / "media").mkdir()
    rows = []
    for i in range(22):
        _image(folder / "media" / f"img{i}.png", i)
        rows.append({"id": f"img-{i}", "input": f"media/img{i}.png"})
    for i in range(15):
        write_video(folder / "media" / f"clip{i}.mp4", 1.0, side=64, fps=8, seed=i)
        row = {"id": f"clip-{i}", "input": f"media/clip{i}.mp4"}
        if i % 3 == 0:
            row["frames"] = 6
        if i % 5 == 0:
            row["prompt"] = "What moves?"
        if i == 7:
            row["max_tokens"] = 2
        rows.append(row)
    (folder / "media" / "corrupt.png").write_bytes(b"not a png at all")
    (folder / "media" / "corrupt.mp4").write_bytes(b"\x00" * 64)
    rows += [
        {"id": "missing", "input": "media/nowhere.mp4"},
        {"id": "corrupt-image", "input": "media/corrupt.png"},
        {"id": "corrupt-video", "input": "media/corrupt.mp4"},
    ]
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def finished(manifest, tmp_path_factory, tiny_model_dir) -> tuple[Path, object]:
    """The whole manifest run once in-process: (results file, CLI result)."""
    out = tmp_path_factory.mktemp("finished") / "results.jsonl"
    return out, invoke("batch", manifest, "--out", out, *TINY)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().decode().splitlines()]


def _ids(manifest: Path) -> list[str]:
    return [json.loads(line)["id"] for line in manifest.read_text().splitlines()]


def test_every_row_gets_one_record_and_bad_rows_fail_in_band(manifest, finished):
    out, result = finished
    assert result.exit_code == 1, result.stderr  # some rows failed
    assert result.stdout == ""  # the records went to --out
    records = _records(out)
    assert [r["id"] for r in records] == _ids(manifest)  # one model here: in the manifest's order
    by_id = {r["id"]: r for r in records}
    for row_id, message in BAD.items():
        assert message in by_id[row_id]["error"] and by_id[row_id]["text"] is None
    lines = error_lines(result.stderr)
    assert len(lines) == len(BAD)
    for row_id in BAD:  # each line names its row: the input, and the id where it is another name
        (line,) = [line for line in lines if f"(id {row_id}): " in line]
        assert line.startswith(f"qvl: error: {by_id[row_id]['input']} (id {row_id}): ")
    assert "Traceback" not in result.stderr
    good = [r for r in records if r["id"] not in BAD]
    assert all(r["error"] is None and isinstance(r["text"], str) for r in good)
    assert "37 of 40 rows answered, 3 failed" in result.stderr
    # Per-row options override the command's.
    assert by_id["clip-0"]["frames"] == 6 and by_id["clip-1"]["frames"] == 4  # 2 fps, at least 4
    assert by_id["clip-5"]["prompt"] == "What moves?" and by_id["clip-1"]["prompt"] == "Describe this video."
    assert by_id["clip-7"]["tokens"]["generated"] <= 2
    assert by_id["img-3"]["input"] == str(manifest.parent / "media" / "img3.png")


def test_records_are_describe_and_video_json_records_with_an_id(manifest, finished):
    by_id = {r["id"]: r for r in _records(finished[0])}
    media = manifest.parent / "media"
    video = json_lines(invoke("video", media / "clip4.mp4", "--json", *TINY[:-2]).stdout)[0]
    image = json_lines(invoke("describe", media / "img4.png", "--json", *TINY[:2], *TINY[2:4]).stdout)[0]
    for ours, theirs in ((by_id["clip-4"], video), (by_id["img-4"], image)):
        assert list(ours) == ["id", *theirs]
        assert ours["text"] == theirs["text"]  # the same request: the same greedy answer


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_job_killed_with_sigkill_resumes_with_exactly_one_line_per_id(manifest, finished, tmp_path):
    out = tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qvl", "batch", str(manifest), "--out", str(out), *TINY, "--max-tokens", "24"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while _line_count(out) < 12:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no results appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed = _records(out)  # whole lines only: each one parses
    assert 12 <= len(killed) < 40
    with out.open("ab") as fh:  # as if the kill had landed inside a write
        fh.write(b'{"id": "img-0", "input": "med')
    again = invoke("batch", manifest, "--out", out, *TINY)
    assert again.exit_code == 1, again.stderr
    assert f"{len(killed)} rows already in" in again.stderr
    records = _records(out)
    assert sorted(r["id"] for r in records) == sorted(_ids(manifest))  # exactly once each
    assert records[: len(killed)] == killed  # what was there stays as it was
    done = {r["id"] for r in killed}
    expected = {r["id"]: r["text"] for r in _records(finished[0]) if r["id"] not in done}
    assert {r["id"]: r["text"] for r in records[len(killed) :]} == expected


def test_retry_failed_runs_only_the_failed_rows_again(tmp_path, tiny_model_dir):
    _image(tmp_path / "a.png", 1)
    write_video(tmp_path / "b.mp4", 1.0, side=64, fps=8)
    (tmp_path / "todo.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in ({"input": "a.png"}, {"input": "late.png"}, {"input": "b.mp4"}))
    )
    out = tmp_path / "results.jsonl"
    first = invoke("batch", tmp_path / "todo.jsonl", "-o", out, *TINY)
    # ids are paths from the results file's folder; the line names the path opened too
    assert first.exit_code == 1 and f"{tmp_path / 'late.png'} (id late.png): no such file" in first.stderr
    before = out.read_bytes()
    _image(tmp_path / "late.png", 2)
    again = invoke("batch", tmp_path / "todo.jsonl", "-o", out, *TINY, "-q")  # without the flag: nothing to do
    assert again.exit_code == 1 and out.read_bytes() == before
    assert "2 of 3 rows answered, 1 failed; --retry-failed" in again.stderr  # why exit 1, even when quiet
    retried = invoke("batch", tmp_path / "todo.jsonl", "-o", out, *TINY, "--retry-failed")
    assert retried.exit_code == 0, retried.stderr
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    assert lines[:2] == [line for line in before.splitlines(keepends=True) if b"late.png" not in line]
    assert json.loads(lines[2])["input"] == str(tmp_path / "late.png") and json.loads(lines[2])["error"] is None


@pytest.mark.parametrize(
    "args, contains",
    [
        (["--gpus", "2", "--device", "cpu"], "--gpus 2"),
        (["--gpus", "0"], "--gpus must be at least 1"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--frames", "0"], "--frames"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--batch-size", "2", "--temperature", "0.5"], "--temperature"),
        (["--batch-size", "2", "--psa"], "--psa"),
        (["-p", "what <|image_pad|>"], "--prompt 'what <|image_pad|>' holds <|image_pad|>"),
        (["-p", ""], "--prompt is empty"),
        (["-o", "-"], "--out -: give the results file's path"),
    ],
    ids=[
        "gpus-on-cpu",
        "gpus-0",
        "workers-0",
        "frames-0",
        "batch-size-0",
        "batch-sampled",
        "batch-psa",
        "prompt",
        "empty-prompt",
        "out-dash",
    ],
)
def test_bad_options_are_one_line_before_any_model_loads(manifest, tmp_path, args, contains):
    result = invoke("batch", manifest, "-o", tmp_path / "r.jsonl", "-m", "not-a-model", *args)
    assert_one_error(result, contains=contains, exit_code=2)


def test_a_frame_cache_that_cannot_be_used_is_one_line_before_any_model_loads(manifest, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = tmp_path / "r.jsonl"
    result = invoke("batch", manifest, "-o", out, "-m", "not-a-model", "--cache-dir", blocker / "cache")
    assert_one_error(result, contains="not writable", exit_code=2)
    assert not out.exists()


def test_more_gpus_than_the_machine_has_is_refused(manifest, tmp_path):
    import torch

    count = torch.cuda.device_count()
    result = invoke("batch", manifest, "-o", tmp_path / "r.jsonl", "--gpus", max(count, 1) + 1)
    assert_one_error(result, contains=f"this machine has {count} CUDA device", exit_code=2)


@pytest.mark.parametrize(
    "line, contains",
    [
        ('{"input": "a.png", "frame": 4}', "unknown key 'frame'"),
        ("not json", "not a JSON object"),
        ('{"id": "x"}', 'no "input"'),
        ('{"input": "a.mp4", "frames": "many"}', '"frames" must be a whole number, not "many"'),
        ('{"input": "a.mp4", "frames": true}', '"frames" must be a whole number, not true'),
        ('{"input": "a.png", "frames": 4}', "applies to videos"),
        ('{"input": "a.mp4", "frames": 0}', '"frames" must be at least 1 (got 0)'),
        ('{"input": "a.mp4", "start": 5, "end": 1}', '"start" 5 s is not before "end" 1 s'),
        ('{"id": 1, "input": "a.png"}\n{"id": 1, "input": "b.png"}', "ids must be unique"),
        ('{"input": "a.png", "prompt": "<|video_pad|> said"}', "\"prompt\" '<|video_pad|> said' holds <|video_pad|>"),
    ],
    ids=[
        "unknown-key",
        "not-json",
        "no-input",
        "bad-frames",
        "boolean-frames",
        "frames-on-image",
        "frames-0",
        "start-after-end",
        "same-id",
        "media-token-prompt",
    ],
)
def test_a_bad_manifest_line_is_one_error_naming_the_line(tmp_path, line, contains):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(line + "\n")
    out = tmp_path / "r.jsonl"
    error = assert_one_error(invoke("batch", manifest, "-o", out, "-m", "tiny"), contains=contains, exit_code=2)
    assert str(manifest) + ":" in error
    assert not out.exists()


def test_a_job_that_fails_before_any_row_leaves_no_results_file(manifest, tmp_path):
    """A model that cannot load: one line, and no empty results file for a later run to find."""
    out = tmp_path / "r.jsonl"
    for model in ("nosuch", str(tmp_path / "no-model")):
        assert_one_error(invoke("batch", manifest, "-o", out, "-m", model), contains="model", exit_code=2)
        assert not out.exists()


def test_results_of_another_kind_or_in_use_are_refused(manifest, tmp_path):
    from qvl.batch.results import Results

    other = tmp_path / "notes.jsonl"
    other.write_text('{"hello": 1}\n')
    assert_one_error(invoke("batch", manifest, "-o", other, "-m", "tiny"), contains="line 1", exit_code=2)
    assert other.read_text() == '{"hello": 1}\n'
    busy = tmp_path / "busy.jsonl"
    with Results.open(busy):
        assert_one_error(invoke("batch", manifest, "-o", busy, "-m", "tiny"), contains="another qvl batch", exit_code=2)


def test_results_that_are_not_a_regular_file_are_refused(manifest, tmp_path):
    """A FIFO (or /dev/stdout, a device) cannot be read again to resume: one line, before any row."""
    import os

    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    assert_one_error(invoke("batch", manifest, "-o", fifo, "-m", "tiny"), contains="not a regular file", exit_code=2)
    assert_one_error(
        invoke("batch", manifest, "-o", tmp_path, "-m", "tiny"), contains="not a regular file", exit_code=2
    )
    new_folder = f"{tmp_path}/new/"  # a folder's path that does not exist yet: not made into a file
    assert_one_error(invoke("batch", manifest, "-o", new_folder, "-m", "tiny"), contains="names a folder", exit_code=2)
    assert not (tmp_path / "new").exists()


def test_arguments_that_name_nothing_are_refused(tmp_path):
    result = invoke("batch", tmp_path / "nowhere", str(tmp_path / "*.mp4"), "-o", tmp_path / "r.jsonl")
    assert_one_error(result, contains="no such file or folder", exit_code=2)


def test_a_local_ray_cluster_gives_the_local_answers(manifest, finished, tmp_path):
    ray = pytest.importorskip("ray")
    ids = ["img-0", "img-1", "clip-0", "clip-5", "clip-7", "clip-8", "missing", "corrupt-video"]
    rows = {json.loads(line)["id"]: line for line in manifest.read_text().splitlines()}
    subset = manifest.parent / "subset.jsonl"
    subset.write_text("".join(rows[i] + "\n" for i in ids))
    out = tmp_path / "ray.jsonl"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = invoke("batch", subset, "-o", out, *TINY, "--ray", "local")
    finally:
        ray.shutdown()
    assert result.exit_code == 1, result.stderr
    local = {r["id"]: r for r in _records(finished[0])}
    records = _records(out)
    assert sorted(r["id"] for r in records) == sorted(ids)
    for record in records:
        mine = local[record["id"]]
        assert (record["text"], record["error"], record.get("frames")) == (
            mine["text"],
            mine["error"],
            mine.get("frames"),
        )


def test_one_process_per_model_gives_the_same_records(manifest, finished):
    """The machinery of --gpus N (spawned processes, a shared queue of rows, records sent back),
    run here with two CPU models since this machine has no GPUs."""
    from qvl.batch import CacheSettings
    from qvl.batch.inputs import expand
    from qvl.batch.local import answer_on_gpus
    from qvl.media.video import VideoOptions
    from qvl.runner import Settings

    lines = manifest.read_text().splitlines()[18:26] + ['{"input": "media/nowhere.png"}']
    subset = manifest.parent / "processes.jsonl"
    subset.write_text("".join(line + "\n" for line in lines))
    prompts = {"image": "Describe this image.", "video": "Describe this video."}
    rows = expand([str(subset)], VideoOptions(), prompts=prompts)
    loaded = []
    settings = Settings(model="tiny", device="cpu", max_tokens=4)
    records = list(
        answer_on_gpus(
            settings, rows, CacheSettings(enabled=False), gpus=2, workers=1, prefetch=2, on_loaded=loaded.append
        )
    )
    assert len(loaded) == 2 and {info["name"] for info in loaded} == {"tiny"}
    assert sorted(r["id"] for r in records) == sorted(row.id for row in rows)
    local = {r["id"]: r for r in _records(finished[0])}
    for record in records:
        if record["id"] in local:
            assert (record["text"], record["error"]) == (local[record["id"]]["text"], local[record["id"]]["error"])
        else:
            assert "no such file" in record["error"]


def test_rows_decoded_together_give_one_record_each_in_order(manifest, finished, tmp_path, monkeypatch):
    """--batch-size 4: ready rows are answered together (`Engine.generate_batch`), bad rows still
    in-band, every record as the one-at-a-time job's. The answers are greedy on both ways; a
    float near-tie of the random tiny model may part one, so nearly all must agree."""
    import qvl.batch.local as local

    groups = []
    answer_together = local.answer_together
    monkeypatch.setattr(
        local, "answer_together", lambda runner, items: groups.append(len(items)) or answer_together(runner, items)
    )
    out = tmp_path / "together.jsonl"
    result = invoke("batch", manifest, "--out", out, "--batch-size", "4", *TINY)
    assert groups and max(groups) <= 4
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    records, alone = _records(out), {r["id"]: r for r in _records(finished[0])}
    assert [r["id"] for r in records] == _ids(manifest)
    for record in records:
        assert list(record) == list(alone[record["id"]])
        assert (record["error"] is None) == (alone[record["id"]]["error"] is None)
    same = sum(r["text"] == alone[r["id"]]["text"] for r in records)
    assert same >= len(records) - 2, same


def test_long_prompts_are_answered_alone(manifest, finished, tmp_path, monkeypatch):
    """Rows whose prompts are over `LONGEST_PROMPT_TOGETHER` tokens never share a decode (here
    every row's is), and the job's records are still complete and in order."""
    import qvl.batch.local as local

    groups = []
    answer_together = local.answer_together
    monkeypatch.setattr(
        local, "answer_together", lambda runner, items: groups.append(len(items)) or answer_together(runner, items)
    )
    monkeypatch.setattr(local, "LONGEST_PROMPT_TOGETHER", 1)
    out = tmp_path / "alone.jsonl"
    result = invoke("batch", manifest, "--out", out, "--batch-size", "4", *TINY)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert groups == [] and [r["id"] for r in _records(out)] == _ids(manifest)


def test_rows_go_together_by_default_on_a_gpu_where_the_settings_allow():
    """No --batch-size: `ROWS_TOGETHER_ON_GPU` rows at a time on a GPU where the fast path serves
    the model, else one, and one (not an error) where --temperature, --psa or --ray rule decoding
    together out."""
    from types import SimpleNamespace

    from qvl.batch import BatchOptions, _batch_size, check
    from qvl.batch.local import ROWS_TOGETHER_ON_GPU, rows_together

    fast_gpu = SimpleNamespace(device="cuda", fast_path_problem=None)
    spread = SimpleNamespace(device="cuda", fast_path_problem="the model is spread over several devices")
    assert rows_together(fast_gpu) == ROWS_TOGETHER_ON_GPU > 1
    assert rows_together(spread) == 1 and rows_together(SimpleNamespace(device="cpu", fast_path_problem=None)) == 1
    greedy, sampled = SimpleNamespace(temperature=None, psa=None), SimpleNamespace(temperature=0.5, psa=None)
    assert _batch_size(greedy, BatchOptions("r.jsonl")) is None  # the model's device decides
    assert _batch_size(greedy, BatchOptions("r.jsonl", batch_size=2)) == 2
    assert _batch_size(sampled, BatchOptions("r.jsonl")) == 1
    assert _batch_size(greedy, BatchOptions("r.jsonl", ray="local")) == 1
    check(sampled, BatchOptions("r.jsonl", ray="local"))  # the default is no reason to refuse


def test_workers_take_a_share_of_the_cores_and_the_model_keeps_its_count():
    """A worker's processor beside a model on a GPU runs on its share of torch's CPU threads (beside
    a model on the CPU it keeps torch's count: the model needs the cores). The thread that runs the model keeps its count
    although it ran no op before the workers set theirs (torch gives a thread its count at its
    first op: the last count set anywhere), and threads started after the share ends get the count
    there was before."""
    import threading
    from types import SimpleNamespace

    import torch

    from qvl.batch.work import CoreShare

    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("a share smaller than torch's count needs 2 cores or more")
    seen = {}

    def in_thread(run, *args):
        thread = threading.Thread(target=run, args=args)
        thread.start()
        thread.join()

    def worker(name, cores, device):
        cores.take(SimpleNamespace(device=device))
        seen[name] = torch.get_num_threads()

    def model():  # a fresh thread, as the model's is where the job runs on one
        with CoreShare(before // 2) as cores:
            in_thread(worker, "beside the CPU's model", cores, "cpu")
            in_thread(worker, "beside a GPU's model", cores, "cuda")
            seen["the model's thread"] = torch.get_num_threads()

    in_thread(model)
    in_thread(lambda: seen.update({"started after": torch.get_num_threads()}))
    assert seen == {
        "beside the CPU's model": before,
        "beside a GPU's model": before // 2,
        "the model's thread": before,
        "started after": before,
    }


def test_a_job_run_again_from_another_folder_or_by_another_path_answers_no_row_twice(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Default ids are the files' real paths from the results file's folder: run again from
    another folder, through the manifest by an absolute path, or a folder spelled otherwise, the
    job finds its rows done."""
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    for i in range(2):
        _image(data / "imgs" / f"p{i}.png", i)
    (data / "m.jsonl").write_text(
        json.dumps({"input": "imgs/p0.png"}) + "\n" + json.dumps({"input": "imgs/p1.png"}) + "\n"
    )
    monkeypatch.chdir(tmp_path)
    first = invoke("batch", "data/m.jsonl", "-o", "data/out.jsonl", *TINY)
    assert first.exit_code == 0, first.stderr
    assert [r["id"] for r in _records(data / "out.jsonl")] == ["imgs/p0.png", "imgs/p1.png"]
    monkeypatch.chdir(data)
    for args in (["m.jsonl", "-o", "out.jsonl"], [str(data / "m.jsonl"), "-o", str(data / "out.jsonl")]):
        again = invoke("batch", *args, *TINY)
        assert again.exit_code == 0 and "2 rows already in" in again.stderr and "0 to run" in again.stderr
    folder = invoke("batch", "imgs/../imgs/", "-o", "out.jsonl", *TINY)
    assert folder.exit_code == 0 and "0 to run" in folder.stderr
    assert len(_records(data / "out.jsonl")) == 2


def test_a_folder_or_glob_leaves_out_hidden_files_and_the_results_file(tmp_path, tiny_model_dir, monkeypatch):
    """macOS's `._name.png` beside a copied file and a hidden folder are not rows; a glob that
    matches the results file does not read it as a manifest when the job runs again."""
    _image(tmp_path / "a.png", 1)
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / ".cache").mkdir()
    _image(tmp_path / ".cache" / "thumb.png", 2)
    monkeypatch.chdir(tmp_path)
    first = invoke("batch", ".", "-o", "results.jsonl", *TINY)
    assert first.exit_code == 0, first.stderr
    assert [r["id"] for r in _records(tmp_path / "results.jsonl")] == ["a.png"]
    (tmp_path / "more.jsonl").write_text(json.dumps({"input": "a.png", "id": "again"}) + "\n")
    globbed = invoke("batch", *sorted(str(p.name) for p in tmp_path.glob("*.jsonl")), "-o", "results.jsonl", *TINY)
    assert globbed.exit_code == 0, globbed.stderr
    assert [r["id"] for r in _records(tmp_path / "results.jsonl")] == ["a.png", "again"]


def test_a_manifest_saved_with_a_byte_order_mark_is_read(tmp_path, tiny_model_dir):
    _image(tmp_path / "a.png", 1)
    (tmp_path / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "x", "input": "a.png"}).encode() + b"\n")
    result = invoke("batch", tmp_path / "m.jsonl", "-o", tmp_path / "r.jsonl", *TINY)
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in _records(tmp_path / "r.jsonl")] == ["x"]


def test_retry_failed_rewrites_the_file_a_link_names_and_keeps_its_permissions(tmp_path, tiny_model_dir):
    _image(tmp_path / "a.png", 1)
    (tmp_path / "m.jsonl").write_text(json.dumps({"input": "a.png"}) + "\n" + json.dumps({"input": "late.png"}) + "\n")
    (tmp_path / "kept").mkdir()
    real = tmp_path / "kept" / "results.jsonl"
    real.touch(mode=0o640)
    real.chmod(0o640)
    link = tmp_path / "results.jsonl"
    link.symlink_to(real)
    assert invoke("batch", tmp_path / "m.jsonl", "-o", link, *TINY).exit_code == 1
    _image(tmp_path / "late.png", 2)
    retried = invoke("batch", tmp_path / "m.jsonl", "-o", link, *TINY, "--retry-failed")
    assert retried.exit_code == 0, retried.stderr
    assert link.is_symlink() and (real.stat().st_mode & 0o777) == 0o640
    assert [(r["id"], r["error"]) for r in _records(real)] == [("a.png", None), ("late.png", None)]


def test_without_a_terminal_progress_is_a_line_each_tenth_of_the_rows(tmp_path, tiny_model_dir):
    """stderr to a log (not a terminal): a plain line as each tenth of the rows is done, the last
    tenth being the summary's; none with -q."""
    for i in range(4):
        _image(tmp_path / f"p{i}.png", i)
    result = invoke("batch", tmp_path, "-o", tmp_path / "r.jsonl", *TINY)
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rows: ")]
    assert [line.split(",")[0] for line in lines] == ["rows: 1 of 4 (25%)", "rows: 2 of 4 (50%)", "rows: 3 of 4 (75%)"]
    assert all(" rows/min, about 0:" in line and line.endswith(" left") for line in lines)
    quiet = invoke("batch", tmp_path, "-o", tmp_path / "q.jsonl", *TINY, "-q")
    assert quiet.exit_code == 0 and "rows: " not in quiet.stderr


def test_frame_plan_notes_are_in_each_record_and_said_once_each_on_stderr(tmp_path, tiny_model_dir):
    """What a row's frame plan changed from what was asked is in its record's `notes` (a
    manifest row's own options named by their keys); stderr says each different note once, the
    first few, then where the rest are."""
    rows = [{"id": "own", "input": "c0.mp4", "frames": 5}, {"id": "cmd", "input": "c1.mp4"}]
    rows += [{"id": f"end-{i}", "input": f"c{i}.mp4", "end": 30 + i} for i in (2, 3, 4)]
    for i in range(5):
        write_video(tmp_path / f"c{i}.mp4", 1.0, side=64, fps=8, seed=i)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("batch", tmp_path / "m.jsonl", "-o", tmp_path / "r.jsonl", *TINY, "--frames", "3")
    assert result.exit_code == 0, result.stderr
    notes = {record["id"]: record["notes"] for record in _records(tmp_path / "r.jsonl")}
    assert notes["own"] == ['"frames" 5 rounded up to 6 (frames come in pairs)']
    assert notes["cmd"] == ["--frames 3 rounded up to 4 (frames come in pairs)"]
    assert notes["end-3"] == ['"end" 33 s is past the end; using 1.000 s', *notes["cmd"]]
    said = [line for line in result.stderr.splitlines() if "rounded up" in line or "past the end" in line]
    assert len(said) == 3 and len(set(said)) == 3 and "c0.mp4: " in said[0]
    assert result.stderr.count('each record\'s "notes" says how') == 1
    quiet = invoke("batch", tmp_path / "m.jsonl", "-o", tmp_path / "q.jsonl", *TINY, "--frames", "3", "-q")
    assert quiet.exit_code == 0 and "rounded" not in quiet.stderr


def test_a_video_named_as_an_image_says_how_a_batch_reads_it_as_a_video(tmp_path, tiny_model_dir):
    write_video(tmp_path / "clip.mp4", 1.0, side=64, fps=8).rename(tmp_path / "clip.jpg")
    result = invoke("batch", tmp_path / "clip.jpg", "-o", tmp_path / "r.jsonl", *TINY)
    assert_one_error(result, contains='is a video, not an image: a manifest row with "type": "video" reads it as one')
    (tmp_path / "m.jsonl").write_text(json.dumps({"input": "clip.jpg", "type": "video", "id": "v"}) + "\n")
    assert invoke("batch", tmp_path / "m.jsonl", "-o", tmp_path / "r2.jsonl", *TINY).exit_code == 0


def test_rows_kept_that_another_model_or_prompt_answered_are_said_to_be_kept(tmp_path, tiny_model_dir):
    """A job run again with another model or prompt keeps the rows done (their ids are), and says
    so in one warning; the same options again say nothing."""
    for i in range(2):
        _image(tmp_path / f"p{i}.png", i)
    out = tmp_path / "r.jsonl"
    assert invoke("batch", tmp_path, "-o", out, *TINY).exit_code == 0
    same = invoke("batch", tmp_path, "-o", out, *TINY)
    assert same.exit_code == 0 and "another --out asks again" not in same.stderr
    other = invoke("batch", tmp_path, "-o", out, *TINY, "-p", "What colour is it?")
    assert other.exit_code == 0 and f"2 rows in {out} were answered about another prompt, and are kept" in other.stderr
    assert "another --out asks again" in other.stderr and len(_records(out)) == 2
    (tmp_path / "m.jsonl").write_text(json.dumps({"input": "p0.png", "id": "p0.png"}) + "\n")
    by_other = invoke("batch", tmp_path / "m.jsonl", "-o", out, *TINY[2:], "-m", "random:3b")
    assert by_other.exit_code == 0 and f"1 row in {out} was answered by tiny, and is kept" in by_other.stderr


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_stopped_job_says_how_many_rows_it_wrote_and_how_to_go_on(capfd, stop):
    from qvl.batch_view import ProgressView
    from qvl.errors import Terminated

    raised = KeyboardInterrupt if stop == "ctrl-c" else Terminated
    with pytest.raises(raised), ProgressView(quiet=False) as view:
        view.started(5, 2, "r.jsonl")
        view.answered({"id": "a", "input": "a.png", "error": None})
        raise raised()
    err = capfd.readouterr().err
    assert "stopped with 1 row answered into r.jsonl by this run; the same command goes on from there" in err
