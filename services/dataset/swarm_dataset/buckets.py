"""NovelAI aspect-ratio bucketing and the resize-to-cover-then-crop that puts an image into its bucket.

Pure functions (no I/O) so the bucket rules are unit-tested on their own and shared by ingest (which assigns buckets)
and the server (which resizes to them).

The scheme users expect (docs/design.md): buckets are (width, height) pairs whose sides are multiples of the side step
between `side_min` and `side_max`, with area at most `max_area` (resolution² by default, as the 2022 swarm trainer
used; NovelAI's scheme for SD at 512 caps it at 512×768, `NOVELAI_MAX_AREA`, giving 19 buckets for sides 256–1024).
For each width from the minimum upward take the tallest height within both limits; do the same with the sides swapped;
add the base square; remove duplicates. An image goes to the bucket whose aspect ratio w/h is nearest its own.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

SIDE_STEP = 64
NOVELAI_MAX_AREA = 512 * 768  # NovelAI's cap for SD at resolution 512 (run config: buckets_max_area: 393216)


@dataclass(frozen=True)
class BucketParams:
    """What the run config says about buckets (`resolution`, `buckets_side_min`, `buckets_side_max`,
    `buckets_max_area`). `max_area=0` means resolution², so indexes recorded before the key existed read the same."""

    resolution: int = 512
    side_min: int = 256
    side_max: int = 768
    side_step: int = SIDE_STEP
    max_area: int = 0

    def __post_init__(self):
        if self.max_area == 0:
            object.__setattr__(self, "max_area", self.resolution * self.resolution)  # frozen: set once, here
        if self.max_area < self.resolution * self.resolution:
            raise ValueError(f"the maximum bucket area ({self.max_area}) must hold the base square "
                             f"{self.resolution}×{self.resolution} ({self.resolution * self.resolution}); 0 means that")
        step = self.side_step
        if step < 8 or step % 8:
            raise ValueError(f"side step must be a multiple of 8 and at least 8, got {step}")
        for name in ("resolution", "side_min", "side_max"):
            value = getattr(self, name)
            if value < step or value % step:
                raise ValueError(f"{name} must be a multiple of {step} and at least {step}, got {value}")
        if not self.side_min <= self.resolution <= self.side_max:
            raise ValueError(f"resolution ({self.resolution}) must lie between the minimum side ({self.side_min}) "
                             f"and the maximum side ({self.side_max})")

    def as_dict(self) -> dict[str, int]:
        return {"resolution": self.resolution, "side_min": self.side_min, "side_max": self.side_max,
                "side_step": self.side_step, "max_area": self.max_area}


def make_buckets(params: BucketParams) -> list[tuple[int, int]]:
    """Every bucket (width, height) of the scheme, sorted by aspect ratio (tall to wide), without duplicates."""
    step, side_min, side_max, max_area = params.side_step, params.side_min, params.side_max, params.max_area
    found: set[tuple[int, int]] = {(params.resolution, params.resolution)}
    for width in range(side_min, side_max + 1, step):
        height = min(side_max, (max_area // width) // step * step)
        if height >= side_min:
            found.add((width, height))
            found.add((height, width))
    return sorted(found, key=lambda wh: (wh[0] / wh[1], wh[0] * wh[1]))


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's; ties go to the larger bucket (less upscaling)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not buckets:
        raise ValueError("no buckets to choose from")
    ratio = width / height
    return min(buckets, key=lambda wh: (abs(wh[0] / wh[1] - ratio), -wh[0] * wh[1]))


def cover_box(width: int, height: int, bucket_width: int, bucket_height: int, *, crop: str = "center",
              rng: random.Random | None = None) -> tuple[float, float, float, float]:
    """The region of the source image (left, top, right, bottom) that, scaled to the bucket, covers it exactly.

    Scaling the image keeping its aspect until it covers the bucket and then cropping the overhang is the same as
    cropping this box from the source and resizing it to the bucket; doing it in that order resizes fewer pixels.
    `crop` is "center" or "random" (a uniform offset along the overhanging side, from `rng`).
    """
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    if min(width, height, bucket_width, bucket_height) <= 0:
        raise ValueError(f"sizes must be positive, got image {width}x{height}, bucket {bucket_width}x{bucket_height}")
    scale = max(bucket_width / width, bucket_height / height)
    box_width = min(width, bucket_width / scale)
    box_height = min(height, bucket_height / scale)
    spare_x, spare_y = width - box_width, height - box_height
    if crop == "random":
        rng = rng or random.Random()
        left, top = rng.uniform(0, spare_x), rng.uniform(0, spare_y)
    else:
        left, top = spare_x / 2, spare_y / 2
    return left, top, left + box_width, top + box_height


def cover_size(width: int, height: int, bucket_width: int, bucket_height: int) -> tuple[int, int]:
    """Size of the whole image scaled (keeping aspect) to just cover the bucket."""
    scale = max(bucket_width / width, bucket_height / height)
    return max(bucket_width, math.ceil(width * scale - 1e-9)), max(bucket_height, math.ceil(height * scale - 1e-9))
