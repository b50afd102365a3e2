"""Pure ingest rules: pairing images with captions, reading .txt and Danbooru-style .json captions."""
from __future__ import annotations

import json

import pytest

from swarm_dataset import pairing as p
from swarm_dataset.storage import ObjectInfo

pytestmark = pytest.mark.timeout(60)


def obj(key: str, size: int = 10, version: str = "1") -> ObjectInfo:
    return ObjectInfo(key=key, size=size, version=version)


def test_pair_files_prefers_txt_and_reports_leftovers():
    result = p.pair_files([obj("a/x.jpg"), obj("a/x.txt"), obj("a/x.json"), obj("b/y.PNG"), obj("b/y.png.json"),
                           obj("c/z.webp"), obj("d/orphan.txt"), obj("e/notes.pdf"), obj("f/ünï cödé 1.jpeg"),
                           obj("f/ünï cödé 1.txt")])
    pairs = {pair.image.key: pair.caption.key if pair.caption else None for pair in result.pairs}
    # Names are case-sensitive (as on S3): y.PNG does not pair with y.png.json.
    assert pairs == {"a/x.jpg": "a/x.txt", "b/y.PNG": None, "c/z.webp": None, "f/ünï cödé 1.jpeg": "f/ünï cödé 1.txt"}
    leftovers = dict((o.key, reason) for o, reason in result.unpaired)
    assert leftovers["a/x.json"] == p.CAPTION_WITHOUT_IMAGE  # the .txt won; the .json is unused
    assert leftovers["d/orphan.txt"] == p.CAPTION_WITHOUT_IMAGE
    assert leftovers["e/notes.pdf"] == p.NOT_IMAGE_OR_CAPTION
    assert leftovers["b/y.png.json"] == p.CAPTION_WITHOUT_IMAGE


def test_gallery_dl_style_caption_names():
    result = p.pair_files([obj("post.jpg"), obj("post.jpg.json")])
    assert result.pairs[0].caption.key == "post.jpg.json" and not result.unpaired


def test_signature_changes_with_image_or_caption():
    pair = p.Pair(image=obj("x.jpg", 10, "1"), caption=obj("x.txt", 5, "1"))
    same = p.Pair(image=obj("x.jpg", 10, "1"), caption=obj("x.txt", 5, "1"))
    new_caption = p.Pair(image=obj("x.jpg", 10, "1"), caption=obj("x.txt", 6, "2"))
    new_image = p.Pair(image=obj("x.jpg", 11, "2"), caption=obj("x.txt", 5, "1"))
    assert pair.signature == same.signature
    assert p.split_signature(new_caption.signature)[0] == p.split_signature(pair.signature)[0]
    assert new_caption.signature != pair.signature and new_image.signature != pair.signature


def test_text_captions_are_tidied_and_checked():
    assert p.caption_from_text("\ufeffa  cat\non a\tmat \n".encode()) == "a cat on a mat"
    with pytest.raises(p.CaptionError) as e:
        p.caption_from_text(b"  \n")
    assert e.value.reason == p.EMPTY_CAPTION
    assert p.caption_from_text(b"", options=p.CaptionOptions(allow_empty=True)) == ""
    with pytest.raises(p.CaptionError) as e:
        p.caption_from_text(b"\xff\xfe\xfa")
    assert e.value.reason == p.BAD_CAPTION


def danbooru(**fields) -> bytes:
    return json.dumps({"id": 1, "rating": "s", **fields}).encode()


def test_danbooru_json_tags_in_category_order():
    data = danbooru(tag_string_general="1girl long_hair smile", tag_string_character="hatsune_miku",
                    tag_string_copyright="vocaloid", tag_string_artist="", tag_string="everything else")
    assert p.caption_from_json(data) == "hatsune miku, vocaloid, 1girl, long hair, smile"
    keep = p.CaptionOptions(underscores_to_spaces=False, joiner=" ")
    assert p.caption_from_json(data, options=keep) == "hatsune_miku vocaloid 1girl long_hair smile"
    only_general = p.CaptionOptions(fields=("tag_string_general",))
    assert p.caption_from_json(data, options=only_general) == "1girl, long hair, smile"


def test_json_fallbacks():
    assert p.caption_from_json(danbooru(tag_string="a_b c")) == "a b, c"
    assert p.caption_from_json(danbooru(tags=["x_y", "z", "z"])) == "x y, z"
    assert p.caption_from_json(danbooru(tags=[{"name": "cat"}, {"name": "dog"}])) == "cat, dog"
    assert p.caption_from_json(danbooru(caption="A photo of a cat.")) == "A photo of a cat."


@pytest.mark.parametrize("data, reason", [(b"{not json", p.BAD_CAPTION), (b"[1, 2]", p.BAD_CAPTION),
                                          (danbooru(), p.BAD_CAPTION),
                                          (danbooru(tag_string_general=""), p.EMPTY_CAPTION)])
def test_bad_json_captions(data, reason):
    with pytest.raises(p.CaptionError) as e:
        p.caption_from_json(data, name="x.json")
    assert e.value.reason == reason and "x.json" in e.value.detail


def test_read_caption_dispatches_on_extension():
    assert p.read_caption(b"plain text", key="a.txt") == "plain text"
    assert p.read_caption(danbooru(tag_string="a b"), key="a.JSON") == "a, b"
