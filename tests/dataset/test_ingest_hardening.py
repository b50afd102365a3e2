"""Folder ingest never follows a symbolic link out of the source folder, captions have a size cap, and objects written
to a storage folder are fsynced (file and folder) before and after their rename."""
from __future__ import annotations

import os

import pytest

from swarm_dataset.index import Index, SampleRow, SkipRow
from swarm_dataset.ingest import IngestOptions, ingest
from swarm_dataset.pairing import MAX_CAPTION_CHARS, CaptionOptions
from swarm_dataset.storage import LinkOutsideError, LocalStorage, open_storage
from tests.dataset.conftest import encode, photo, write_pair

pytestmark = pytest.mark.timeout(120)


def run_ingest(source_dir, tmp_path, *, captions: CaptionOptions = CaptionOptions()):
    index = Index(tmp_path / "index.sqlite")
    try:
        return ingest(source=open_storage(str(source_dir), create=False), index=index,
                      storage=open_storage(str(tmp_path / "objects")), progress=False,
                      options=IngestOptions(workers=2, captions=captions))
    finally:
        index.close()


def indexed(tmp_path) -> dict[str, str]:
    index = Index(tmp_path / "index.sqlite")
    with index.session() as s:
        rows = {row.source_key: row.caption for row in s.query(SampleRow)}
    index.close()
    return rows


def test_symlinks_out_of_the_source_folder_are_not_followed(tmp_path):
    secret = tmp_path / "secret.env"
    secret.write_text("MINIO_ROOT_PASSWORD=hunter2")
    outside_image = tmp_path / "outside.jpg"
    outside_image.write_bytes(encode(photo(300, 300, seed=1)))
    source = tmp_path / "source"
    write_pair(source, "good.jpg", encode(photo(300, 300, seed=2)), "a good one")
    (source / "stolen.jpg").write_bytes(encode(photo(300, 300, seed=3)))
    (source / "stolen.txt").symlink_to(secret)  # the hole: this became a served caption
    (source / "linked.jpg").symlink_to(outside_image)
    (source / "linked.txt").write_text("an image that lives outside")
    (source / "inside.jpg").symlink_to(source / "good.jpg")  # a link that stays inside is fine
    (source / "inside.txt").write_text("the same picture under another name")
    (source / "elsewhere").symlink_to(tmp_path, target_is_directory=True)  # never walked into

    report = run_ingest(source, tmp_path)
    assert report.skipped["link_outside_source"] == 2
    assert report.skipped["duplicate"] == 1  # inside.jpg: read through its link, same bytes as good.jpg
    captions = indexed(tmp_path)
    assert captions == {"good.jpg": "a good one"}
    assert not any("hunter2" in c for c in captions.values())
    index = Index(tmp_path / "index.sqlite")
    with index.session() as s:
        skips = {row.source_key: (row.reason, row.detail) for row in s.query(SkipRow)}
    index.close()
    assert skips["stolen.jpg"][0] == "link_outside_source" and "not followed" in skips["stolen.jpg"][1]
    assert skips["linked.jpg"][0] == "link_outside_source"

    storage = LocalStorage(source, create=False)
    with pytest.raises(LinkOutsideError, match="outside"):
        storage.get("stolen.txt")
    assert storage.get("inside.jpg") == (source / "good.jpg").read_bytes()


def test_captions_over_the_cap_are_skipped_with_a_reason(tmp_path):
    source = tmp_path / "source"
    write_pair(source, "ok.jpg", encode(photo(300, 300, seed=1)), "short")
    write_pair(source, "long.jpg", encode(photo(300, 300, seed=2)), "word " * MAX_CAPTION_CHARS)
    write_pair(source, "huge.jpg", encode(photo(300, 300, seed=3)), None)
    (source / "huge.txt").write_bytes(b"x" * 5000)
    report = run_ingest(source, tmp_path, captions=CaptionOptions(max_file_bytes=4096))
    assert report.skipped["caption_too_large"] == 2
    assert indexed(tmp_path) == {"ok.jpg": "short"}
    with pytest.raises(ValueError, match="caption caps"):
        CaptionOptions(max_chars=0)


def test_objects_in_a_storage_folder_are_fsynced_and_replaced_whole(tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path / "objects")
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    storage.put("ab/object.jpg", b"first")
    folder = str(tmp_path / "objects" / "ab")
    assert len(synced) == 2 and synced[0].startswith(folder + "/.object.jpg.") and synced[1] == folder
    storage.put("ab/object.jpg", b"second")
    assert storage.get("ab/object.jpg") == b"second"
    assert sorted(os.listdir(folder)) == ["object.jpg"], "no temporary file is left behind"
