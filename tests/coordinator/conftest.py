"""Fixtures for the coordinator tests: a controllable clock, stores on real SQLite files, a served coordinator."""
from __future__ import annotations

import pytest

from swarm.rpc import channel, token_metadata
from swarm.runconfig import RunConfig
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc


class Clock:
    """Wall-clock stand-in the test moves by hand, so lease expiry is exact and needs no waiting."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "coordinator.sqlite")


@pytest.fixture
def open_store(db_path, clock):
    """open_store(**kw) -> Store on the test's database (closed at teardown); config: RunConfig defaults."""
    from swarm_coordinator.store import Store

    opened = []

    def make(*, lease_ttl=100.0, peer_ttl=60.0, config: RunConfig | None = None, run_id="test-run"):
        store = Store.open(db_path, clock=clock, lease_ttl=lease_ttl, peer_ttl=peer_ttl)
        opened.append(store)
        store.ensure_config(config, run_id=run_id)
        return store

    yield make
    for store in opened:
        if not store.connection.closed:
            store.close()


class Client:
    """A real gRPC client of a coordinator, with the join token on every call."""

    def __init__(self, address: str, token: str | None):
        self.channel = channel(address)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.token = token

    def __getattr__(self, method):
        rpc = getattr(self.stub, method)
        return lambda request, **kw: rpc(request, metadata=token_metadata(kw.pop("token", self.token)),
                                         timeout=kw.pop("timeout", 10), **kw)

    def register(self, peer_id, *, token=None, **kw):
        return self.RegisterPeer(pb.RegisterPeerRequest(peer_id=peer_id, **kw), token=token or self.token)

    def close(self):
        self.channel.close()


@pytest.fixture
def coordinator(db_path, clock):
    """coordinator(**settings) -> (running Coordinator, Client with a valid token) on port 0, in process; keyword
    arguments are CoordinatorSettings fields."""
    from swarm_coordinator.server import start as start_coordinator
    from swarm_coordinator.settings import CoordinatorSettings
    from swarm_coordinator.tokens import create_token

    running, clients = [], []

    def start(**kwargs):
        token = create_token(db_path, name="tests")
        options = dict(listen="127.0.0.1:0", db_path=db_path, run_id="test-run", metrics_port=None,
                       upkeep_interval=3600.0)
        options.update(kwargs)
        server = start_coordinator(CoordinatorSettings(**options), clock=clock)
        running.append(server)
        client = Client(server.address, token)
        clients.append(client)
        return server, client

    yield start
    for client in clients:
        client.close()
    for server in running:
        server.stop(grace=0.5)
