"""Per-file image validation and normalisation to 8-bit RGB, with a reason for every rejection.

Ingest runs each downloaded file through `check_image`; a file is either a `ValidImage` (decoded completely, EXIF
orientation applied, converted to RGB) or a `Rejection` whose `reason` is a stable short code counted in the ingest
report and stored in the index. Nothing here raises for bad input: a bad file is an outcome, never a crash.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Our own pixel limit is checked before decoding; PIL's global bomb warning would only add noise (and its hard error
# at 2x its limit is still caught below and reported with the same reason).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# MPO is what PIL calls camera JPEGs that carry a second (preview/stereo) picture: a JPEG all the same.
ACCEPTED_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}
EXIF_ORIENTATION_TAG = 0x0112

# Reasons (stable codes: the ingest report, the index and `swarm dataset stats` use them).
ZERO_BYTES = "zero_bytes"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
DECOMPRESSION_BOMB = "decompression_bomb"
ABSURD_ASPECT_RATIO = "absurd_aspect_ratio"
TOO_SMALL = "too_small"


@dataclass(frozen=True)
class ValidationLimits:
    max_pixels: int = 40_000_000  # width x height above this is refused before decoding (decompression bombs)
    max_aspect: float = 4.0  # longer side / shorter side
    min_side: int = 64  # shorter side below this is refused (would be upscaled into mush)

    def __post_init__(self):
        if self.max_pixels < 1:
            raise ValueError(f"the pixel limit must be at least 1, got {self.max_pixels}")
        if self.max_aspect < 1.0:
            raise ValueError(f"the aspect ratio limit must be at least 1.0, got {self.max_aspect}")
        if self.min_side < 1:
            raise ValueError(f"the minimum side must be at least 1, got {self.min_side}")


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


@dataclass
class ValidImage:
    image: Image.Image  # RGB, orientation applied, fully decoded
    source_format: str  # "jpeg", "png" or "webp"
    source_mode: str
    # The original bytes already are a plain RGB JPEG with nothing to apply, so they can be stored as they are.
    original_is_normalised: bool
    notes: tuple[str, ...] = field(default_factory=tuple)  # what normalisation did, e.g. "cmyk_to_rgb"

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def check_image(data: bytes, *, limits: ValidationLimits = ValidationLimits()) -> ValidImage | Rejection:
    """Decode `data` completely and normalise it to RGB, or say why it cannot be used."""
    if not data:
        return Rejection(ZERO_BYTES, "the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return Rejection(NOT_AN_IMAGE, "not a readable image (the content is not JPEG, PNG or WebP)")
    except Image.DecompressionBombError as e:
        return Rejection(DECOMPRESSION_BOMB, str(e))
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return Rejection(CORRUPT, f"the image header cannot be read: {e}")
    if image.format not in ACCEPTED_FORMATS:
        return Rejection(UNSUPPORTED_FORMAT, f"{image.format} content; accepted are JPEG, PNG and WebP")
    width, height = image.size
    if width * height > limits.max_pixels:
        return Rejection(DECOMPRESSION_BOMB, f"{width}x{height} = {width * height} pixels is over the limit of "
                                             f"{limits.max_pixels}")
    if min(width, height) < limits.min_side:
        return Rejection(TOO_SMALL, f"{width}x{height}: the shorter side is under {limits.min_side} px")
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        return Rejection(ABSURD_ASPECT_RATIO, f"{width}x{height} has aspect ratio {aspect:.2f}, over the limit of "
                                              f"{limits.max_aspect:g}")
    try:
        image.load()
    except Image.DecompressionBombError as e:
        return Rejection(DECOMPRESSION_BOMB, str(e))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        message = str(e)
        if isinstance(e, EOFError) or "truncated" in message or "end of file" in message.lower():
            return Rejection(TRUNCATED, f"the image data ends early: {message or type(e).__name__}")
        return Rejection(CORRUPT, f"the image data cannot be decoded: {message or type(e).__name__}")
    return _normalise(image)


def _normalise(image: Image.Image) -> ValidImage:
    source_format = ACCEPTED_FORMATS[image.format]
    source_mode = image.mode
    notes: list[str] = []
    orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        notes.append("exif_orientation_applied")
    rgb = to_rgb(image, notes)
    original_ok = image.format == "JPEG" and source_mode == "RGB" and not notes
    return ValidImage(image=rgb, source_format=source_format, source_mode=source_mode,
                      original_is_normalised=original_ok, notes=tuple(notes))


def to_rgb(image: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """8-bit RGB from any PIL mode: transparency flattened onto white, 16-bit and float scaled, palettes expanded."""
    notes = notes if notes is not None else []
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        notes.append("palette_to_rgb")
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("alpha_flattened")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        notes.append("high_bit_depth_scaled")
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    notes.append(f"{mode.lower()}_to_rgb")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale integer (16/32-bit) or float pixels into 0..255."""
    if pixels.dtype.kind == "f":
        pixels = np.nan_to_num(pixels.astype(np.float64))
        peak = 1.0 if pixels.size and pixels.max() <= 1.0 else 255.0
        return np.clip(pixels / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    pixels = pixels.astype(np.int64)
    peak = int(pixels.max()) if pixels.size else 0
    if peak <= 255:  # a 32-bit mode that holds 8-bit values
        return np.clip(pixels, 0, 255).astype(np.uint8)
    # 16-bit data (and anything wider is treated as 16-bit after clipping): 65535 -> 255
    return (np.clip(pixels, 0, 65535) // 257).astype(np.uint8)
