"""Ingest from a folder: every bad-file case counted with its reason, dedup, odd names, incremental re-ingest."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from swarm_dataset.buckets import NOVELAI_MAX_AREA, BucketParams
from swarm_dataset.index import Index, SampleRow
from swarm_dataset.ingest import IngestOptions, ingest
from swarm_dataset.storage import open_storage
from swarm_launcher.cli import main as swarm_main
from tests.dataset.conftest import encode, photo, write_pair
from tests.dataset.test_validate import png_header_only

pytestmark = pytest.mark.timeout(120)


def messy_folder(root):
    """A folder with good files in odd modes and names, and every kind of bad file."""
    good = encode(photo(640, 480, seed=1), "JPEG", quality=90)
    write_pair(root, "good/a.jpg", good, "a photo")
    write_pair(root, "good/b.png", encode(photo(480, 640, seed=2), "PNG"), None)
    (root / "good/b.json").write_text(json.dumps({"tag_string_general": "1girl long_hair",
                                                  "tag_string_character": "someone"}))
    write_pair(root, "ünïcode dir/with space ☃.webp", encode(photo(500, 500, seed=3), "WEBP"), "snowman ☃")
    write_pair(root, "z/dup.jpg", good, "the same bytes as good/a.jpg (sorts later, so it is the duplicate)")
    write_pair(root, "modes/cmyk.jpg", encode(photo(300, 300, seed=4, mode="CMYK"), "JPEG"), "cmyk")
    rgba = photo(300, 300, seed=5).convert("RGBA")
    rgba.putalpha(128)
    write_pair(root, "modes/rgba.png", encode(rgba, "PNG"), "rgba")
    gray16 = Image.fromarray((np.arange(300 * 300, dtype=np.uint32).reshape(300, 300) % 65536).astype(np.uint16))
    write_pair(root, "modes/gray16.png", encode(gray16, "PNG"), "16 bit")
    write_pair(root, "modes/palette.png", encode(photo(300, 300, seed=6).quantize(32), "PNG"), "palette")
    exif = Image.Exif()
    exif[0x0112] = 6
    write_pair(root, "modes/rotated.jpg", encode(photo(400, 200, seed=7), "JPEG", exif=exif.tobytes()), "rotated")
    write_pair(root, "wide.jpg", encode(photo(900, 300, seed=8)), "three to one")
    # the bad ones
    write_pair(root, "bad/empty.jpg", b"", "zero bytes")
    write_pair(root, "bad/fake.png", b"this is not a png", "text")
    truncated = encode(photo(400, 300, seed=9), "JPEG")
    write_pair(root, "bad/truncated.jpg", truncated[: len(truncated) // 3], "cut")
    write_pair(root, "bad/bomb.png", png_header_only(7000, 7000), "bomb")
    write_pair(root, "bad/sliver.jpg", encode(photo(1000, 100, seed=10)), "sliver")
    write_pair(root, "bad/tiny.png", encode(photo(32, 32, seed=11), "PNG"), "tiny")
    write_pair(root, "bad/gif.png", encode(photo(100, 100, seed=12), "GIF"), "gif")
    write_pair(root, "bad/nocaption.jpg", encode(photo(300, 300, seed=13)), None)
    write_pair(root, "bad/emptycaption.jpg", encode(photo(300, 300, seed=14)), "   ")
    write_pair(root, "bad/badjson.jpg", encode(photo(300, 300, seed=15)), None)
    (root / "bad/badjson.json").write_text("{nope")
    (root / "orphan.txt").write_text("a caption with no image")
    (root / "README.md").write_text("not a dataset file")


EXPECTED_SKIPS = {"duplicate": 1, "zero_bytes": 1, "not_an_image": 1, "truncated": 1, "decompression_bomb": 1,
                  "absurd_aspect_ratio": 1, "too_small": 1, "unsupported_format": 1, "no_caption": 1,
                  "empty_caption": 1, "bad_caption": 1, "caption_without_image": 1, "not_an_image_or_caption": 1}
GOOD = 9  # a, b, ☃, cmyk, rgba, gray16, palette, rotated, wide


def run(source_dir, tmp_path, **kwargs):
    index = Index(tmp_path / "index.sqlite")
    storage = open_storage(str(tmp_path / "objects"))
    try:
        return ingest(source=open_storage(str(source_dir), create=False), index=index, storage=storage,
                      progress=False, options=IngestOptions(workers=3), **kwargs)
    finally:
        index.close()


def samples(tmp_path) -> dict[str, SampleRow]:
    index = Index(tmp_path / "index.sqlite")
    with index.session() as s:
        rows = {row.source_key: row for row in s.query(SampleRow)}
    index.close()
    return rows


def test_every_bad_file_is_counted_and_good_ones_are_normalised(tmp_path):
    source = tmp_path / "source"
    messy_folder(source)
    report = run(source, tmp_path)
    assert report.added == GOOD and report.updated == 0
    assert dict(report.skipped) == EXPECTED_SKIPS
    assert report.index_samples == GOOD and report.index_skipped == EXPECTED_SKIPS
    assert {"cmyk_to_rgb", "alpha_flattened", "high_bit_depth_scaled", "palette_to_rgb",
            "exif_orientation_applied"} <= set(report.normalised)

    rows = samples(tmp_path)
    assert set(rows) == {"good/a.jpg", "good/b.png", "ünïcode dir/with space ☃.webp", "modes/cmyk.jpg",
                         "modes/rgba.png", "modes/gray16.png", "modes/palette.png", "modes/rotated.jpg", "wide.jpg"}
    assert rows["good/b.png"].caption == "someone, 1girl, long hair"
    assert rows["ünïcode dir/with space ☃.webp"].caption == "snowman ☃"
    assert (rows["modes/rotated.jpg"].width, rows["modes/rotated.jpg"].height) == (200, 400)
    assert (rows["wide.jpg"].bucket_width, rows["wide.jpg"].bucket_height) == (768, 256)

    objects = open_storage(str(tmp_path / "objects"))
    stored = {info.key for info in objects.list()}
    # content-addressed: the normalised images and their bucket copies, nothing else
    assert stored == {row.key for row in rows.values()} | {row.bucket_key for row in rows.values()}
    for row in rows.values():
        with Image.open(__import__("io").BytesIO(objects.get(row.bucket_key))) as im:
            assert im.format == "JPEG" and im.size == (row.bucket_width, row.bucket_height)
    original = (source / "good/a.jpg").read_bytes()
    a = rows["good/a.jpg"]
    assert objects.get(a.key) == original  # a plain RGB JPEG is stored as it is
    assert a.sha256 == hashlib.sha256(original).hexdigest()
    for row in rows.values():  # every stored object is RGB and named by its own sha256
        data = objects.get(row.key)
        assert row.key.split("/")[1].split(".")[0] == hashlib.sha256(data).hexdigest()
        assert row.bucket_key.split("/")[1].split(".")[0] == hashlib.sha256(objects.get(row.bucket_key)).hexdigest()
        with Image.open(__import__("io").BytesIO(data)) as im:
            assert im.mode == "RGB" and im.size == (row.width, row.height)


def test_reingest_is_incremental(tmp_path):
    source = tmp_path / "source"
    messy_folder(source)
    first = run(source, tmp_path)
    ids = {key: row.id for key, row in samples(tmp_path).items()}

    again = run(source, tmp_path)
    assert (again.added, again.updated, sum(again.skipped.values())) == (0, 0, 0)
    assert again.unchanged == first.images + 2  # every image (used or skipped) and the two unpaired files
    assert samples(tmp_path).keys() == ids.keys()

    (source / "good/a.txt").write_text("a better caption")  # caption only
    (source / "good/b.png").write_bytes(encode(photo(800, 400, seed=20), "PNG"))  # new content, new bucket
    (source / "bad/truncated.jpg").write_bytes(encode(photo(400, 300, seed=9)))  # fixed
    write_pair(source, "new/c.jpg", encode(photo(333, 444, seed=21)), "brand new")
    os.remove(source / "orphan.txt")
    third = run(source, tmp_path)
    assert third.added == 2 and third.updated == 2 and sum(third.skipped.values()) == 0
    assert third.missing == 1
    rows = samples(tmp_path)
    assert rows["good/a.jpg"].caption == "a better caption" and rows["good/a.jpg"].id == ids["good/a.jpg"]
    assert rows["good/b.png"].id == ids["good/b.png"] and rows["good/b.png"].width == 800
    assert "bad/truncated.jpg" in rows and "new/c.jpg" in rows
    assert third.index_skipped.get("truncated") is None
    assert third.index_skipped["caption_without_image"] == 1  # kept until pruned

    pruned = run(source, tmp_path, prune=True)
    assert pruned.missing == 1 and "caption_without_image" not in pruned.index_skipped
    assert run(source, tmp_path).missing == 0


def test_changed_bucket_parameters_rebucket_existing_samples(tmp_path):
    source = tmp_path / "source"
    write_pair(source, "wide.jpg", encode(photo(900, 300)), "wide")
    write_pair(source, "square.jpg", encode(photo(300, 300, seed=1)), "square")
    run(source, tmp_path, bucket_params=BucketParams(512, 256, 768))
    before = samples(tmp_path)["wide.jpg"].bucket_key
    report = run(source, tmp_path, bucket_params=BucketParams(512, 256, 1024))
    assert report.rebucketed == 1 and report.prepared == 1  # a new bucket copy for the sample that moved
    wide = samples(tmp_path)["wide.jpg"]
    assert (wide.bucket_width, wide.bucket_height) == (832, 256)
    assert wide.bucket_key != before
    with Image.open(open_storage(str(tmp_path / "objects")).root / wide.bucket_key) as im:
        assert im.size == (832, 256)


def test_cli_ingest_and_stats(tmp_path, capsys):
    source = tmp_path / "source"
    messy_folder(source)
    config = tmp_path / "run.yaml"
    config.write_text("resolution: 512\nbuckets_side_min: 256\nbuckets_side_max: 1024\n")
    with pytest.raises(SystemExit) as exit_info:
        swarm_main(["ingest", str(source), "--index", str(tmp_path / "i.sqlite"), "--storage",
                    (tmp_path / "objects").as_uri(), "--config", str(config), "--json", "--no-progress"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == GOOD and report["skipped"] == EXPECTED_SKIPS
    assert report["skipped_total"] == sum(EXPECTED_SKIPS.values())

    # A re-ingest without bucket options keeps the index's buckets (no surprise re-bucketing to the defaults).
    with pytest.raises(SystemExit):
        swarm_main(["ingest", str(source), "--index", str(tmp_path / "i.sqlite"), "--json", "--no-progress"])
    again = json.loads(capsys.readouterr().out)
    assert again["rebucketed"] == 0 and again["unchanged"] == report["images"] + 2

    with pytest.raises(SystemExit) as exit_info:
        swarm_main(["dataset", "stats", "--index", str(tmp_path / "i.sqlite")])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"samples: {GOOD}" in out and "832 x 256" in out and "truncated: 1" in out  # buckets from the config

    # NovelAI's area cap (512×768) on the recorded sides 256-1024: the other bucket values are kept, the cap recorded.
    with pytest.raises(SystemExit):
        swarm_main(["ingest", str(source), "--index", str(tmp_path / "i.sqlite"), "--buckets-max-area", "393216",
                    "--json", "--no-progress"])
    capsys.readouterr()
    recorded = Index(str(tmp_path / "i.sqlite"), create=False).bucket_params()
    assert recorded == BucketParams(512, 256, 1024, max_area=NOVELAI_MAX_AREA)


@pytest.mark.parametrize("args, message", [
    (["ingest", "/does/not/exist", "--index", "{tmp}/i.sqlite"], "is not a folder"),
    (["ingest", "{tmp}", "--index", "{tmp}/i.sqlite", "--resolution", "500"], "multiple of 64"),
    (["ingest", "{tmp}", "--index", "{tmp}/i.sqlite", "--max-aspect", "0.5"], "aspect ratio limit"),
    (["ingest", "{tmp}", "--index", "{tmp}/i.sqlite", "--buckets-max-area", "1000"], "base square"),
    (["ingest", "{tmp}", "--index", "{tmp}/i.sqlite", "--storage", "ftp://x/y"], "unsupported storage scheme"),
    (["dataset", "stats", "--index", "{tmp}/missing.sqlite"], "swarm ingest"),
])
def test_cli_refuses_bad_input_with_a_clear_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        swarm_main([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_caption_and_storage_options(tmp_path, capsys):
    source = tmp_path / "source"
    write_pair(source, "post.jpg", encode(photo(300, 300)), None)
    (source / "post.json").write_text(json.dumps({"tag_string_general": "long_hair smile",
                                                  "tag_string_character": "someone"}))
    write_pair(source, "blank.png", encode(photo(300, 300, seed=2), "PNG"), "")
    with pytest.raises(SystemExit) as exit_info:
        swarm_main(["ingest", str(source), "--index", str(tmp_path / "i.sqlite"), "--storage", str(tmp_path / "o"),
                    "--caption-fields", "tag_string_general", "--caption-joiner", " | ", "--keep-underscores",
                    "--allow-empty-captions", "--no-prepare-buckets", "--store-encoding", "png", "--json",
                    "--no-progress"])
    assert exit_info.value.code == 0
    assert json.loads(capsys.readouterr().out)["added"] == 2
    index = Index(tmp_path / "i.sqlite")
    with index.session() as s:
        rows = {row.source_key: row for row in s.query(SampleRow)}
    index.close()
    assert rows["post.jpg"].caption == "long_hair | smile" and rows["blank.png"].caption == ""
    assert all(row.bucket_key is None for row in rows.values())  # no bucket copies
    assert rows["blank.png"].key.endswith(".png") and rows["post.jpg"].key.endswith(".jpg")  # JPEG kept as is
