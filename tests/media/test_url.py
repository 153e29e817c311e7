"""Video URLs: served from a loopback http.server in a thread (no network needed)."""

from __future__ import annotations

import functools
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qvl.errors import InputError
from qvl.media.cache import FrameCache
from qvl.media.fetch import fetch_bytes, is_url
from qvl.media.images import open_image
from qvl.media.video import VideoOptions, load_video, plan_source


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that stops reading (a download over its limit) is what some tests do


@pytest.fixture(scope="module")
def server(media_dir, clip):
    handler = functools.partial(_Quiet, directory=str(media_dir))
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_url_like_a_local_file(server, clip, tmp_path):
    url = f"{server}/{clip.name}"
    local = load_video(clip, VideoOptions(frames=4))
    remote = load_video(url, VideoOptions(frames=4))
    assert remote.source == url and remote.timestamps == local.timestamps
    assert (remote.frames == local.frames).all()
    assert plan_source(url, VideoOptions(frames=4)).frames == 4
    cache = FrameCache(tmp_path / "c")
    assert load_video(url, VideoOptions(frames=4), cache=cache).cache == "miss"
    assert load_video(url, VideoOptions(frames=4), cache=cache).cache == "hit"


def test_url_with_spaces_in_the_name(server, long_gop_clip):
    from urllib.parse import quote

    clip = load_video(f"{server}/{quote(long_gop_clip.name)}", VideoOptions(frames=2))
    assert clip.frames.shape[0] == 2


def test_download_limit(server, clip):
    with pytest.raises(InputError, match=r"over the download limit of 0.01 MB \(raise it with --max-download-mb\)"):
        load_video(f"{server}/{clip.name}", VideoOptions(frames=4, max_download_mb=0.01))


def test_http_404(server):
    with pytest.raises(InputError, match="HTTP 404"):
        load_video(f"{server}/missing.mp4", VideoOptions(frames=4))


@pytest.mark.parametrize("name", ["missing.mp4", "big"], ids=["HTTP 404", "over the limit"])
def test_a_failed_download_leaves_no_folder_behind(server, clip, tmp_path, monkeypatch, name):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the download's folder is made
    url = f"{server}/{clip.name if name == 'big' else name}"
    with pytest.raises(InputError):
        load_video(url, VideoOptions(frames=4, max_download_mb=0.01))
    with pytest.raises(InputError):
        plan_source(url, VideoOptions(frames=4, max_download_mb=0.01))
    assert list(tmp_path.iterdir()) == []


def test_url_that_is_not_a_video(server, not_a_video):
    with pytest.raises(InputError, match="not a video"):
        load_video(f"{server}/{not_a_video.name}", VideoOptions(frames=4))


def test_unreachable_url_fails_fast():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="cannot reach the host") as exc:
        load_video(f"http://127.0.0.1:{port}/clip.mp4", VideoOptions(frames=4))
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(exc.value)


def test_unresolvable_host_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="cannot reach the host"):
        load_video("http://no-such-host.invalid/clip.mp4", VideoOptions(frames=4))
    assert time.perf_counter() - t0 < 25


def test_images_and_videos_share_one_downloader(server, clip, media_dir):
    from PIL import Image

    Image.new("RGB", (56, 28), (200, 10, 10)).save(media_dir / "red.png")
    assert open_image(f"{server}/red.png").size == (56, 28)
    assert fetch_bytes(f"{server}/{clip.name}", max_mb=100) == clip.read_bytes()
    # The same limit check; only the video command has an option to raise it.
    with pytest.raises(InputError, match=r"over the download limit of 0.01 MB$"):
        fetch_bytes(f"{server}/{clip.name}", max_mb=0.01)
    with pytest.raises(InputError, match="HTTP 404"):
        open_image(f"{server}/missing.png")


def test_is_url():
    assert is_url("http://x/a.mp4") and is_url("https://x/a.jpg")
    assert not is_url("data:image/png;base64,AAAA") and not is_url("clip.mp4") and not is_url("ftp://x/a")
