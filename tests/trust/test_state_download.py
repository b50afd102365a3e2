"""The guard's state downloads (swarm/trust/download.py) on a real hivemind swarm on loopback. The downloader asks
the peers that share their state, best first, and keeps the first usable state:
- a peer that sends nothing (it refused the caller, or stopped sharing) is passed over, not blamed;
- a state the downloader turns down by its metadata (DiLoCo: a round without the average it needs) is passed over;
- a state it cannot use (too few tensors: a stream cut off part-way looks like this) is passed over;
- a poisoned (non-finite) state is counted as dropped and its peer banned.
"""
from __future__ import annotations

from typing import AsyncIterator

import pytest
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2

from swarm.trust import averager_class
from tests.trust.swarm_kit import Coordinator, maddrs

SIZE = 32
torch.set_num_threads(1)


def _named_like_base(cls: type) -> type:
    # hivemind's RPC handle names come from the class name: these peers must answer DecentralizedAverager's calls.
    cls.__name__ = cls.__qualname__ = DecentralizedAverager.__name__
    cls._rpc_handlers = cls._stub_type = None
    return cls


@_named_like_base
class Serving(DecentralizedAverager):
    """Serves the (metadata, tensors) it was given, whatever they are."""

    def __init__(self, *args, served: tuple[dict, list[torch.Tensor]], **kwargs):
        self._served = served
        super().__init__(*args, **kwargs)

    def get_current_state(self):
        metadata, tensors = self._served
        return metadata, tensors, None


@_named_like_base
class Silent(DecentralizedAverager):
    """Lists itself as sharing its state, then sends nothing: what a peer does that refuses the caller."""

    async def rpc_download_state(self, request: averaging_pb2.DownloadRequest, context: P2PContext
                                 ) -> AsyncIterator[averaging_pb2.DownloadData]:
        return
        yield


@_named_like_base
class Picky(DecentralizedAverager):
    """A downloader that wants a state of round 2 or later, in two tensors (as DiLoCo's averager decides)."""

    def state_metadata_problem(self, metadata) -> str | None:
        return None if metadata.get("round", 0) >= 2 else f"round {metadata.get('round')} is too old"

    def state_problem(self, metadata, tensors) -> str | None:
        return None if len(tensors) == 2 else f"{len(tensors)} tensors, expected 2"


def _state(round_: int, *values: float) -> tuple[dict, list[torch.Tensor]]:
    return {"round": round_}, [torch.full((SIZE,), value) for value in values]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    coordinator = Coordinator(tmp_path_factory.mktemp("download"))
    first = coordinator.start_peer("downloader", [])
    names = ("silent", "poison", "old", "short", "good")
    peers = [first] + [coordinator.start_peer(name, maddrs(first)) for name in names]
    yield coordinator, dict(zip(("downloader",) + names, peers))
    for peer in peers:
        peer.dht.shutdown()


def test_the_downloader_passes_over_unusable_states_and_bans_only_a_poisoned_one(swarm):
    coordinator, peers = swarm
    settings = coordinator.settings
    prefix = f"{settings.run_id}_download"
    common = dict(prefix=prefix, start=True, min_matchmaking_time=1.0, request_timeout=1.0, next_chunk_timeout=5.0)
    # Best first: each server's priority; all but the last one fail in a different way.
    servers = {
        "silent": (Silent, {}),
        "poison": (Serving, {"served": _state(5, float("nan"), 1.0)}),
        "old": (Serving, {"served": _state(1, 1.1, 0.9)}),
        "short": (Serving, {"served": _state(3, 1.1)}),
        "good": (Serving, {"served": _state(3, 1.2, 0.8)}),
    }
    averagers = []
    try:
        for priority, (name, (cls, extra)) in zip(range(len(servers), 0, -1), servers.items()):
            guarded = averager_class(cls, settings)
            averager = guarded([torch.zeros(SIZE), torch.zeros(SIZE)], dht=peers[name].dht, trust=settings,
                               **extra, **common)
            averager.state_sharing_priority = float(priority)
            averagers.append(averager)
        downloader = averager_class(Picky, settings)([torch.ones(SIZE), torch.ones(SIZE)],
                                                     dht=peers["downloader"].dht, trust=settings, **common)
        averagers.append(downloader)
        loaded = None
        for _ in range(10):  # the servers' declarations reach the DHT within a second or two
            loaded = downloader.load_state_from_peers(timeout=30)
            if loaded is not None and loaded[0].get("round") == 3:
                break
        assert loaded is not None, "no state downloaded"
        metadata, tensors = loaded
        assert metadata["round"] == 3 and len(tensors) == 2, (metadata, [t.shape for t in tensors])
        assert torch.equal(tensors[0], torch.full((SIZE,), 1.2)) and torch.equal(tensors[1], torch.full((SIZE,), 0.8))
        stats = downloader.trust_stats()
        ids = {name: peers[name].dht.peer_id.to_base58() for name in servers}
        assert stats.get(ids["poison"], {}).get("dropped") == 1, stats
        for name in ("silent", "old", "short", "good"):
            assert stats.get(ids[name], {}).get("dropped", 0) == 0, (name, stats)
    finally:
        for averager in averagers:
            averager.shutdown()
