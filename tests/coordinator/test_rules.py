"""Each protocol rule of the coordinator alone (pure functions, no clock, no database)."""
from __future__ import annotations

import pytest

from swarm_coordinator import rules
from swarm_coordinator.rules import ChunkView, LeaseState, Outcome, PeerView

pytestmark = pytest.mark.timeout(30)


# ------------------------------------------------------------------------------------------------ lease selection

def _chunks(*specs):
    return [ChunkView(cid, tt, deadline) for cid, tt, deadline in specs]


def test_least_trained_first_ties_by_chunk_id():
    chunks = _chunks((5, 1, None), (3, 0, None), (4, 0, None), (1, 2, None), (2, 1, None))
    assert rules.select_chunks(chunks, count=5, now=0, max_data_epochs=10) == [3, 4, 2, 5, 1]


def test_asking_for_one_returns_one():
    chunks = _chunks((1, 0, None), (2, 0, None))
    assert rules.select_chunks(chunks, count=1, now=0, max_data_epochs=10) == [1]


def test_asking_for_more_than_is_free_returns_what_is_free():
    chunks = _chunks((1, 0, None), (2, 0, 100.0), (3, 0, None))
    assert rules.select_chunks(chunks, count=50, now=10, max_data_epochs=10) == [1, 3]


def test_nothing_free_returns_nothing():
    assert rules.select_chunks([], count=3, now=0, max_data_epochs=1) == []
    assert rules.select_chunks(_chunks((1, 0, 50.0)), count=3, now=0, max_data_epochs=1) == []


def test_unexpired_lease_holds_a_chunk_expired_one_does_not():
    chunks = _chunks((1, 0, 100.0), (2, 0, 99.0))
    assert rules.select_chunks(chunks, count=2, now=100.0, max_data_epochs=5) == [1, 2][1:]  # 1 valid up to 100.0
    assert rules.select_chunks(chunks, count=2, now=100.5, max_data_epochs=5) == [1, 2]


def test_chunks_at_the_data_epoch_limit_are_never_leased():
    chunks = _chunks((1, 3, None), (2, 2, None), (3, 4, None))
    assert rules.select_chunks(chunks, count=3, now=0, max_data_epochs=3) == [2]


def test_zero_count_returns_nothing():
    assert rules.select_chunks(_chunks((1, 0, None)), count=0, now=0, max_data_epochs=3) == []


# ------------------------------------------------------------------------------------------------ expiry, heartbeat

def test_lease_valid_up_to_and_including_its_deadline():
    assert not rules.lease_expired(10.0, now=10.0)
    assert rules.lease_expired(10.0, now=10.001)


def test_heartbeat_extends_from_now_and_never_shortens():
    assert rules.extended_deadline(100.0, now=50.0, ttl=120.0) == 170.0
    assert rules.extended_deadline(500.0, now=50.0, ttl=120.0) == 500.0


def test_heartbeat_never_revives_an_expired_lease():
    assert rules.extended_deadline(100.0, now=100.5, ttl=120.0) is None


# ------------------------------------------------------------------------------------------------ report outcome

@pytest.mark.parametrize("state, deadline, now, current, expected", [
    (LeaseState.ACTIVE, 100.0, 50.0, True, Outcome.COUNTED),
    (LeaseState.ACTIVE, 100.0, 100.0, True, Outcome.COUNTED),  # at the deadline still valid
    (LeaseState.ACTIVE, 100.0, 101.0, True, Outcome.STALE),  # expired
    (LeaseState.ACTIVE, 100.0, 50.0, False, Outcome.STALE),  # the chunk was leased again since
    (LeaseState.EXPIRED, 100.0, 50.0, False, Outcome.STALE),
    (LeaseState.RELEASED, 100.0, 50.0, False, Outcome.STALE),
    (LeaseState.DONE, 100.0, 50.0, False, Outcome.DUPLICATE),
    (LeaseState.DONE, 100.0, 500.0, False, Outcome.DUPLICATE),  # reported twice, second time late: still duplicate
])
def test_report_outcome(state, deadline, now, current, expected):
    assert rules.report_outcome(lease_state=state, lease_deadline=deadline, now=now,
                                lease_is_current=current) is expected


def test_outcome_values_match_the_proto():
    from swarm.v1 import coordinator_pb2 as pb

    for outcome in Outcome:
        assert pb.ReportChunkDoneResponse.Outcome.Value(outcome.name) == outcome.value


# ------------------------------------------------------------------------------------------------ initial peers

def _peer(peer_id, addrs, *, seen, client=False, epoch=0, finished=False):
    return PeerView(peer_id, tuple(addrs), client, seen, epoch, finished)


def test_initial_peers_bootstrap_first_then_live_peers_most_recent_first():
    peers = [_peer("a", ["/ip4/1.1.1.1/tcp/1"], seen=90), _peer("b", ["/ip4/2.2.2.2/tcp/2"], seen=95)]
    got = rules.initial_peers(["/ip4/9.9.9.9/tcp/9/p2p/Boot"], peers, now=100, peer_ttl=60)
    assert got == ["/ip4/9.9.9.9/tcp/9/p2p/Boot", "/ip4/2.2.2.2/tcp/2", "/ip4/1.1.1.1/tcp/1"]


def test_initial_peers_never_include_dead_or_client_mode_peers_or_wildcards():
    peers = [_peer("dead", ["/ip4/1.1.1.1/tcp/1"], seen=10), _peer("client", ["/ip4/3.3.3.3/tcp/3"], seen=99,
                                                                    client=True),
             _peer("live", ["/ip4/0.0.0.0/tcp/4", "/ip4/4.4.4.4/tcp/4"], seen=99)]
    assert rules.initial_peers([], peers, now=100, peer_ttl=60) == ["/ip4/4.4.4.4/tcp/4"]


def test_initial_peers_deduplicated_and_excluding_the_asker():
    peers = [_peer("a", ["/ip4/1.1.1.1/tcp/1", "/ip4/1.1.1.1/tcp/1"], seen=99),
             _peer("b", ["/ip4/1.1.1.1/tcp/1", "/ip4/9.9.9.9/tcp/9"], seen=98),
             _peer("me", ["/ip4/5.5.5.5/tcp/5"], seen=100)]
    got = rules.initial_peers(["/ip4/9.9.9.9/tcp/9"], peers, now=100, peer_ttl=60, exclude_peer_id="me")
    assert got == ["/ip4/9.9.9.9/tcp/9", "/ip4/1.1.1.1/tcp/1"]


def test_initial_peers_limited():
    peers = [_peer(f"p{i}", [f"/ip4/10.0.0.{i}/tcp/1"], seen=100 - i) for i in range(10)]
    got = rules.initial_peers(["/boot"], peers, now=100, peer_ttl=60, limit=3)
    assert got == ["/boot", "/ip4/10.0.0.0/tcp/1", "/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.2/tcp/1"]


def test_swarm_epochs_over_live_peers_only():
    peers = [_peer("a", [], seen=99, epoch=7), _peer("b", [], seen=98, epoch=5, finished=True),
             _peer("dead", [], seen=1, epoch=100)]
    epochs = rules.swarm_epochs(peers, now=100, peer_ttl=60)
    assert (epochs.swarm_epoch, epochs.swarm_epoch_min, epochs.peers_alive, epochs.peers_training) == (7, 5, 2, 1)
    assert rules.swarm_epochs([], now=0, peer_ttl=1) == rules.SwarmEpochs(0, 0, 0, 0)


# ------------------------------------------------------------------------------------------------ chunking

def test_chunks_cut_per_bucket_in_first_sample_order():
    samples = [(1, 64, 64), (2, 64, 128), (3, 64, 64), (4, 64, 128), (5, 64, 64), (6, 64, 64)]
    chunks, pending = rules.cut_chunks({}, samples, chunk_size=2, flush=False)
    assert chunks == [((64, 64), [1, 3]), ((64, 128), [2, 4]), ((64, 64), [5, 6])]
    assert pending == {}


def test_remainders_wait_for_more_samples_then_flush_when_the_dataset_stops_growing():
    chunks, pending = rules.cut_chunks({}, [(1, 64, 64), (2, 64, 64), (3, 64, 64)], chunk_size=2, flush=False)
    assert chunks == [((64, 64), [1, 2])] and pending == {(64, 64): [3]}
    chunks, pending = rules.cut_chunks(pending, [(4, 64, 64), (5, 64, 64)], chunk_size=2, flush=False)
    assert chunks == [((64, 64), [3, 4])] and pending == {(64, 64): [5]}
    chunks, pending = rules.cut_chunks(pending, [], chunk_size=2, flush=True)
    assert chunks == [((64, 64), [5])] and pending == {}


def test_incremental_chunking_never_reshuffles_earlier_chunks():
    first, pending = rules.cut_chunks({}, [(i, 64, 64) for i in range(1, 8)], chunk_size=3, flush=True)
    later, _ = rules.cut_chunks(pending, [(i, 64, 64) for i in range(8, 12)], chunk_size=3, flush=True)
    assert first == [((64, 64), [1, 2, 3]), ((64, 64), [4, 5, 6]), ((64, 64), [7])]
    assert later == [((64, 64), [8, 9, 10]), ((64, 64), [11])]  # new samples make new chunks only


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError):
        rules.cut_chunks({}, [], chunk_size=0, flush=True)


# ------------------------------------------------------------------------------------------------ epochs, completion

def test_data_epochs_done_is_the_least_trained_chunk():
    assert rules.data_epochs_done([3, 2, 5]) == 2
    assert rules.data_epochs_done([]) == 0


def test_run_complete_needs_chunks_and_every_chunk_at_the_limit():
    assert not rules.run_complete([], max_data_epochs=1)
    assert not rules.run_complete([2, 1], max_data_epochs=2)
    assert rules.run_complete([2, 3], max_data_epochs=2)


# ------------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("peer_id", ["", " x", "a" * 129, "bad/slash", "x\n"])
def test_bad_peer_ids_rejected(peer_id):
    with pytest.raises(rules.InvalidRequest, match="peer_id"):
        rules.check_peer_id(peer_id)


def test_good_peer_ids_accepted():
    for peer_id in ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "12D3KooWabc", "peer-1.local"):
        assert rules.check_peer_id(peer_id) == peer_id


@pytest.mark.parametrize("count", [0, -1, 1025])
def test_max_chunks_out_of_range(count):
    with pytest.raises(rules.InvalidRequest, match="max_chunks must be between 1 and 1024"):
        rules.check_max_chunks(count)


def test_lease_ids_must_be_uuids():
    good = "0b5e7c6e-2a4f-4c8e-9d3a-1f2e3d4c5b6a"
    assert rules.check_lease_ids([good, good]) == [good]
    with pytest.raises(rules.InvalidRequest, match="lease id"):
        rules.check_lease_ids(["../../etc/passwd"])
    with pytest.raises(rules.InvalidRequest, match="lease_id is empty"):
        rules.check_lease_id("")
    with pytest.raises(rules.InvalidRequest, match="at most"):
        rules.check_lease_ids([good] * 1025)


def test_multiaddrs_validated():
    from swarm_coordinator.addresses import check_peer_multiaddrs

    me = "QmQJ3KMfh8TfJqZcRrZqrNvfLZYncAXotU4LCB4DrtYVpG"
    good = f"/ip4/1.2.3.4/tcp/5/p2p/{me}"
    assert check_peer_multiaddrs([good, good], peer_id=me, limit=rules.MAX_MULTIADDRS) == (good,)
    for bad in (["1.2.3.4:5"], [good + " x"], [good] * 33, ["/ip4/1.2.3.4/tcp/5"]):
        with pytest.raises(rules.InvalidRequest):
            check_peer_multiaddrs(bad, peer_id=me, limit=rules.MAX_MULTIADDRS)


def test_heartbeat_numbers():
    assert rules.check_heartbeat_numbers(global_epoch=3, loss=0.5, samples_per_s=2.0) == 0.5
    assert rules.check_heartbeat_numbers(global_epoch=3, loss=float("nan"), samples_per_s=2.0) is None
    with pytest.raises(rules.InvalidRequest, match="global_epoch"):
        rules.check_heartbeat_numbers(global_epoch=-1, loss=0.0, samples_per_s=0.0)
    with pytest.raises(rules.InvalidRequest, match="samples_per_s"):
        rules.check_heartbeat_numbers(global_epoch=0, loss=0.0, samples_per_s=float("inf"))


# ------------------------------------------------------------------------------------------------ peer ownership

def test_a_live_peer_id_belongs_to_the_token_that_registered_it():
    assert rules.may_register(owner=None, caller="b", last_seen=99, now=100, peer_ttl=60)  # new or unowned
    assert rules.may_register(owner="a", caller="a", last_seen=99, now=100, peer_ttl=60)  # same token again
    assert not rules.may_register(owner="a", caller="b", last_seen=99, now=100, peer_ttl=60)  # alive: it is a's
    assert rules.may_register(owner="a", caller="b", last_seen=10, now=100, peer_ttl=60)  # silent: may move
    assert rules.may_act_for(owner="a", caller="a") and not rules.may_act_for(owner="a", caller="b")
    assert rules.may_act_for(owner=None, caller="b")


def test_limits_rules():
    from swarm_coordinator import limits
    from swarm_coordinator.errors import LimitExceeded

    limits.check_peers_per_token(2, limit=3)
    with pytest.raises(LimitExceeded, match="limit of 3 live peers per join token"):
        limits.check_peers_per_token(3, limit=3)
    assert limits.leases_allowed(held=0, asked=1024, limit=64) == 64
    assert limits.leases_allowed(held=63, asked=5, limit=64) == 1
    with pytest.raises(LimitExceeded, match="limit of 64 active leases per peer"):
        limits.leases_allowed(held=64, asked=1, limit=64)
    assert limits.plausible_pace(10.0, floor=256, slack=4) == 256
    assert limits.plausible_pace(100.0, floor=256, slack=4) == 400
    assert limits.plausible_pace(float("inf"), floor=256, slack=4) == 256  # a lie about pace buys nothing
    assert limits.refilled(0.0, elapsed=2.0, pace=10.0, burst=100.0) == 20.0
    assert limits.refilled(90.0, elapsed=2.0, pace=10.0, burst=100.0) == 100.0
    with pytest.raises(LimitExceeded, match="plausible pace"):
        limits.check_report_pace(3.0, samples=4, pace=1.0)
    assert limits.max_plausible_epoch(planned_epochs=100, swarm_epoch=5, slack=16) == 216
    assert limits.max_plausible_epoch(planned_epochs=0, swarm_epoch=5, slack=16) == 21
    with pytest.raises(rules.InvalidRequest, match="not plausible"):
        limits.check_epoch(2**63 - 1, bound=126)


def test_report_pace_meter_spends_refills_and_refunds():
    from swarm_coordinator.errors import LimitExceeded
    from swarm_coordinator.limits import Limits, ReportPace

    now = [0.0]
    meter = ReportPace(Limits(report_pace_floor=2.0, report_pace_slack=1.0, report_burst=4.0), clock=lambda: now[0])
    meter.spend("p", 4, measured_samples_per_s=0.0)
    with pytest.raises(LimitExceeded):
        meter.spend("p", 1, measured_samples_per_s=0.0)
    meter.spend("other", 4, measured_samples_per_s=0.0)  # budgets are per peer
    now[0] = 1.0
    meter.spend("p", 2, measured_samples_per_s=0.0)  # 1 s at 2 samples/s
    meter.refund("p", 2)
    meter.spend("p", 2, measured_samples_per_s=0.0)
