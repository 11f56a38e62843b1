import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from utils import images
from utils.images import ImageError, SkippedImagesWarning, load_many, load_rgb

HEIGHT, WIDTH = 20, 30


def gradient_rgb() -> np.ndarray:
    """A ``uint8[HEIGHT, WIDTH, 3]`` picture whose every pixel differs."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([rows * 12, cols * 8, (rows + cols) * 5], -1).astype(np.uint8)


def save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def make_grey(tmp_path):
    return save(Image.fromarray(gradient_rgb()).convert("L"), tmp_path / "grey.png")


def make_grey_alpha(tmp_path):
    return save(Image.fromarray(gradient_rgb()).convert("LA"), tmp_path / "grey_alpha.png")


def make_palette_transparent(tmp_path):
    image = Image.fromarray(gradient_rgb()).quantize(16)
    return save(image, tmp_path / "palette.png", transparency=0)


def make_rgba(tmp_path):
    return save(Image.fromarray(gradient_rgb()).convert("RGBA"), tmp_path / "rgba.png")


def make_cmyk_jpeg(tmp_path):
    return save(Image.fromarray(gradient_rgb()).convert("CMYK"), tmp_path / "cmyk.jpg")


def make_16bit_png(tmp_path):
    values = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) * 109).astype(np.uint16)
    return save(Image.fromarray(values), tmp_path / "deep.png")


def make_rotated_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored picture must be turned 90 degrees clockwise
    return save(Image.fromarray(gradient_rgb()), tmp_path / "rotated.jpg", exif=exif)


@pytest.mark.parametrize("make, mode", [
    (make_grey, "L"), (make_grey_alpha, "LA"), (make_palette_transparent, "P"),
    (make_rgba, "RGBA"), (make_cmyk_jpeg, "CMYK"), (make_16bit_png, "I;16"),
    (make_rotated_jpeg, "RGB"),
])
def test_every_mode_decodes_to_uint8_rgb(tmp_path, make, mode):
    path = make(tmp_path)
    with Image.open(path) as handle:
        assert handle.mode == mode  # the fixture really is in the mode under test
    native = load_rgb(path)
    expected_shape = (WIDTH, HEIGHT, 3) if path.name == "rotated.jpg" else (HEIGHT, WIDTH, 3)
    assert native.dtype == np.uint8 and native.shape == expected_shape
    assert load_rgb(path, 16).shape == (16, 16, 3)
    assert load_rgb(path, (12, 40)).shape == (12, 40, 3)


def test_grey_becomes_three_equal_channels(tmp_path):
    pixels = load_rgb(make_grey(tmp_path))
    expected = np.asarray(Image.fromarray(gradient_rgb()).convert("L"))
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)  # transparent black: must not come out black
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[1, 0] = (0, 0, 255, 128)  # half-transparent blue
    pixels = load_rgb(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    np.testing.assert_array_equal(pixels[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(pixels[0, 1], (255, 0, 0))
    np.testing.assert_allclose(pixels[1, 0], (127, 127, 255), atol=1)


def test_palette_transparency_is_white(tmp_path):
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    palette.putpixel((2, 2), 1)
    pixels = load_rgb(save(palette, tmp_path / "p.png", transparency=0))
    np.testing.assert_array_equal(pixels[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(pixels[2, 2], (200, 30, 30))


def test_16bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 300]], np.uint16)
    pixels = load_rgb(save(Image.fromarray(values), tmp_path / "deep.png"))
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 100, 255, 1])


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    colour = np.zeros((8, 8, 3), np.uint8) + np.array([200, 60, 20], np.uint8)
    path = save(Image.fromarray(colour).convert("CMYK"), tmp_path / "c.jpg", quality=95)
    np.testing.assert_allclose(load_rgb(path).reshape(-1, 3).mean(0), [200, 60, 20], atol=4)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    stored[:, : WIDTH // 2] = (255, 0, 0)  # left half red in the stored picture
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = load_rgb(save(Image.fromarray(stored), tmp_path / "r.jpg", exif=exif, quality=95))
    # turned clockwise, the stored left half is on top
    assert pixels.shape == (WIDTH, HEIGHT, 3)
    assert pixels[: WIDTH // 2 - 2, :, 0].min() > 200 and pixels[WIDTH // 2 + 2 :, :, 0].max() < 50


def test_resize_averages_when_shrinking(tmp_path):
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: sampling would give pure black or white
    pixels = load_rgb(save(Image.fromarray(stripes), tmp_path / "s.png"), 8)
    np.testing.assert_allclose(pixels, 128, atol=5)  # edges differ a little


def png_claiming_size(tmp_path, width: int, height: int):
    """A small valid PNG whose IHDR chunk (with a fixed CRC) claims ``width x height``."""
    path = save(Image.new("RGB", (4, 4)), tmp_path / "bomb.png")
    data = bytearray(path.read_bytes())
    # after the 8-byte signature: length (4), b"IHDR" (4), width (4), height (4), ...
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def truncated_copy(path, fraction=0.5):
    data = path.read_bytes()
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


def bad_file(tmp_path, kind):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    if kind == "missing":
        return tmp_path / "nowhere.jpg"
    if kind == "empty":
        (tmp_path / "empty.jpg").write_bytes(b"")
        return tmp_path / "empty.jpg"
    if kind == "text":
        (tmp_path / "page.jpg").write_text("<!DOCTYPE html><html>Not Found</html>")
        return tmp_path / "page.jpg"
    if kind == "truncated_jpeg":
        return truncated_copy(save(photo, tmp_path / "photo.jpg"))
    if kind == "truncated_png":
        return truncated_copy(save(photo, tmp_path / "photo.png"))
    if kind == "bomb":
        return png_claiming_size(tmp_path, 30000, 30000)
    if kind == "folder":
        (tmp_path / "folder.png").mkdir()
        return tmp_path / "folder.png"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, words", [
    ("missing", "no such file"), ("empty", "empty"), ("text", "not an image"),
    ("truncated_jpeg", "truncated"), ("truncated_png", "truncated"),
    ("bomb", "decompression bomb"), ("folder", "folder"),
])
def test_bad_input_raises_image_error_naming_the_file(tmp_path, kind, words):
    path = bad_file(tmp_path, kind)
    with pytest.raises(ImageError) as caught:
        load_rgb(path, 32)
    assert str(path) in str(caught.value) and words in str(caught.value)
    assert caught.value.path == path
    assert isinstance(caught.value, ValueError)


def test_text_file_is_recognised_as_text(tmp_path):
    with pytest.raises(ImageError, match="HTML error page"):
        load_rgb(bad_file(tmp_path, "text"))


def test_pillow_bomb_error_becomes_image_error(tmp_path, monkeypatch):
    # with our own limit out of the way, Pillow's DecompressionBombError must still be caught
    monkeypatch.setattr(images, "MAX_PIXELS", 10**12)
    path = png_claiming_size(tmp_path, 30000, 30000)
    with pytest.raises(ImageError, match="decompression bomb") as caught:
        load_rgb(path)
    assert str(path) in str(caught.value)


def test_pillow_bomb_warning_becomes_image_error(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 10**12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow warns from 100 to 200 pixels
    path = save(Image.new("RGB", (12, 12)), tmp_path / "warned.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and the warning itself must not escape
        with pytest.raises(ImageError, match="decompression bomb"):
            load_rgb(path)


@pytest.mark.parametrize("side", [9000, 30000])
def test_bomb_is_refused_before_decoding(tmp_path, monkeypatch, side):
    # 9000x9000 passes Pillow's own limit (89 megapixels) but not ours; 30000x30000 fails both
    path = png_claiming_size(tmp_path, side, side)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a bomb"))
    with pytest.raises(ImageError, match="decompression bomb"):
        load_rgb(path)


def test_our_pixel_limit_names_the_size(tmp_path):
    with pytest.raises(ImageError, match=r"9000x9000 = 81.0 megapixels, more than .*MAX_PIXELS"):
        load_rgb(png_claiming_size(tmp_path, 9000, 9000))


def test_corrupt_png_raises(tmp_path):
    path = save(Image.fromarray(gradient_rgb()), tmp_path / "flipped.png")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the compressed pixels: the chunk CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="flipped.png"):
        load_rgb(path)


def test_load_many_stacks_resized_images(tmp_path):
    paths = [make_grey(tmp_path), make_rgba(tmp_path), make_rotated_jpeg(tmp_path)]
    pixels, kept = load_many(paths, (24, 32))
    assert pixels.shape == (3, 24, 32, 3) and pixels.dtype == np.uint8 and kept == [0, 1, 2]


def test_load_many_raises_the_first_bad_file(tmp_path):
    paths = [make_grey(tmp_path), bad_file(tmp_path, "empty"), bad_file(tmp_path, "text")]
    with pytest.raises(ImageError, match="empty.jpg"):
        load_many(paths, 16)


def test_load_many_skip_bad_warns_once_with_the_count(tmp_path):
    good = [make_grey(tmp_path), make_rgba(tmp_path), make_cmyk_jpeg(tmp_path)]
    bad = [bad_file(tmp_path, kind) for kind in ("missing", "empty", "text", "truncated_png")]
    paths = [good[0], bad[0], bad[1], good[1], bad[2], bad[3], good[2]]
    with pytest.warns(SkippedImagesWarning) as record:
        pixels, kept = load_many(paths, 16, skip_bad=True)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("skipped 4 of 7 images")
    assert str(bad[0]) in message and "and 1 more" in message
    assert kept == [0, 3, 6] and pixels.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(pixels[1], load_rgb(good[1], 16))


def test_load_many_all_bad_gives_an_empty_batch(tmp_path):
    with pytest.warns(SkippedImagesWarning, match="skipped 1 of 1"):
        pixels, kept = load_many([bad_file(tmp_path, "empty")], (5, 7), skip_bad=True)
    assert pixels.shape == (0, 5, 7, 3) and kept == []


def test_the_size_limit_message_is_not_wrapped_twice(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(images.ImageError) as caught:
        images.load_rgb(path)
    message = str(caught.value)
    assert message.count("cannot use image") == 1 and "40x30" in message
