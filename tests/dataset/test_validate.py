"""Per-file validation: every bad-file case gets its reason; every odd mode ends up as 8-bit RGB."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from swarm_dataset import validate as v
from tests.dataset.conftest import encode, photo

pytestmark = pytest.mark.timeout(60)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size and that holds almost no pixel data (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def rejected(data: bytes, reason: str, **limits) -> v.Rejection:
    result = v.check_image(data, limits=v.ValidationLimits(**limits))
    assert isinstance(result, v.Rejection), result
    assert result.reason == reason, result
    assert result.detail
    return result


def accepted(data: bytes) -> v.ValidImage:
    result = v.check_image(data)
    assert isinstance(result, v.ValidImage), result
    assert result.image.mode == "RGB"
    return result


def test_zero_bytes():
    rejected(b"", v.ZERO_BYTES)


def test_not_an_image():
    rejected(b"<html>404 not found</html>", v.NOT_AN_IMAGE)


def test_truncated_jpeg_and_png():
    jpeg = encode(photo(300, 200), "JPEG")
    rejected(jpeg[: len(jpeg) // 2], v.TRUNCATED)
    png = encode(photo(300, 200), "PNG")
    rejected(png[: len(png) // 2], v.TRUNCATED)


def test_corrupt_png_data():
    png = bytearray(encode(photo(300, 200), "PNG"))
    start = png.index(b"IDAT") + 40
    png[start:start + 200] = bytes(200)  # zeroes inside the compressed stream
    result = v.check_image(bytes(png))
    assert isinstance(result, v.Rejection) and result.reason in (v.CORRUPT, v.TRUNCATED)


def test_decompression_bomb_by_header_and_by_limit():
    rejected(png_header_only(100_000, 100_000), v.DECOMPRESSION_BOMB)  # PIL's own hard limit
    rejected(png_header_only(7000, 7000), v.DECOMPRESSION_BOMB)  # ours (40 MP by default), before any decoding
    rejected(encode(photo(200, 200)), v.DECOMPRESSION_BOMB, max_pixels=30_000)


def test_absurd_aspect_ratio_and_too_small():
    rejected(encode(photo(1000, 100)), v.ABSURD_ASPECT_RATIO)
    rejected(encode(photo(100, 1000)), v.ABSURD_ASPECT_RATIO, max_aspect=3.0)
    rejected(encode(photo(40, 40)), v.TOO_SMALL)


def test_unsupported_format():
    rejected(encode(photo(100, 100), "GIF"), v.UNSUPPORTED_FORMAT)


def test_plain_rgb_jpeg_is_kept_as_is():
    result = accepted(encode(photo(320, 240), "JPEG"))
    assert result.original_is_normalised and result.notes == () and result.size == (320, 240)


def test_webp_and_png_are_accepted_and_reencoded():
    for fmt in ("WEBP", "PNG"):
        result = accepted(encode(photo(320, 240), fmt))
        assert not result.original_is_normalised and result.size == (320, 240)


def test_cmyk_and_grayscale_convert_to_rgb():
    cmyk = accepted(encode(photo(200, 100, mode="CMYK"), "JPEG"))
    assert "cmyk_to_rgb" in cmyk.notes and not cmyk.original_is_normalised
    gray = accepted(encode(Image.new("L", (100, 100), 77), "PNG"))
    assert gray.image.getpixel((5, 5)) == (77, 77, 77)


def test_alpha_is_flattened_onto_white():
    rgba = Image.new("RGBA", (100, 100), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 50, 100))  # left half fully transparent
    result = accepted(encode(rgba, "PNG"))
    assert result.image.getpixel((10, 50)) == (255, 255, 255)
    assert result.image.getpixel((90, 50)) == (255, 0, 0)
    assert "alpha_flattened" in result.notes
    la = accepted(encode(Image.new("LA", (100, 100), (10, 0)), "PNG"))
    assert la.image.getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency():
    palette = Image.new("P", (100, 100), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(0, (0, 0, 50, 100))
    palette.info["transparency"] = 0
    result = accepted(encode(palette, "PNG", transparency=0))
    assert result.image.getpixel((10, 10)) == (255, 255, 255)
    assert result.image.getpixel((90, 10)) == (0, 0, 255)
    plain = accepted(encode(photo(100, 100).quantize(16), "PNG"))
    assert "palette_to_rgb" in plain.notes


def test_16_bit_grayscale_is_scaled_not_clipped():
    pixels = np.zeros((100, 100), dtype=np.uint16)
    pixels[:, :50] = 65535
    pixels[:, 50:] = 32896
    result = accepted(encode(Image.fromarray(pixels), "PNG"))
    assert result.image.getpixel((10, 10)) == (255, 255, 255)
    assert result.image.getpixel((90, 10)) == (128, 128, 128)
    assert "high_bit_depth_scaled" in result.notes


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 100, 100))  # left half blue
    exif = Image.Exif()
    exif[v.EXIF_ORIENTATION_TAG] = 6  # the camera was turned: display rotated 90° clockwise
    result = accepted(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert result.size == (100, 200)
    assert "exif_orientation_applied" in result.notes and not result.original_is_normalised
    # Rotated clockwise, the blue left half ends up on top.
    r, g, b = result.image.getpixel((50, 20))
    assert b > 200 and r < 60


def test_limits_are_validated():
    with pytest.raises(ValueError):
        v.ValidationLimits(max_aspect=0.5)
    with pytest.raises(ValueError):
        v.ValidationLimits(max_pixels=0)
