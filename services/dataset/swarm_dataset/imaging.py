"""Fast image decode, resize-to-bucket and encode, shared by ingest (storing) and the server (streaming).

Speed matters here: the server must resize faster than peers train. Ingest makes a bucket-sized copy of every image
once, so the default stream does no image work at all; what is left for the server (random crops, other encodings,
samples without a copy) uses JPEG draft mode (libjpeg decodes straight at 1/2, 1/4 or 1/8 scale), resizes only the
crop box, and a cheap filter for the remaining < 2x downscale. Figures: bench/dataset.py.
"""
from __future__ import annotations

import io
import random

from PIL import Image

from swarm_dataset.buckets import cover_box, cover_size

ENCODINGS = ("jpeg", "png", "webp")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
DEFAULT_QUALITY = 95
# Prepared bucket copies (made at ingest) are JPEG at this quality: a request for exactly that is a pass-through.
PREPARED_QUALITY = DEFAULT_QUALITY
# PIL's resampling is plain C and the dominant cost of resizing. Measured on photos (bench/dataset.py images), against
# a LANCZOS resize of the full decode: bicubic 47 dB PSNR at 6.3 ms, bilinear 44 dB at 3.9 ms, LANCZOS 8.5 ms.
# Ingest (once per image) uses bicubic; streaming (after JPEG draft decoding the remaining downscale is under 2x, where
# antialiased bilinear is visually the same) uses bilinear.
INGEST_RESAMPLE = Image.Resampling.BICUBIC
STREAM_RESAMPLE = Image.Resampling.BILINEAR
# Downscales of 2x and more first take a cheap integer box reduction (Image.reduce), then the filter: measured at
# ingest (full decodes), 7.1 ms instead of 11.9 ms per image at 51 dB PSNR against a plain LANCZOS resize.
REDUCING_GAP = 1.0


def check_encoding(encoding: str, quality: int) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")


def encode(image: Image.Image, *, encoding: str = "jpeg", quality: int = DEFAULT_QUALITY) -> bytes:
    """RGB image -> bytes. JPEG at quality >= 90 keeps full chroma (4:4:4): training images should not lose colour."""
    check_encoding(encoding, quality)
    out = io.BytesIO()
    if encoding == "jpeg":
        image.save(out, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif encoding == "png":
        # Level 1: most of the size win of zlib at a fraction of level 6's time.
        image.save(out, format="PNG", compress_level=1)
    else:
        image.save(out, format="WEBP", quality=quality, method=2)
    return out.getvalue()


def open_for_bucket(data: bytes, bucket_width: int, bucket_height: int) -> Image.Image:
    """Open stored bytes, asking libjpeg for the smallest draft scale that still covers the bucket."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        width, height = image.size
        image.draft("RGB", cover_size(width, height, bucket_width, bucket_height))
    return image


def resize_to_bucket(image: Image.Image, bucket_width: int, bucket_height: int, *, crop: str = "center",
                     rng: random.Random | None = None, resample: int = INGEST_RESAMPLE) -> Image.Image:
    """Scale keeping aspect until the image covers the bucket, then crop the overhang (centre or random)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if (width, height) == (bucket_width, bucket_height):
        return image
    box = cover_box(width, height, bucket_width, bucket_height, crop=crop, rng=rng)
    return image.resize((bucket_width, bucket_height), resample, box=box, reducing_gap=REDUCING_GAP)


def bucket_bytes(data: bytes, bucket_width: int, bucket_height: int, *, encoding: str = "jpeg",
                 quality: int = DEFAULT_QUALITY, crop: str = "center", rng: random.Random | None = None,
                 resample: int = STREAM_RESAMPLE) -> bytes:
    """Stored bytes -> the image resized and cropped to its bucket, encoded."""
    image = open_for_bucket(data, bucket_width, bucket_height)
    return encode(resize_to_bucket(image, bucket_width, bucket_height, crop=crop, rng=rng, resample=resample),
                  encoding=encoding, quality=quality)


def decode_rgb(data: bytes) -> Image.Image:
    """Bytes from the stream -> a fully loaded RGB image."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")
