"""The status page's settings: `swarm coordinator --status-port ...`, or a test's or the demo's choices."""
from __future__ import annotations

from dataclasses import dataclass

from swarm import cliargs
from swarm_coordinator.statuspage.server import CACHE_S

DEFAULT_STATUS_PORT = 8080
DEFAULT_JOIN_IMAGE = "swarm-diffusion/trainer:0.1.0"
DEFAULT_TOKEN_CONTACT = "ask the swarm's host"
SAMPLE_INTERVAL_S = 5.0


@dataclass(frozen=True)
class StatusPageSettings:
    port: int = DEFAULT_STATUS_PORT  # 0 picks a free one
    host: str = "0.0.0.0"
    public_address: str | None = None  # the coordinator's HOST:PORT for volunteers; None: from its listen address
    join_image: str = DEFAULT_JOIN_IMAGE
    token_contact: str = DEFAULT_TOKEN_CONTACT  # where a newcomer asks for a join token (a URL, a chat channel)
    # The run's public name. Never the run id: that is the swarm's DHT prefix, which only admitted peers learn.
    run_name: str | None = None
    sample_interval: float = SAMPLE_INTERVAL_S
    cache_s: float = CACHE_S

    def __post_init__(self) -> None:
        cliargs.check_port(self.port, name="status page port")
        if self.public_address is not None and not cliargs.is_address(self.public_address):
            raise ValueError(f"public address {self.public_address!r} is not HOST:PORT")
        for name in ("join_image", "token_contact", "host", "run_name"):
            value = getattr(self, name)
            if value is None:
                continue
            if not value.strip() or len(value) > 200 or any(ord(c) < 32 for c in value):
                raise ValueError(f"{name} must be one line of 1 to 200 characters, got {value!r}")
        if not self.sample_interval > 0 or not self.cache_s >= 0:
            raise ValueError("the status page's sample interval must be > 0 and its cache time >= 0")
