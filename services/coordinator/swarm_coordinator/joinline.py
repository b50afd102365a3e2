"""The `docker run` lines a volunteer pastes to join, filled in for one token (`swarm token create` prints them).

Kept the same as README "Join a swarm": one line for a peer that can forward a port (it announces MY.PUBLIC.IP, which
only the volunteer knows), one for a peer behind NAT (client mode, no inbound port). With the host's TLS certificate
fingerprint, both lines pin it (`--tls-fingerprint`): the trainer then refuses any other server before it sends the
token, for the coordinator and the dataset service alike.
"""
from __future__ import annotations

import shlex

DEFAULT_JOIN_IMAGE = "swarm-diffusion/trainer:0.1.0"
TRAINER_PORT = 31338


def join_lines(token: str, *, coordinator: str, image: str = DEFAULT_JOIN_IMAGE, port: int = TRAINER_PORT,
               tls_fingerprint: str | None = None) -> dict[str, str]:
    """{"reachable": line, "behind NAT": line} for this token, coordinator HOST:PORT and trainer image; with
    `tls_fingerprint` ("sha256:..."), the lines pin the host's certificate."""
    pin = f" --tls-fingerprint {shlex.quote(tls_fingerprint)}" if tls_fingerprint else ""
    common = (f"docker run --gpus all --rm --shm-size=8g {{ports}}-v swarm-trainer:/data "
              f"-e SWARM_TOKEN={shlex.quote(token)} {shlex.quote(image)} "
              f"swarm train --coordinator {shlex.quote(coordinator)}{pin} --output-dir /data/run")
    return {
        "reachable": common.format(ports=f"-p {port}:{port} ") +
        f" --host-maddrs /ip4/0.0.0.0/tcp/{port} --announce-maddrs /ip4/MY.PUBLIC.IP/tcp/{port}",
        "behind NAT": common.format(ports="") + " --client-mode --use-auto-relay",
    }
