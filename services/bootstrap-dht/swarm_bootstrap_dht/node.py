"""The bootstrap DHT node: a long-lived hivemind DHT peer with a persistent identity, its /multiaddrs and /metrics.

`start(settings)` brings the node up and returns it running (a background thread refreshes its routing table);
`serve(settings)` is the command's entry point: it starts one, writes the ready file, blocks until SIGTERM/SIGINT,
then shuts it down.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Gauge

from swarm import cliargs
from swarm.logs import get_logger
from swarm.metrics import MetricsServer
from swarm.procs import write_ready_file
from swarm.shutdown import stop_event_on_signals

logger = get_logger(__name__)

ROUTING_TABLE_PEERS = Gauge("swarm_bootstrap_dht_routing_table_peers", "DHT peers in the local routing table")
STORAGE_KEYS = Gauge("swarm_bootstrap_dht_storage_keys", "keys held in this node's DHT storage")
START_TIME = Gauge("swarm_bootstrap_dht_start_time_seconds", "unix time this node started")


class NodeStartError(RuntimeError):
    """The DHT node did not start; the message says what to check."""


@dataclass(frozen=True)
class BootstrapSettings:
    identity_path: str = "./bootstrap.key"  # private key file: created on first start, reused so the peer ID stays
    host_maddrs: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/31337",)
    announce_maddrs: tuple[str, ...] = ()  # public multiaddrs, e.g. behind port forwarding
    initial_peers: tuple[str, ...] = ()  # other bootstrap nodes to join
    use_relay: bool = True  # libp2p circuit relay: lets NAT-ed peers reach each other through us
    refresh_period: float = 30.0  # seconds between routing-table refreshes
    metrics_port: int = 9103  # /metrics and /multiaddrs; 0 picks a free one
    metrics_host: str | None = None  # None: loopback unless $SWARM_METRICS_HOST (swarm.metrics)
    ready_file: str | None = None  # JSON {peer_id, multiaddrs, metrics_port} once serving
    # The coordinator's credential signing key (swarm.trust): when given, every DHT request must carry a credential
    # signed by it, and this node signs its own. The host runs both, so the node reads the key (created if missing).
    coordinator_key_file: str | None = None

    def __post_init__(self) -> None:
        if Path(self.identity_path).is_dir():
            raise ValueError(f"identity path {self.identity_path} is a directory; give a file path such as "
                             f"{self.identity_path}/bootstrap.key")
        cliargs.check_port(self.metrics_port, name="metrics port")
        if not self.refresh_period > 0:
            raise ValueError(f"refresh period must be > 0, got {self.refresh_period}")
        for name in ("host_maddrs", "announce_maddrs", "initial_peers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


class BootstrapNode:
    """A running node (from `start`): its peer ID, the multiaddrs peers dial, and the bound metrics port."""

    def __init__(self, dht, metrics: MetricsServer, *, refresh_period: float):
        self.dht, self.metrics = dht, metrics
        self.peer_id = str(dht.peer_id)
        self.multiaddrs = [str(m) for m in dht.get_visible_maddrs()]
        self._refresh_period = refresh_period
        self._stopped = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="dht-refresh", daemon=True)
        self._refresher.start()

    @property
    def metrics_port(self) -> int:
        return self.metrics.port

    def _refresh_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                timeout = max(self._refresh_period, 10.0)
                ROUTING_TABLE_PEERS.set(self.dht.run_coroutine(_refresh, return_future=True).result(timeout=timeout))
                STORAGE_KEYS.set(self.dht.run_coroutine(_storage_size, return_future=True).result(timeout=timeout))
            except Exception as e:  # noqa: BLE001 (a refresh failing must never take the node down)
                logger.warning(f"routing table refresh failed: {e!r}")
            self._stopped.wait(self._refresh_period)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        logger.info("shutting down")
        self._stopped.set()
        self._refresher.join(timeout=30)
        self.metrics.close()
        self.dht.shutdown()


def start(settings: BootstrapSettings) -> BootstrapNode:
    """Start the DHT node (creating its key file on first start) and its HTTP routes; returns it running."""
    from swarm.dht_process import SwarmDHT

    identity = Path(settings.identity_path)
    identity.parent.mkdir(parents=True, exist_ok=True)
    START_TIME.set(time.time())
    try:
        dht = SwarmDHT(start=True, initial_peers=list(settings.initial_peers),
                       host_maddrs=list(settings.host_maddrs),
                       announce_maddrs=list(settings.announce_maddrs) or None, identity_path=str(identity),
                       use_relay=settings.use_relay, client_mode=False,
                       **_trust_kwargs(settings.coordinator_key_file, identity))
    except Exception as e:  # noqa: BLE001 (turned into a message that says what to check)
        raise NodeStartError(start_error_message(str(e), initial_peers=settings.initial_peers,
                                                 identity=identity)) from e
    try:
        peer_id, multiaddrs = str(dht.peer_id), [str(m) for m in dht.get_visible_maddrs()]
        metrics = MetricsServer(host=settings.metrics_host, port=settings.metrics_port,
                                json_routes={"/multiaddrs": lambda: {"peer_id": peer_id, "multiaddrs": multiaddrs}})
    except BaseException:
        dht.shutdown()
        raise
    return BootstrapNode(dht, metrics, refresh_period=settings.refresh_period)


def _trust_kwargs(key_file: str | None, identity: Path) -> dict:
    """hivemind.DHT's `authorizer` for a node that signs its own credentials with the coordinator's key."""
    if not key_file:
        return {}
    from swarm.trust.dht_auth import CredentialAuthorizer, SelfIssuedCredential, load_or_create_identity

    peer_id, rsa_key = load_or_create_identity(identity)
    source = SelfIssuedCredential(signing_key_path=key_file, token_name="bootstrap-dht", peer_id=peer_id,
                                  dht_public_key=rsa_key.get_public_key().to_bytes())
    return {"authorizer": CredentialAuthorizer(coordinator_public_key=source.coordinator_public_key(),
                                               credential_source=source, local_private_key=rsa_key)}


def start_error_message(error: str, *, initial_peers: tuple[str, ...], identity: Path) -> str:
    """What a failed start means, from hivemind's error: dead initial peers, a taken identity, else the flags."""
    if initial_peers and "failed to connect to bootstrap peers" in error:
        return (f"none of the {len(initial_peers)} --initial-peers answered ({', '.join(initial_peers)}): every "
                f"initial peer is down or unreachable. Start one of them first, fix the addresses, or leave "
                f"--initial-peers out to start a swarm of its own ({error})")
    if "already taken" in error:
        return (f"another node already serves with the identity in {identity} ({error}); stop it (an earlier "
                f"bootstrap-dht still running?) or give this one its own --identity-path")
    return (f"could not start the DHT node ({error}); check --host-maddrs and that {identity} is a valid key file "
            f"written by this command")


def serve(settings: BootstrapSettings, *, stop: threading.Event | None = None) -> int:
    """Run the node until SIGTERM/SIGINT (or `stop`); print its multiaddrs and write the ready file once serving."""
    node = start(settings)
    try:
        stop = stop_event_on_signals(stop, doing="stopping the bootstrap DHT")
        logger.info(f"bootstrap DHT peer {node.peer_id} listening; give peers these initial peers:")
        for maddr in node.multiaddrs:
            print(maddr, flush=True)
        write_ready_file(settings.ready_file, peer_id=node.peer_id, multiaddrs=node.multiaddrs,
                         metrics_port=node.metrics_port)
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
    return 0


async def _refresh(dht, node) -> int:
    # A lookup of a random key contacts peers across the routing table and evicts those that no longer answer.
    await node.get(f"refresh_{os.urandom(8).hex()}", latest=True)
    return len(node.protocol.routing_table.uid_to_peer_id)


async def _storage_size(dht, node) -> int:
    return len(node.protocol.storage)
