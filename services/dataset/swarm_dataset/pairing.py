"""Pure rules of ingest: which files pair into (image, caption), how captions are read, what a file's signature is.

No I/O: listing and fetching happen in ingest.py; these functions only look at names, sizes, versions and bytes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable

from swarm_dataset.storage import ObjectInfo
from swarm_dataset.validate import has_image_extension

CAPTION_EXTENSIONS = (".txt", ".json")
# Danbooru post JSON: the category tag strings in the order people prompt with, falling back to the all-tags field.
DEFAULT_CAPTION_FIELDS = ("tag_string_character", "tag_string_copyright", "tag_string_artist", "tag_string_general")
FALLBACK_CAPTION_FIELDS = ("tag_string", "tags")
# Free-text fields some scrapers write; taken as a sentence, never split into tags.
TEXT_CAPTION_FIELDS = ("caption", "description", "text")
DEFAULT_JOINER = ", "

# Reasons of ingest itself (validate.py has the image ones).
NO_CAPTION = "no_caption"
CAPTION_WITHOUT_IMAGE = "caption_without_image"
NOT_IMAGE_OR_CAPTION = "not_an_image_or_caption"
EMPTY_CAPTION = "empty_caption"
BAD_CAPTION = "bad_caption"
CAPTION_TOO_LARGE = "caption_too_large"
# Caps: a caption file is read whole into memory and the caption is stored in the index and sent with every sample.
# A Danbooru post's JSON is a few KB and a long written caption about 2,000 characters.
MAX_CAPTION_FILE_BYTES = 1 << 20
MAX_CAPTION_CHARS = 4096


class CaptionError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CaptionOptions:
    fields: tuple[str, ...] = DEFAULT_CAPTION_FIELDS  # JSON fields whose tags make the caption, in order
    joiner: str = DEFAULT_JOINER
    underscores_to_spaces: bool = True  # Danbooru writes "long_hair"; prompts say "long hair"
    allow_empty: bool = False
    max_file_bytes: int = MAX_CAPTION_FILE_BYTES  # a larger caption file is skipped unread
    max_chars: int = MAX_CAPTION_CHARS  # a longer caption (after tidying) is skipped, never cut

    def __post_init__(self):
        if self.max_file_bytes < 1 or self.max_chars < 1:
            raise ValueError(f"caption caps must be >= 1, got max_file_bytes={self.max_file_bytes} "
                             f"max_chars={self.max_chars}")


@dataclass(frozen=True)
class Pair:
    image: ObjectInfo
    caption: ObjectInfo | None  # None: the image has no caption file

    @property
    def signature(self) -> str:
        return join_signature(image_signature(self.image), caption_signature(self.caption))


@dataclass
class Pairing:
    pairs: list[Pair] = field(default_factory=list)
    # Files that pair with nothing and are not images: (object, reason)
    unpaired: list[tuple[ObjectInfo, str]] = field(default_factory=list)


def image_signature(info: ObjectInfo) -> str:
    return f"{info.size}:{info.version}"


def caption_signature(info: ObjectInfo | None) -> str:
    return f"{info.key}:{info.size}:{info.version}" if info else "-"


def join_signature(image_part: str, caption_part: str) -> str:
    return f"{image_part}|{caption_part}"


def split_signature(signature: str) -> tuple[str, str]:
    image_part, _, caption_part = signature.partition("|")
    return image_part, caption_part


def _stem(key: str) -> str:
    dot = key.rfind(".")
    return key[:dot] if dot > key.rfind("/") else key


def caption_candidates(image_key: str) -> tuple[str, ...]:
    """Caption files for `a/b.jpg`, in order of preference: a/b.txt, a/b.json, a/b.jpg.txt, a/b.jpg.json
    (the last two are what gallery-dl and some scrapers write)."""
    stem = _stem(image_key)
    return f"{stem}.txt", f"{stem}.json", f"{image_key}.txt", f"{image_key}.json"


def pair_files(objects: Iterable[ObjectInfo]) -> Pairing:
    """Pair every image with the caption file beside it. Captions nobody uses and other files are reported."""
    by_key = {obj.key: obj for obj in objects}
    result = Pairing()
    used_captions: set[str] = set()
    for key in sorted(by_key):
        if not has_image_extension(key):
            continue
        caption = next((by_key[c] for c in caption_candidates(key) if c in by_key), None)
        if caption is not None:
            used_captions.add(caption.key)
        result.pairs.append(Pair(image=by_key[key], caption=caption))
    for key in sorted(by_key):
        if has_image_extension(key) or key in used_captions:
            continue
        reason = CAPTION_WITHOUT_IMAGE if key.lower().endswith(CAPTION_EXTENSIONS) else NOT_IMAGE_OR_CAPTION
        result.unpaired.append((by_key[key], reason))
    return result


def _decode_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CaptionError(BAD_CAPTION, f"{name} is not UTF-8 text: {e}") from None


def _tidy(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def caption_from_text(data: bytes, *, name: str = "caption", options: CaptionOptions = CaptionOptions()) -> str:
    caption = _tidy(_decode_text(data, name))
    if not caption and not options.allow_empty:
        raise CaptionError(EMPTY_CAPTION, f"{name} is empty")
    return caption


def _tags(value, *, underscores_to_spaces: bool) -> list[str]:
    if isinstance(value, str):
        items = value.split()
    elif isinstance(value, list):
        items = [str(v.get("name", "")) if isinstance(v, dict) else str(v) for v in value]
    else:
        return []
    tags = [_tidy(t.replace("_", " ") if underscores_to_spaces else t) for t in items]
    return [t for t in tags if t]


def caption_from_json(data: bytes, *, name: str = "caption", options: CaptionOptions = CaptionOptions()) -> str:
    """Danbooru-style metadata -> "tag one, tag two, ...": the tags of every field of `options.fields` present, in
    that order, duplicates dropped. When none is present: the fallback tag fields, then a free-text caption field."""
    try:
        meta = json.loads(_decode_text(data, name))
    except json.JSONDecodeError as e:
        raise CaptionError(BAD_CAPTION, f"{name} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CaptionError(BAD_CAPTION, f"{name} holds a JSON {type(meta).__name__}, expected an object")
    caption = ""
    for fields in (options.fields, FALLBACK_CAPTION_FIELDS):
        present = [f for f in fields if f in meta]
        if present:
            tags: list[str] = []
            for f in present:
                tags.extend(t for t in _tags(meta[f], underscores_to_spaces=options.underscores_to_spaces)
                            if t not in tags)
            caption = options.joiner.join(tags)
            break
    else:
        text = next((meta[f] for f in TEXT_CAPTION_FIELDS if isinstance(meta.get(f), str)), None)
        if text is None:
            fields = options.fields + FALLBACK_CAPTION_FIELDS + TEXT_CAPTION_FIELDS
            raise CaptionError(BAD_CAPTION, f"{name} has none of the caption fields {', '.join(fields)}")
        caption = _tidy(text)
    if not caption and not options.allow_empty:
        raise CaptionError(EMPTY_CAPTION, f"{name} gives an empty caption")
    return caption


def check_caption_file_size(size: int, *, key: str, options: CaptionOptions = CaptionOptions()) -> None:
    """Refuse a caption file over the cap before (and after) reading it."""
    if size > options.max_file_bytes:
        raise CaptionError(CAPTION_TOO_LARGE, f"{key} is {size} bytes, over the {options.max_file_bytes}-byte cap on "
                                              f"caption files")


def read_caption(data: bytes, *, key: str, options: CaptionOptions = CaptionOptions()) -> str:
    check_caption_file_size(len(data), key=key, options=options)
    if key.lower().endswith(".json"):
        caption = caption_from_json(data, name=key, options=options)
    else:
        caption = caption_from_text(data, name=key, options=options)
    if len(caption) > options.max_chars:
        raise CaptionError(CAPTION_TOO_LARGE, f"{key} gives a caption of {len(caption)} characters, over the cap of "
                                              f"{options.max_chars}")
    return caption
