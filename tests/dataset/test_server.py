"""The gRPC Dataset service against a real index and storage: order, errors, resizing, as_stored, paging, stats."""
from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from swarm import rpc
from swarm.v1 import dataset_pb2, dataset_pb2_grpc
from swarm_dataset.client import iter_chunk_messages, iter_chunk_samples
from swarm_dataset.index import Index
from swarm_dataset.ingest import ingest
from swarm_dataset.server import start_server
from swarm_dataset.storage import open_storage
from tests.dataset.conftest import encode, photo, write_pair

pytestmark = pytest.mark.timeout(90)


def stub(address):
    channel = rpc.channel(address)
    return channel, dataset_pb2_grpc.DatasetStub(channel)


def rows(small_dataset):
    index = Index(small_dataset["index_path"])
    found = index.samples_by_ids(range(1, 100))
    index.close()
    return found


def test_streams_the_ids_asked_for_in_order_resized_to_their_bucket(dataset_server, small_dataset):
    info = rows(small_dataset)
    order = [5, 1, 3, 3, 6, 2, 4]
    got = list(iter_chunk_samples(dataset_server.address, order, timeout=30))
    assert [sample_id for _, _, sample_id in got] == order
    for image, caption, sample_id in got:
        assert image.mode == "RGB"
        assert image.size == (info[sample_id].bucket_width, info[sample_id].bucket_height)
        assert caption == f"caption number {sample_id - 1}"


def test_as_stored_sends_the_stored_bytes(dataset_server, small_dataset):
    info = rows(small_dataset)
    storage = open_storage(small_dataset["storage_url"])
    messages = list(iter_chunk_messages(dataset_server.address, [1, 2], as_stored=True, timeout=30))
    for message in messages:
        sample = info[message.sample_id]
        assert message.image == storage.get(sample.key)
        assert hashlib.sha256(message.image).hexdigest() in sample.key
        assert (message.width, message.height) == (sample.width, sample.height)
        assert (message.bucket_width, message.bucket_height) == (sample.bucket_width, sample.bucket_height)


def test_encoding_and_quality_options(dataset_server):
    sizes = {}
    for encoding, quality in (("jpeg", 50), ("jpeg", 98), ("png", 0), ("webp", 80)):
        [message] = iter_chunk_messages(dataset_server.address, [3], encoding=encoding, quality=quality, timeout=30)
        assert message.encoding == encoding
        sizes[(encoding, quality)] = len(message.image)
        assert message.image[:4] in (b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", b"\x89PNG", b"RIFF")
    assert sizes[("jpeg", 50)] < sizes[("jpeg", 98)]


def test_random_crop_varies_and_keeps_the_bucket(dataset_server, small_dataset):
    info = rows(small_dataset)
    wide = next(i for i, s in info.items() if s.width / s.height > 1.9)  # 800x400 has overhang to crop
    crops = {bytes(m.image) for m in iter_chunk_messages(dataset_server.address, [wide] * 6, random_crop=True,
                                                         encoding="png", timeout=30)}
    assert len(crops) > 1


@pytest.mark.parametrize("ids, code, words", [
    ([], grpc.StatusCode.INVALID_ARGUMENT, "sample_ids is empty"),
    (list(range(1, 10_002)), grpc.StatusCode.INVALID_ARGUMENT, "at most 10000"),
    ([1, 99, 2, 1234], grpc.StatusCode.NOT_FOUND, "99, 1234"),
])
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(dataset_server, ids, code, words):
    with pytest.raises(grpc.RpcError) as error:
        list(iter_chunk_messages(dataset_server.address, ids, timeout=30))
    assert error.value.code() == code and words in error.value.details()
    assert len(list(iter_chunk_messages(dataset_server.address, [1], timeout=30))) == 1


def test_bad_encoding_or_quality(dataset_server):
    for kwargs, words in (({"encoding": "bmp"}, "encoding must be one of"), ({"quality": 101}, "quality")):
        with pytest.raises(grpc.RpcError) as error:
            list(iter_chunk_messages(dataset_server.address, [1], timeout=30, **kwargs))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.value.details()


def test_default_stream_sends_the_bucket_copy_made_at_ingest(dataset_server, small_dataset):
    info = rows(small_dataset)
    storage = open_storage(small_dataset["storage_url"])
    messages = list(iter_chunk_messages(dataset_server.address, [1, 2, 3], timeout=30))
    assert [m.image for m in messages] == [storage.get(info[i].bucket_key) for i in (1, 2, 3)]
    # Another quality is resized on the fly from the stored image; the size is the same bucket.
    [other] = iter_chunk_messages(dataset_server.address, [2], quality=80, timeout=30)
    assert other.image != messages[1].image and (other.width, other.height) == (messages[1].width,
                                                                                messages[1].height)


def test_a_lost_bucket_copy_falls_back_to_resizing(dataset_server, small_dataset):
    storage = open_storage(small_dataset["storage_url"])
    sample = rows(small_dataset)[4]
    (storage.root / sample.bucket_key).unlink()
    [image, caption, sample_id] = next(iter_chunk_samples(dataset_server.address, [4], timeout=30))
    assert image.size == (sample.bucket_width, sample.bucket_height) and sample_id == 4


def test_missing_object_is_data_loss_naming_the_sample(dataset_server, small_dataset):
    storage = open_storage(small_dataset["storage_url"])
    sample = rows(small_dataset)[4]
    (storage.root / sample.key).unlink()
    (storage.root / sample.bucket_key).unlink()
    with pytest.raises(grpc.RpcError) as error:
        list(iter_chunk_messages(dataset_server.address, [1, 4, 2], timeout=30))
    assert error.value.code() == grpc.StatusCode.DATA_LOSS and "sample 4" in error.value.details()


def test_list_samples_pages_and_get_stats(dataset_server, small_dataset):
    channel, dataset = stub(dataset_server.address)
    with channel:
        seen, after = [], 0
        while True:
            page = dataset.ListSamples(dataset_pb2.ListSamplesRequest(after_id=after, limit=4), timeout=10)
            seen += [(r.sample_id, r.bucket_width, r.bucket_height) for r in page.samples]
            if not page.has_more:
                break
            after = page.samples[-1].sample_id
        info = rows(small_dataset)
        assert seen == [(i, s.bucket_width, s.bucket_height) for i, s in sorted(info.items())]
        for limit, after_id in ((10_001, 0), (-1, 0), (5, -3)):
            with pytest.raises(grpc.RpcError) as error:
                dataset.ListSamples(dataset_pb2.ListSamplesRequest(after_id=after_id, limit=limit), timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stats = dataset.GetStats(dataset_pb2.GetStatsRequest(), timeout=10)
        assert stats.samples == len(info) == sum(b.count for b in stats.buckets)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="swarm.v1.Dataset"), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_client_that_goes_away_is_counted_as_cancelled(dataset_server):
    from prometheus_client import REGISTRY

    def cancelled():
        return REGISTRY.get_sample_value("swarm_dataset_stream_errors_total", {"reason": "cancelled"}) or 0.0

    before = cancelled()
    stream = iter_chunk_messages(dataset_server.address, [1] * 2000, timeout=30)
    next(stream)
    stream.close()  # closes the channel mid-stream
    deadline = time.monotonic() + 10
    while cancelled() == before:
        assert time.monotonic() < deadline, "the abandoned stream was not counted"
        time.sleep(0.05)
    assert len(list(iter_chunk_messages(dataset_server.address, [1, 2], timeout=30))) == 2


def test_metrics_count_streams(small_dataset):
    running = start_server(index_path=small_dataset["index_path"], listen="127.0.0.1:0", metrics_port=0)
    try:
        list(iter_chunk_messages(running.address, [1, 2, 3], timeout=30))
        with pytest.raises(grpc.RpcError):
            list(iter_chunk_messages(running.address, [424242], timeout=30))
        text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10).read().decode()
    finally:
        running.stop(grace=1)
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("swarm_dataset_")}
    assert values["swarm_dataset_samples_streamed_total"] >= 3
    assert values["swarm_dataset_bytes_streamed_total"] > 0
    assert values['swarm_dataset_stream_errors_total{reason="not_found"}'] >= 1
    assert values["swarm_dataset_index_samples"] == 6
    assert values["swarm_dataset_active_streams"] == 0
    assert values["swarm_dataset_stream_seconds_count"] >= 1


class CountingStorage:
    """Real storage, counting GETs: shows how far ahead of a slow reader the server works."""

    def __init__(self, inner):
        self.inner, self.gets = inner, 0
        self.url = inner.url

    def get(self, key):
        self.gets += 1
        return self.inner.get(key)


def test_a_slow_reader_holds_the_server_back(dataset_server):
    counting = CountingStorage(dataset_server.servicer.storage)
    dataset_server.servicer.storage = counting
    stream = iter_chunk_messages(dataset_server.address, [4] * 3000, as_stored=True, timeout=60)
    next(stream)
    deadline, last = time.monotonic() + 10, -1
    while time.monotonic() < deadline:  # wait until the server stops producing (transport window + read-ahead)
        if counting.gets == last:
            break
        last = counting.gets
        time.sleep(0.5)
    print(f"server read {counting.gets} samples ahead of a reader that took 1")
    assert counting.gets < 3000 / 2, f"the server read {counting.gets} samples ahead of a reader that took 1"
    assert sum(1 for _ in stream) == 2999  # and the rest still arrives in full
    assert counting.gets == 3000


def test_serving_continues_while_an_ingest_writes(dataset_server, small_dataset, tmp_path):
    more = tmp_path / "more"
    for i in range(30):
        write_pair(more, f"m{i}.jpg", encode(photo(300 + i, 300, seed=100 + i)), f"more {i}")
    index = Index(small_dataset["index_path"])
    errors, done = [], threading.Event()

    def stream_loop():
        while not done.is_set():
            try:
                assert len(list(iter_chunk_messages(dataset_server.address, [1, 2, 3], timeout=30))) == 3
            except Exception as e:  # noqa: BLE001 - collected and asserted on below
                errors.append(e)

    reader = threading.Thread(target=stream_loop)
    reader.start()
    try:
        report = ingest(source=open_storage(str(more), create=False), index=index,
                        storage=open_storage(small_dataset["storage_url"]), progress=False)
    finally:
        done.set()
        reader.join(30)
        index.close()
    assert report.added == 30 and not errors
    assert len(list(iter_chunk_messages(dataset_server.address, [36], timeout=30))) == 1


@pytest.mark.parametrize("flags, words", [(["--workers", "0"], "--workers: must be >= 1"),
                                          (["--quality", "101"], "quality must be between"),
                                          (["--metrics-port", "70000"], "--metrics-port: must be a port"),
                                          (["--index", "/nonexistent/x.sqlite"], "swarm ingest")])
def test_serve_refuses_bad_flags(small_dataset, capsys, flags, words):
    from swarm_launcher.cli import main as swarm_main

    with pytest.raises(SystemExit) as exit_info:
        swarm_main(["dataset", "serve", "--index", small_dataset["index_path"], "--listen", "127.0.0.1:0", *flags])
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_serve_command_ready_file_and_sigterm(small_dataset, tmp_path):
    ready = tmp_path / "dataset.ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "swarm_launcher", "dataset", "serve", "--listen", "127.0.0.1:0",
                             "--index", small_dataset["index_path"], "--metrics-port", "0",
                             "--ready-file", str(ready)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no ready file after 60 s"
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        assert info["metrics_port"] > 0
        rpc.wait_healthy(info["grpc_address"], timeout=10)
        assert len(list(iter_chunk_samples(info["grpc_address"], [1, 2], timeout=30))) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_storage_outage_is_unavailable_and_the_server_keeps_serving(small_dataset, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with socket.socket() as sock:  # an S3 endpoint nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    running = start_server(index_path=small_dataset["index_path"], listen="127.0.0.1:0", metrics_port=None,
                           storage_url="s3://gone/objects", s3_endpoint_url=dead)
    try:
        with pytest.raises(grpc.RpcError) as error:
            list(iter_chunk_messages(running.address, [1], timeout=60))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "sample 1: storage is unavailable" in error.value.details() and dead in error.value.details()
        channel, dataset = stub(running.address)
        with channel:  # the index still answers
            assert dataset.GetStats(dataset_pb2.GetStatsRequest(), timeout=10).samples == 6
    finally:
        running.stop(grace=1)


def test_serves_an_empty_index_before_the_first_ingest(tmp_path):
    """A compose host starts the dataset service before anyone ingests: it serves nothing instead of crash-looping."""
    from swarm_dataset.server import start_server

    index_path = tmp_path / "fresh" / "dataset.sqlite"
    running = start_server(index_path=str(index_path), listen="127.0.0.1:0", metrics_port=None, workers=2,
                           storage_url=(tmp_path / "fresh" / "objects").as_uri())
    try:
        channel, dataset = stub(running.address)
        with channel:
            assert dataset.GetStats(dataset_pb2.GetStatsRequest(), timeout=10).samples == 0
            page = dataset.ListSamples(dataset_pb2.ListSamplesRequest(after_id=0, limit=4), timeout=10)
            assert list(page.samples) == [] and not page.has_more
        assert index_path.is_file()
    finally:
        running.stop(grace=1)
