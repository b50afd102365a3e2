"""NovelAI aspect-ratio buckets and resize-to-cover-then-crop (pure functions)."""
from __future__ import annotations

import random

import pytest
from PIL import Image

from swarm_dataset.buckets import NOVELAI_MAX_AREA, BucketParams, cover_box, cover_size, make_buckets, nearest_bucket
from swarm_dataset.imaging import bucket_bytes, decode_rgb, resize_to_bucket
from tests.dataset.conftest import encode, photo

pytestmark = pytest.mark.timeout(60)


def test_buckets_for_512_follow_the_novelai_walk():
    buckets = make_buckets(BucketParams(resolution=512, side_min=256, side_max=768))
    # Hand-computed: for each width 256..768 step 64 the tallest height with area <= 512² and side <= 768, plus swaps.
    expected = {(256, 768), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384), (704, 320),
                (768, 320), (768, 256), (320, 704)}
    assert set(buckets) == expected
    assert len(buckets) == len(set(buckets))
    ratios = [w / h for w, h in buckets]
    assert ratios == sorted(ratios)


@pytest.mark.parametrize("params", [BucketParams(512, 256, 768), BucketParams(768, 384, 1024),
                                    BucketParams(256, 128, 512), BucketParams(512, 512, 512)])
def test_every_bucket_respects_the_limits(params):
    buckets = make_buckets(params)
    assert (params.resolution, params.resolution) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert params.side_min <= w <= params.side_max and params.side_min <= h <= params.side_max
        assert w * h <= params.max_area


def test_bucket_params_are_validated():
    with pytest.raises(ValueError, match="multiple of 64"):
        BucketParams(resolution=500)
    with pytest.raises(ValueError, match="between"):
        BucketParams(resolution=1024, side_min=256, side_max=768)


def test_nearest_bucket_by_aspect_ratio():
    buckets = make_buckets(BucketParams())
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)
    assert nearest_bucket(1920, 1080, buckets) == (640, 384)  # 1.78 -> 1.67 beats 2.2
    assert nearest_bucket(1080, 1920, buckets) == (384, 640)
    assert nearest_bucket(3000, 1000, buckets) == (768, 256)  # widest available
    assert nearest_bucket(1200, 1000, buckets) == (576, 448)
    with pytest.raises(ValueError):
        nearest_bucket(0, 10, buckets)


def test_cover_box_centre_and_random():
    # 1000x500 into 512x512: scale 1.024; the source box is 500x500 in the middle.
    left, top, right, bottom = cover_box(1000, 500, 512, 512)
    assert (round(left, 6), top, round(right, 6), bottom) == (250.0, 0.0, 750.0, 500.0)
    assert cover_size(1000, 500, 512, 512) == (1024, 512)
    rng = random.Random(0)
    boxes = {tuple(round(v, 3) for v in cover_box(1000, 500, 512, 512, crop="random", rng=rng)) for _ in range(20)}
    assert len(boxes) > 1
    for left, top, right, bottom in boxes:
        assert 0 <= left <= 500 and top == 0 and round(right - left, 3) == 500 and bottom == 500
    with pytest.raises(ValueError, match="crop"):
        cover_box(10, 10, 5, 5, crop="left")


def test_resize_to_bucket_covers_then_crops_the_centre():
    # Left third red, middle green, right third blue: a centre crop to a square keeps only green.
    image = Image.new("RGB", (900, 300), (255, 0, 0))
    image.paste((0, 255, 0), (300, 0, 600, 300))
    image.paste((0, 0, 255), (600, 0, 900, 300))
    out = resize_to_bucket(image, 256, 256)
    assert out.size == (256, 256)
    for x in (2, 128, 253):
        r, g, b = out.getpixel((x, 128))
        assert g > 200 and r < 40 and b < 40


def test_bucket_bytes_uses_draft_decode_and_hits_the_bucket_exactly():
    data = encode(photo(2000, 1500, seed=3), "JPEG", quality=90)
    for encoding in ("jpeg", "png", "webp"):
        image = decode_rgb(bucket_bytes(data, 576, 448, encoding=encoding, quality=90))
        assert image.size == (576, 448) and image.mode == "RGB"
    upscaled = decode_rgb(bucket_bytes(encode(photo(100, 80)), 576, 448))
    assert upscaled.size == (576, 448)


def test_novelai_area_cap_gives_its_19_buckets():
    # NovelAI's scheme for SD at 512: sides 256-1024, area at most 512×768 (REFERENCE / docs/design.md).
    params = BucketParams(resolution=512, side_min=256, side_max=1024, max_area=NOVELAI_MAX_AREA)
    buckets = make_buckets(params)
    assert len(buckets) == 19
    assert {(256, 1024), (384, 1024), (448, 832), (512, 768), (512, 512), (768, 512), (1024, 256)} <= set(buckets)
    assert all(w * h <= 512 * 768 for w, h in buckets)
    # Today's default (area resolution²) on the same sides: the 17 buckets this repository always made.
    assert len(make_buckets(BucketParams(resolution=512, side_min=256, side_max=1024))) == 17


def test_max_area_defaults_to_resolution_squared_and_round_trips():
    assert BucketParams(resolution=512).max_area == 512 * 512
    assert BucketParams(512, 256, 768) == BucketParams(512, 256, 768, max_area=512 * 512)
    params = BucketParams(512, 256, 1024, max_area=NOVELAI_MAX_AREA)
    assert BucketParams(**params.as_dict()) == params
    recorded_before_the_key = {"resolution": 512, "side_min": 256, "side_max": 768, "side_step": 64}
    assert BucketParams(**recorded_before_the_key) == BucketParams()
    with pytest.raises(ValueError, match="base square"):
        BucketParams(resolution=512, max_area=512 * 256)
