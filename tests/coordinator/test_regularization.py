"""Regularization images in the coordinator (issue 14 section 3): the pure mixing rules, the store mixing them into
leases at reg_ratio and counting them apart (through a restart), and the dataset sync routing them by role."""
from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from PIL import Image

from swarm.procs import free_port
from swarm.runconfig import RunConfig
from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator.regularization import (
    ANY_BUCKET,
    ChunkPools,
    pick_reg_samples,
    pool_key,
    pool_position,
    pools_by_bucket,
    reg_count,
    reg_ratio_problem,
    reg_samples_for_lease,
)
from swarm_coordinator.tokens import create_token

pytestmark = pytest.mark.timeout(120)

SQUARE, WIDE, TALL = (512, 512), (768, 512), (512, 768)


# ------------------------------------------------------------------------------------------------ pure rules

@pytest.mark.parametrize("n, ratio, expected", [(64, 0.0, 0), (64, 0.5, 64), (64, 0.2, 16), (10, 0.1, 1),
                                                (1, 0.1, 0), (3, 0.25, 1), (0, 0.5, 0), (4, 0.75, 12)])
def test_reg_count_makes_the_ratio_of_the_lease(n, ratio, expected):
    assert reg_count(n, reg_ratio=ratio) == expected
    if expected:
        assert abs(expected / (n + expected) - ratio) <= 0.5 / (n + expected)  # as close as whole samples allow


def test_reg_count_refuses_a_ratio_out_of_range():
    for ratio in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            reg_count(4, reg_ratio=ratio)


def test_pick_cycles_and_never_names_a_sample_twice():
    assert pick_reg_samples([1, 2, 3, 4, 5], count=3, start=4) == [5, 1, 2]
    assert pick_reg_samples([1, 2, 3], count=8, start=7) == [2, 3, 1]  # the whole pool, once
    assert pick_reg_samples([], count=3, start=0) == [] and pick_reg_samples([1], count=0, start=0) == []


def test_one_data_epoch_walks_the_pool_evenly_and_the_next_goes_on():
    """DreamBooth's class image i % num_class_images: over every chunk of an epoch each pool sample is used equally
    often (within one), and the second epoch starts where the first stopped."""
    pool = list(range(100, 107))  # 7 class images
    chunks, chunk_size, ratio = 5, 4, 0.5  # 4 regularization samples per chunk: 20 per epoch
    epochs = [[reg_samples_for_lease(pool=pool, n_train=chunk_size, times_trained=e, position=k, pool_chunks=chunks,
                                     reg_ratio=ratio, chunk_size=chunk_size) for k in range(chunks)] for e in (0, 1)]
    first = [sid for lease in epochs[0] for sid in lease]
    assert first == [pool[i % 7] for i in range(20)]
    assert max(Counter(first).values()) - min(Counter(first).values()) <= 1
    assert [sid for lease in epochs[1] for sid in lease] == [pool[i % 7] for i in range(20, 40)]
    # A smaller last chunk takes its own share, from where a full chunk would start.
    assert reg_samples_for_lease(pool=pool, n_train=2, times_trained=0, position=4, pool_chunks=5, reg_ratio=0.5,
                                 chunk_size=4) == [pool[16 % 7], pool[17 % 7]]


def test_pools_prefer_the_chunks_bucket():
    pools = pools_by_bucket([(9, *SQUARE), (3, *SQUARE), (5, *WIDE)])
    assert pools == {SQUARE: [3, 9], WIDE: [5], ANY_BUCKET: [3, 5, 9]}
    assert pool_key(SQUARE, pools) == SQUARE and pool_key(TALL, pools) == ANY_BUCKET


def test_chunk_pools_agree_with_the_reference_rule():
    rng = random.Random(7)
    buckets = [SQUARE, WIDE, TALL, (640, 384)]
    chunk_buckets = {cid: rng.choice(buckets) for cid in rng.sample(range(1, 400), 120)}
    indexed = ChunkPools()
    for cid, bucket in chunk_buckets.items():
        indexed.add(cid, bucket)
    for reg_buckets in ({SQUARE}, {SQUARE, TALL}, set(), set(buckets)):
        for cid, bucket in chunk_buckets.items():
            assert indexed.position(cid, bucket, reg_buckets) == pool_position(cid, chunk_buckets, reg_buckets)


def test_reg_ratio_problem_says_what_to_do():
    assert reg_ratio_problem(0.0, reg_samples=0) is None and reg_ratio_problem(0.5, reg_samples=3) is None
    problem = reg_ratio_problem(0.25, reg_samples=0)
    assert "no regularization images" in problem and "swarm ingest --role regularization" in problem
    assert "reg_ratio: 0" in problem


# ------------------------------------------------------------------------------------------------ the store

def _store_with_samples(open_store, *, config: RunConfig, reg):
    store = open_store(config=config)
    training = [(i, *SQUARE) for i in range(1, 9)] + [(i, *WIDE) for i in range(9, 13)]
    store.add_samples(training, flush=True, reg_samples=reg)
    store.register("p1")
    return store


def test_leases_carry_the_ratio_and_progress_counts_them_apart(open_store, clock):
    config = RunConfig(chunk_size=4, reg_ratio=0.5, max_data_epochs=2)
    reg = [(i, *SQUARE) for i in range(100, 106)]  # square class images only: wide chunks draw from them all
    store = _store_with_samples(open_store, config=config, reg=reg)
    assert store.progress().reg_samples_total == 6 and store.reg_problem() is None
    grants = store.lease("p1", 10)
    assert [len(g.sample_ids) for g in grants] == [4, 4, 4]
    square = [g for g in grants if (g.bucket_width, g.bucket_height) == SQUARE]
    # Square chunks at positions 0 and 1 of the square pool: ids 100-103, then 104, 105, 100, 101.
    assert [g.reg_sample_ids for g in square] == [[100, 101, 102, 103], [104, 105, 100, 101]]
    assert all(len(set(g.reg_sample_ids)) == 4 and not set(g.reg_sample_ids) & set(g.sample_ids) for g in grants)

    reports = [store.report("p1", g.lease_id) for g in grants[:2]]
    assert [(r.samples_counted, r.reg_samples_counted) for r in reports] == [(4, 4), (4, 4)]
    # The peer trained both sets: its credit and what it holds bound its averaging weight (swarm.trust.budget).
    assert store.peers.table.get("p1").samples_contributed == 16
    assert store.samples_leased() == {"p1": 4 + 4}
    progress = store.progress()
    assert (progress.samples_done, progress.reg_samples_done) == (8, 8)
    assert progress.samples_total == 12 and progress.data_epochs_done == 0  # epochs: the training set only

    # A restart keeps the count and the reg ids of the lease still active; the next epoch walks on through the pool.
    store.close()
    again = open_store(config=config)
    assert again.progress().reg_samples_done == 8
    assert again.leases.reg_sample_ids(grants[2].lease_id) == grants[2].reg_sample_ids
    assert again.report("p1", grants[2].lease_id).reg_samples_counted == 4
    assert again.progress().reg_samples_done == 12 and again.progress().data_epochs_done == 1
    second = [g for g in again.lease("p1", 10) if (g.bucket_width, g.bucket_height) == SQUARE]
    assert [g.reg_sample_ids for g in second] == [[102, 103, 104, 105], [100, 101, 102, 103]]
    expired_lease = second[0]
    clock.advance(again.lease_ttl + 1)
    again.reap()
    assert again.leases.reg_sample_ids(expired_lease.lease_id) == []
    regranted = again.lease("p1", 1)[0]
    assert regranted.chunk_id == expired_lease.chunk_id
    assert regranted.reg_sample_ids == expired_lease.reg_sample_ids  # the same chunk, epoch and pool: the same ids


def test_off_stays_as_it_was_and_missing_reg_samples_lease_nothing(open_store):
    store = _store_with_samples(open_store, config=RunConfig(chunk_size=4), reg=[(100, *SQUARE)])
    grants = store.lease("p1", 10)
    assert len(grants) == 3 and all(g.reg_sample_ids == [] for g in grants)
    store.close()
    starved = open_store(config=RunConfig(chunk_size=4, reg_ratio=0.2))  # the same database, reg_ratio now on
    assert starved.reg_problem() is None
    assert all(len(g.reg_sample_ids) == 1 for g in starved.lease("p1", 10))


def test_reg_ratio_without_regularization_samples_leases_nothing(open_store, caplog):
    from swarm_coordinator.sync import DatasetSync

    store = _store_with_samples(open_store, config=RunConfig(chunk_size=4, reg_ratio=0.5), reg=[])
    assert "no regularization images" in store.reg_problem()
    assert store.lease("p1", 10) == [] and not store.run_complete()
    sync = DatasetSync(store, address="127.0.0.1:1", token=None)  # not started: only its warning is checked
    for _ in range(2):
        sync._warn_reg_problem(quiet=True)
    said = [r.getMessage() for r in caplog.records if "no chunk is leased" in r.getMessage()]
    assert len(said) == 1 and "swarm ingest --role regularization" in said[0]  # once a minute, not every pass


# ------------------------------------------------------------------------------------------------ dataset sync

def _write(folder, sizes, *, first: int, caption: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes, start=first):
        Image.new("RGB", (w, h), color=(i * 20 % 256, 90, 200 - i * 10 % 200)).save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(f"{caption} {i}")


def test_sync_routes_roles_and_reg_samples_stream_with_their_lease(coordinator, db_path, tmp_path):
    from swarm_dataset.buckets import BucketParams
    from swarm_dataset.client import iter_chunk_samples
    from swarm_dataset.index import Index
    from swarm_dataset.ingest import ingest
    from swarm_dataset.server import start_server
    from swarm_dataset.storage import open_storage

    _write(tmp_path / "instance", [SQUARE] * 4, first=0, caption="sks dog")
    _write(tmp_path / "class", [SQUARE] * 3, first=10, caption="a dog")
    index = Index(tmp_path / "index.sqlite")
    storage = open_storage(str(tmp_path / "objects"))
    try:
        for folder, role in (("instance", None), ("class", "regularization")):
            ingest(source=open_storage(str(tmp_path / folder), create=False), index=index, storage=storage,
                   bucket_params=BucketParams(resolution=512, side_min=256, side_max=768), progress=False, role=role)
    finally:
        index.close()
    dataset_port = free_port()
    server, client = coordinator(dataset=f"127.0.0.1:{dataset_port}", dataset_token=create_token(db_path, name="ds"),
                                 sync_interval=0.2, config=RunConfig(chunk_size=2, reg_ratio=0.5, max_data_epochs=1))
    client.register("peer")
    dataset = start_server(index_path=str(tmp_path / "index.sqlite"), listen=f"127.0.0.1:{dataset_port}",
                           storage_url=storage.url, coordinator=server.address, metrics_port=None, workers=2)
    try:
        deadline = time.monotonic() + 30
        while (progress := client.GetProgress(pb.GetProgressRequest())).chunks_total < 2:
            assert time.monotonic() < deadline, "timed out waiting for the sync"
            time.sleep(0.05)
        assert (progress.samples_total, progress.reg_samples_total) == (4, 3)
        leases = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peer", max_chunks=4, config_version=1)).leases
        assert [list(lease.sample_ids) for lease in leases] == [[1, 2], [3, 4]]
        assert [list(lease.reg_sample_ids) for lease in leases] == [[5, 6], [7, 5]]
        for lease in leases:
            ids = [*lease.sample_ids, *lease.reg_sample_ids]
            streamed = list(iter_chunk_samples(dataset.address, ids, token=client.token, timeout=30))
            assert [s[2] for s in streamed] == ids and streamed[-1][1].startswith("a dog")
            client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="peer", lease_id=lease.lease_id))
        progress = client.GetProgress(pb.GetProgressRequest())
        assert (progress.samples_done, progress.reg_samples_done, progress.run_complete) == (4, 4, True)
    finally:
        dataset.stop(grace=0.5)


def test_status_and_metrics_show_regularization_apart(open_store):
    from swarm_coordinator.metrics import ProgressCollector
    from swarm_coordinator.status import format_progress

    store = _store_with_samples(open_store, config=RunConfig(chunk_size=4, reg_ratio=0.5),
                                reg=[(i, *SQUARE) for i in range(100, 104)])
    for grant in store.lease("p1", 2):
        store.report("p1", grant.lease_id)
    text = format_progress(pb.Progress(samples_done=8, samples_total=12, max_data_epochs=1, reg_samples_done=8,
                                       reg_samples_total=4), now=0)
    assert "regularization:    8 samples done riding along (4 in the set)" in text
    assert "regularization" not in format_progress(pb.Progress(samples_done=8), now=0)
    families = {f.name: f for f in ProgressCollector(store.progress).collect()}
    assert families["swarm_coordinator_reg_samples_done"].samples[0].value == 8
    assert families["swarm_coordinator_samples_done"].samples[0].value == 8


def test_config_set_refuses_reg_ratio_without_regularization_samples(open_store, db_path):
    from swarm.errors import ConfigError
    from swarm_coordinator import configs

    store = _store_with_samples(open_store, config=RunConfig(chunk_size=4), reg=[])
    with pytest.raises(ConfigError, match="no regularization images: ingest them with `swarm ingest --role"):
        configs.set_config(db_path, assignments=["reg_ratio=0.5"])
    store.add_samples([], flush=False, reg_samples=[(100, *SQUARE)])
    _, current, created = configs.set_config(db_path, assignments=["reg_ratio=0.5", "prior_loss_weight=0.5"])
    assert created and (current.config.reg_ratio, current.config.prior_loss_weight) == (0.5, 0.5)
