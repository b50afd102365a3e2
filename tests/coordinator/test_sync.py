"""Dataset sync against the real dataset service: chunks cut from its index, new samples become new chunks, and
the coordinator serves while the dataset service is down."""
from __future__ import annotations

import time

import pytest
from PIL import Image

from swarm.procs import free_port
from swarm.runconfig import RunConfig
from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator.tokens import create_token

pytestmark = pytest.mark.timeout(120)


def _ingest(tmp_path, sizes, *, first: int) -> tuple[str, str]:
    """Write real images with captions and ingest them with the dataset service's own ingest."""
    from swarm_dataset.buckets import BucketParams
    from swarm_dataset.index import Index
    from swarm_dataset.ingest import ingest
    from swarm_dataset.storage import open_storage

    source = tmp_path / "images"
    source.mkdir(exist_ok=True)
    for i, (w, h) in enumerate(sizes, start=first):
        Image.new("RGB", (w, h), color=(i * 20 % 256, 90, 200 - i * 10 % 200)).save(source / f"img{i:03d}.png")
        (source / f"img{i:03d}.txt").write_text(f"a flat colour number {i}")
    index = Index(tmp_path / "index.sqlite")
    try:
        storage = open_storage(str(tmp_path / "objects"))
        report = ingest(source=open_storage(str(source), create=False), index=index, storage=storage,
                        bucket_params=BucketParams(resolution=512, side_min=256, side_max=768), progress=False)
        assert report.added == len(sizes)
    finally:
        index.close()
    return str(tmp_path / "index.sqlite"), storage.url


def _wait_for(condition, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_chunks_follow_the_dataset_index_and_survive_it_being_down(coordinator, db_path, tmp_path):
    from swarm_dataset.client import iter_chunk_samples
    from swarm_dataset.server import start_server

    square, wide = (512, 512), (768, 512)
    index_path, storage_url = _ingest(tmp_path, [square] * 5 + [wide] * 2, first=0)
    dataset_port = free_port()
    dataset_token = create_token(db_path, name="host-internal")
    server, client = coordinator(dataset=f"127.0.0.1:{dataset_port}", dataset_token=dataset_token,
                                 sync_interval=0.2, config=RunConfig(chunk_size=2, max_data_epochs=1))
    client.register("peer")
    # The dataset service is not up yet: the coordinator serves, with nothing to lease and the run not complete.
    empty = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peer", max_chunks=4, config_version=1))
    assert not empty.leases and not empty.run_complete

    dataset = start_server(index_path=index_path, listen=f"127.0.0.1:{dataset_port}", storage_url=storage_url,
                           coordinator=server.address, metrics_port=None, workers=2)
    try:
        # 5 square samples -> chunks of 2, 2 and (once the index stops growing) 1; 2 wide ones -> 1 chunk.
        progress = _wait_for(lambda: (p := client.GetProgress(pb.GetProgressRequest())).chunks_total == 4 and p,
                             timeout=30, what="the first sync")
        assert progress.samples_total == 7 and progress.samples_pending == 0 and server.sync.up
        leases = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peer", max_chunks=10, config_version=1)).leases
        first_cut = {lease.chunk_id: list(lease.sample_ids) for lease in leases}
        assert sorted(sid for ids in first_cut.values() for sid in ids) == list(range(1, 8))
        assert sorted(len(ids) for ids in first_cut.values()) == [1, 2, 2, 2]
        for lease in leases:  # one aspect bucket per chunk, as the dataset service put the samples
            streamed = list(iter_chunk_samples(dataset.address, list(lease.sample_ids), token=client.token,
                                               timeout=30))
            assert [s[2] for s in streamed] == list(lease.sample_ids)
            assert {s[0].size for s in streamed} == {(lease.bucket_width, lease.bucket_height)}

        # New samples arrive: they become new chunks; the chunks cut before stay exactly as they were.
        _ingest(tmp_path, [square] * 3, first=7)
        _wait_for(lambda: client.GetProgress(pb.GetProgressRequest()).chunks_total == 6, timeout=30,
                  what="the new samples' chunks")
        for lease in leases:
            client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="peer", lease_id=lease.lease_id))
        new = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peer", max_chunks=10, config_version=1)).leases
        assert sorted(sid for lease in new for sid in lease.sample_ids) == [8, 9, 10]
        assert not set(first_cut) & {lease.chunk_id for lease in new}
        assert server.store.progress().samples_done == 7
    finally:
        dataset.stop(grace=0.5)
