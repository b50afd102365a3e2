"""Storage and ingest against a real S3-compatible HTTP server (moto's server mode on loopback), path-style."""
from __future__ import annotations

import socket

import boto3
import pytest
from botocore.config import Config

from swarm_dataset.client import iter_chunk_samples
from swarm_dataset.index import Index
from swarm_dataset.ingest import ingest
from swarm_dataset.server import start_server
from swarm_dataset.storage import (
    BadKeyError,
    LocalStorage,
    S3Storage,
    StorageError,
    check_key,
    content_key,
    open_storage,
)
from tests.dataset.conftest import encode, photo

pytestmark = pytest.mark.timeout(120)


def s3_client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs", "a//b", "a/./b", "", "a\\b", "a\x00b"])
def test_traversal_and_odd_keys_are_refused(tmp_path, key):
    with pytest.raises(BadKeyError):
        check_key(key)
    with pytest.raises(BadKeyError):
        LocalStorage(tmp_path).get(key)


def test_content_keys():
    sha = "ab" + "0" * 62
    assert content_key(sha, "jpg") == f"ab/{sha}.jpg"
    with pytest.raises(BadKeyError):
        content_key("../" + sha[3:], "jpg")
    with pytest.raises(BadKeyError):
        content_key(sha, "exe")


def test_open_storage_urls(tmp_path):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert open_storage(tmp_path.as_uri()).root == tmp_path
    with pytest.raises(StorageError, match="unsupported storage scheme"):
        open_storage("gs://bucket/x")
    with pytest.raises(StorageError, match="needs a bucket"):
        open_storage("s3:///prefix", endpoint_url="http://127.0.0.1:1")


@pytest.mark.parametrize("presigned_gets", [True, False])
def test_s3_storage_put_get_list_with_prefix(moto_endpoint, presigned_gets):
    storage = S3Storage("store-test", "some/prefix", endpoint_url=moto_endpoint, presigned_gets=presigned_gets)
    assert isinstance(open_storage("s3://store-test/some/prefix", endpoint_url=moto_endpoint), S3Storage)
    storage.ensure_bucket()
    storage.put("a/b.jpg", b"one")
    storage.put("a/c d ☃.jpg", b"two")
    storage.put("top.txt", b"three")
    assert storage.get("a/b.jpg") == b"one" and storage.exists("a/c d ☃.jpg") and not storage.exists("nope")
    with pytest.raises(KeyError):
        storage.get("nope")
    listed = {info.key: info for info in storage.list()}
    assert set(listed) == {"a/b.jpg", "a/c d ☃.jpg", "top.txt"}
    assert listed["a/b.jpg"].size == 3 and listed["a/b.jpg"].version  # the ETag
    assert {info.key for info in storage.list("a")} == {"a/b.jpg", "a/c d ☃.jpg"}
    raw = s3_client(moto_endpoint).list_objects_v2(Bucket="store-test")["Contents"]
    assert {o["Key"] for o in raw} == {"some/prefix/a/b.jpg", "some/prefix/a/c d ☃.jpg", "some/prefix/top.txt"}
    with pytest.raises(BadKeyError):
        storage.get("../escape")


def test_unreachable_endpoint_fails_fast_with_a_clear_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=2)
    with pytest.raises(StorageError, match="s3://bucket/x"):
        storage.get("x")


def test_ingest_from_s3_into_s3_and_stream(moto_endpoint, tmp_path):
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket="raw-images")
    names = ["set a/one.jpg", "set a/ünï ☃.png", "set b/deep/three.jpg", "set b/deep/four.webp"]
    for i, name in enumerate(names):
        fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        client.put_object(Bucket="raw-images", Key=f"danbooru/{name}",
                          Body=encode(photo(400 + 64 * i, 400, seed=i), fmt))
        client.put_object(Bucket="raw-images", Key=f"danbooru/{name.rsplit('.', 1)[0]}.txt",
                          Body=f"caption {i}".encode())
    client.put_object(Bucket="raw-images", Key="danbooru/lonely.jpg", Body=encode(photo(300, 300, seed=9)))
    client.put_object(Bucket="raw-images", Key="danbooru/broken.jpg", Body=b"\xff\xd8\xff garbage")
    client.put_object(Bucket="raw-images", Key="danbooru/broken.txt", Body=b"broken")
    client.put_object(Bucket="raw-images", Key="elsewhere/other.jpg", Body=encode(photo(300, 300, seed=8)))

    source = open_storage("s3://raw-images/danbooru", endpoint_url=moto_endpoint)
    storage = open_storage("s3://dataset-objects/v1", endpoint_url=moto_endpoint)
    storage.ensure_bucket()
    index = Index(tmp_path / "index.sqlite")
    try:
        report = ingest(source=source, index=index, storage=storage, progress=False)
        assert report.added == 4 and dict(report.skipped) == {"no_caption": 1, "not_an_image": 1}
        stored = {o["Key"] for o in client.list_objects_v2(Bucket="dataset-objects")["Contents"]}
        assert len(stored) == 8 and all(k.startswith("v1/") for k in stored)  # 4 images + 4 bucket copies

        again = ingest(source=source, index=index, storage=storage, progress=False)
        assert (again.added, again.updated, again.unchanged) == (0, 0, 6)  # ETags unchanged: nothing fetched
        client.put_object(Bucket="raw-images", Key="danbooru/set a/one.txt", Body=b"new caption")
        client.put_object(Bucket="raw-images", Key="danbooru/lonely.txt", Body=b"now paired")
        third = ingest(source=source, index=index, storage=storage, progress=False)
        assert (third.added, third.updated) == (1, 1)
    finally:
        index.close()

    running = start_server(index_path=str(tmp_path / "index.sqlite"), listen="127.0.0.1:0", metrics_port=None,
                           s3_endpoint_url=moto_endpoint)
    try:
        got = list(iter_chunk_samples(running.address, [1, 2, 3, 4, 5], timeout=60))
        captions = {caption for _, caption, _ in got}
        assert "new caption" in captions and "now paired" in captions and len(got) == 5
        for image, _, sample_id in got:
            info = running.index.samples_by_ids([sample_id])[sample_id]
            assert image.size == (info.bucket_width, info.bucket_height)
    finally:
        running.stop(grace=1)
