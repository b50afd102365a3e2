"""Everything a coordinator is started with, in one value: `swarm coordinator`'s flags, a test's or the demo's choices.

The command line builds one from its flags (cli.py); `server.start(settings)` runs it. Checks here cover what every
caller could get wrong; the CLI checks flag syntax before (with the flag's name in the message).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from swarm import cliargs
from swarm.metrics import default_metrics_host
from swarm.runconfig import RunConfig, validate_run_id
from swarm_coordinator.limits import Limits
from swarm_coordinator.statuspage.settings import StatusPageSettings

DEFAULT_LISTEN = "0.0.0.0:50051"
MAX_GRPC_WORKERS = 256


@dataclass(frozen=True)
class CoordinatorSettings:
    db_path: str = "coordinator.sqlite"
    listen: str = DEFAULT_LISTEN  # HOST:PORT; port 0 picks a free one
    # The swarm's name on the DHT. None: the stored run's id, or a random one at the first start, so that only token
    # holders (who get it with their credential) learn it (swarm.trust).
    run_id: str | None = None
    config_path: str | None = None  # run config YAML, stored as a new version when it differs from the stored one
    config: RunConfig | None = None  # or the config itself (tests, the demo); None with no path: the stored one
    # The dataset service whose index is cut into chunks, the address peers are told, and the token to list it with
    # (None: a "coordinator-internal" token of our own database, made at each start).
    dataset: str | None = None
    dataset_public_address: str | None = None
    dataset_token: str | None = None
    bootstrap_peers: tuple[str, ...] = ()  # every joiner's first initial peers
    bootstrap_peers_url: str | None = None  # fetched (and refreshed) from the bootstrap DHT's /multiaddrs route
    lease_ttl: float = 1200.0  # seconds a lease lives without a heartbeat (the 2022 trainer's 20 min)
    peer_ttl: float = 120.0  # seconds after its last heartbeat a peer counts as dead
    heartbeat_interval: float = 30.0  # how often peers are told to heartbeat
    sync_interval: float = 5.0  # seconds between dataset index syncs
    upkeep_interval: float = 1.0  # seconds between lease reaping / config refresh passes
    synchronous: str = "normal"  # SQLite synchronous mode: "full" also survives power loss (db.py)
    max_workers: int = 4  # threads answering RPCs; calls are short and share one lock
    limits: Limits = field(default_factory=Limits)  # what one join token may use (limits.py)
    tls_cert: str | None = None  # PEM certificate and key: serve TLS (swarm.tls); None: plaintext
    tls_key: str | None = None
    token_cache_ttl: float = 5.0  # seconds a join token check is cached (a revoked token stops within this)
    metrics_port: int | None = 9100  # None: no /metrics
    metrics_host: str = field(default_factory=default_metrics_host)  # loopback unless $SWARM_METRICS_HOST
    ready_file: str | None = None  # JSON {grpc_address, metrics_port, config_version, run_id} once serving
    status_page: StatusPageSettings | None = None  # the public read-only status page; None: not served
    # Admission (swarm.trust): the Ed25519 key that signs credentials (created at first start, 0600; None: beside
    # the database), and how long a credential lives (a revoked token's peers drop out within this).
    signing_key_path: str | None = None
    credential_lifetime: float = 600.0

    def __post_init__(self) -> None:
        if self.run_id is not None:
            validate_run_id(self.run_id)
        for name in ("listen", "dataset", "dataset_public_address"):
            value = getattr(self, name)
            if value is not None and not cliargs.is_address(value):
                raise ValueError(f"{name} {value!r} is not HOST:PORT")
        for name in ("lease_ttl", "peer_ttl", "heartbeat_interval", "sync_interval", "upkeep_interval",
                     "token_cache_ttl", "credential_lifetime"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.max_workers <= MAX_GRPC_WORKERS:
            raise ValueError(f"grpc workers must be between 1 and {MAX_GRPC_WORKERS}, got {self.max_workers}")
        if self.metrics_port is not None:
            cliargs.check_port(self.metrics_port, name="metrics port")
        if self.dataset_public_address and not self.dataset:
            raise ValueError("a public dataset address needs the dataset address the coordinator syncs from")
        if self.synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be normal or full, got {self.synchronous!r}")
        object.__setattr__(self, "bootstrap_peers", tuple(self.bootstrap_peers))

    @property
    def signing_key_file(self) -> str:
        import os

        return self.signing_key_path or os.path.join(os.path.dirname(os.path.abspath(self.db_path)),
                                                     "coordinator-signing.key")

    def replace(self, **changes) -> "CoordinatorSettings":
        return dataclasses.replace(self, **changes)
