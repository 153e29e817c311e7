"""The image loader shows the model what a person sees: real files written by Pillow, no mocks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qvl.errors import InputError
from qvl.media.images import open_image


def rgb(path) -> np.ndarray:
    return np.asarray(open_image(str(path)))


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    # A horizontal gradient over the whole 16-bit range: clipping would make 255/256 of it white.
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.tile(ramp, (8, 1))).save(path)
    assert Image.open(path).mode.startswith("I;16")  # the file really is 16-bit
    out = rgb(path)
    assert out.shape == (8, 256, 3)
    expected = np.round(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[0, :, 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # grey stays grey
    assert out[..., 0].mean() == pytest.approx(127.5, abs=1)


def test_32bit_and_float_tiffs_are_scaled(tmp_path):
    ints = np.tile(np.linspace(0, 65535, 64).astype(np.int32), (4, 1))
    Image.fromarray(ints).save(tmp_path / "i32.tif")
    out = rgb(tmp_path / "i32.tif")
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and 100 < out[0, 32, 0] < 155

    floats = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (4, 1))
    Image.fromarray(floats).save(tmp_path / "f.tif")
    out = rgb(tmp_path / "f.tif")
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and 100 < out[0, 32, 0] < 155


def test_exif_orientation_6_is_applied(tmp_path):
    # A landscape 60x40 picture, left half red, stored with orientation 6 ("rotate 90 CW to view").
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    out = rgb(path)
    assert out.shape == (60, 40, 3)  # turned upright: portrait
    # Rotating 90 degrees clockwise puts the stored left (red) half at the top.
    assert out[5, 20, 0] > 200 and out[5, 20, 2] < 60
    assert out[-5, 20, 2] > 200 and out[-5, 20, 0] < 60


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, index 1 red
    img.paste(1, (0, 0, 10, 20))
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)  # the black half is transparent
    out = rgb(path)
    assert tuple(out[5, 2]) == (255, 0, 0)
    assert tuple(out[5, 15]) == (255, 255, 255)  # not the hidden black


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    colour = (0, 0) if mode == "LA" else (0, 0, 0, 0)
    img = Image.new(mode, (10, 10), colour)  # black, fully transparent
    path = tmp_path / f"alpha-{mode}.png"
    img.save(path)
    assert tuple(rgb(path)[3, 3]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    path = tmp_path / "cmyk.jpg"
    img.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    r, g, b = rgb(path)[8, 8].tolist()
    assert r > 230 and g < 30 and b < 30


@pytest.mark.parametrize("mode", ["1", "L"])
def test_one_bit_and_grey(tmp_path, mode):
    img = Image.new(mode, (8, 8), 1 if mode == "1" else 200)
    path = tmp_path / f"{mode}.png"
    img.save(path)
    expected = 255 if mode == "1" else 200
    assert tuple(rgb(path)[0, 0]) == (expected,) * 3


def test_animated_gif_uses_first_frame_and_says_so(tmp_path, capsys):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = rgb(path)
    r, g, b = out[8, 8].tolist()
    assert r > 200 and g < 50 and b < 50
    err = capsys.readouterr().err
    assert "animated" in err and "3 frames" in err and "first" in err


def test_corrupt_image_is_an_input_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.png"):
        open_image(str(path))


def test_a_folders_videos_are_left_out_with_a_note(tmp_path, capsys):
    from qvl.media.images import expand_image_inputs

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    for name in ("b.mp4", "c.MOV"):
        (tmp_path / name).write_bytes(b"")
    assert [label for label, _ in expand_image_inputs([str(tmp_path)])] == [str(tmp_path / "a.png")]
    err = capsys.readouterr().err
    assert "2 videos left out" in err and "qvl video" in err
    (tmp_path / "b.mp4").unlink()
    (tmp_path / "c.MOV").unlink()
    expand_image_inputs([str(tmp_path)])
    assert capsys.readouterr().err == ""


def test_a_very_large_image_gets_qvls_warning_not_pillows(monkeypatch, capsys, recwarn):
    """Past Pillow's bomb threshold (about 90 megapixels; lowered here so the image stays small)
    the warning is qvl's one line, not Python's warning text."""
    import io

    from PIL import Image

    from qvl.media.images import decode_image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    image = decode_image(buffer.getvalue(), "big.png")
    assert image.size == (40, 30)
    assert "big.png: 40x30 is 0 megapixels; decoding it takes much memory" in capsys.readouterr().err
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_an_image_past_pillows_bomb_limit_is_qvls_one_line_with_a_way_forward(monkeypatch):
    """Twice Pillow's threshold (about 180 megapixels; lowered here) Pillow refuses to decode: the
    error says so in qvl's words and what to do, not Pillow's message."""
    import io

    from PIL import Image

    from qvl.errors import InputError
    from qvl.media.images import decode_image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(InputError) as caught:
        decode_image(buffer.getvalue(), "huge.png")
    message = str(caught.value)
    assert (
        message.startswith("huge.png: over 0 megapixels, which Pillow will not decode") and "scale it down" in message
    )
    assert "Image size" not in message


def test_a_link_to_nothing_is_called_a_broken_link(tmp_path):
    from qvl.media.images import expand_image_inputs

    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")  # a loop
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    for name in ("a.jpg", "gone.jpg"):
        [(_, error)] = expand_image_inputs([str(tmp_path / name)])
        assert isinstance(error, InputError) and str(error).endswith(": broken symbolic link")
    [(_, error)] = expand_image_inputs([str(tmp_path / "missing.jpg")])
    assert str(error).endswith(": no such file")


def test_a_video_given_as_an_image_says_what_to_do_instead():
    """On the command line the `qvl video` command; through the server (which passes its own
    hint) a video_url part, never a command the API's client cannot run."""
    from qvl.media.images import decode_image

    clip = b"\x00\x00\x00\x18ftypmp42" + bytes(64)
    with pytest.raises(InputError, match="clip.mp4: is a video, not an image: use qvl video clip.mp4$"):
        decode_image(clip, "clip.mp4")
    with pytest.raises(InputError, match="is a video, not an image: send it as a video_url part$"):
        decode_image(clip, "clip.mp4", video_hint="send it as a video_url part")
    # Without a telling name (a data URI), the container's signature tells.
    for data in (clip, b"\x1a\x45\xdf\xa3" + bytes(60), b"RIFF\x00\x00\x00\x00AVI " + bytes(60)):
        with pytest.raises(InputError, match="data URI: is a video, not an image"):
            decode_image(data, "data URI", video_hint="send it as a video_url part")
    with pytest.raises(InputError, match="data URI: not an image"):
        decode_image(b"plain text, no container", "data URI")
