"""The status page's view of a coordinator: settings checks and the pure conversions from the store's progress."""
from __future__ import annotations

import pytest

from swarm_coordinator.peers import PeerRecord
from swarm_coordinator.progress import ProgressSnapshot
from swarm_coordinator.statuspage.api import JoinInfo, build_status
from swarm_coordinator.statuspage.live import (
    StatusPageSettings,
    history_point,
    join_address,
    peer_rows,
    status_snapshot,
)

pytestmark = pytest.mark.timeout(30)

NOW = 1_800_000_000.0


def _progress(**changes) -> ProgressSnapshot:
    peers = [PeerRecord("QmLive", "alice", ("/ip4/203.0.113.9/tcp/31338/p2p/QmLive",), False, 4, first_seen=NOW - 7200,
                        last_seen=NOW - 2, samples_contributed=120, chunks_contributed=30, global_epoch=7,
                        loss=0.4, samples_per_s=3.0),
             PeerRecord("QmGone", "", ("/ip4/198.51.100.4/tcp/1/p2p/QmGone",), True, 2, first_seen=NOW - 9000,
                        last_seen=NOW - 3600, samples_contributed=40, chunks_contributed=10, loss=9.0,
                        samples_per_s=7.0)]
    values = dict(samples_done=160, samples_total=100, data_epochs_done=1, max_data_epochs=3, chunks_total=25,
                  chunks_queued=10, chunks_leased=2, chunks_done=13, peers_alive=1, peers_training=1, swarm_epoch=7,
                  swarm_epoch_min=7, config_version=2, run_complete=False, lr=1e-4, lr_total_steps=0, peers=peers,
                  alive_peer_ids=frozenset({"QmLive"}))
    values.update(changes)
    return ProgressSnapshot(**values)


def test_settings_refuse_what_would_break_the_page():
    StatusPageSettings(port=0)
    for bad in (dict(port=70000), dict(public_address="no-port"), dict(join_image=""),
                dict(token_contact="line\nbreak"), dict(sample_interval=0), dict(cache_s=-1)):
        with pytest.raises(ValueError):
            StatusPageSettings(**bad)


def test_join_address_prefers_the_public_one():
    assert join_address(StatusPageSettings(public_address="swarm.example.org:50051"), bound="0.0.0.0:50051") == \
        "swarm.example.org:50051"
    assert join_address(StatusPageSettings(), bound="0.0.0.0:50051") == "HOST:50051"
    assert join_address(StatusPageSettings(), bound="127.0.0.1:4242") == "127.0.0.1:4242"


def test_peer_rows_keep_no_addresses_and_know_who_is_alive():
    rows = peer_rows(_progress())
    assert [(r.name, r.alive, r.client_mode, r.samples) for r in rows] == [("alice", True, False, 120),
                                                                           ("", False, True, 40)]
    assert not any(hasattr(r, "multiaddrs") for r in rows)


def test_a_history_point_is_the_swarm_as_the_live_peers_see_it():
    point = history_point(_progress(), now=NOW)
    assert point.t == NOW and point.samples_done == 160 and point.global_epoch == 7 and point.peers_online == 1
    assert point.samples_per_s == 3.0 and point.loss == 0.4  # the peer gone an hour ago counts no more


def test_the_document_from_a_progress_has_no_ip_address():
    snapshot = status_snapshot(_progress(), now=NOW, run_name="run-1", model="tiny", started=NOW - 9000,
                               join=JoinInfo("swarm.example.org:50051", "img:1", "ask"))
    doc = build_status(snapshot)
    assert doc["run"]["samples_done"] == 160 and doc["run"]["config_version"] == 2 and doc["swarm"]["lr"] == 1e-4
    text = str(doc)
    assert "203.0.113.9" not in text and "198.51.100.4" not in text and "/ip4/" not in text
