"""Is this peer reachable from outside? (issue 12 item 3) Asked once at start, after the DHT is up and the peer is
registered, before it trains: the coordinator dials the registered addresses back (its CheckReachability).

A peer that no one can dial still trains, but only with peers it dials itself, so the most common joining problem
(a NAT without a forwarded port) shows up as one WARNING naming the address, the port and both fixes: forward the
port (and announce it), or --client-mode. `--require-reachable` makes it fatal. Client-mode peers skip the check,
and a coordinator that cannot answer (an older one, an outage) never stops a peer from training.
"""
from __future__ import annotations

import grpc

from swarm.errors import UsageError
from swarm.logs import get_logger
from swarm.v1 import coordinator_pb2 as pb

logger = get_logger(__name__)

Verdict = pb.CheckReachabilityResponse.Verdict
FIXED_PORT_EXAMPLE = 31338  # the README's join line


def random_port_hint(host_maddrs) -> str:
    """What to add when this peer listens on a port the OS picks (/tcp/0): that port changes with every start, so
    forwarding it is no fix; a fixed one is."""
    if not any(addr.rstrip("/").endswith("/tcp/0") for addr in host_maddrs):
        return ""
    return (f" (this peer listens on a random port, new at every start: pick a fixed one to forward, e.g. "
            f"--host-maddrs /ip4/0.0.0.0/tcp/{FIXED_PORT_EXAMPLE})")


def check_reachability(client, *, peer_id: str, client_mode: bool, required: bool = False,
                       host_maddrs=()) -> pb.CheckReachabilityResponse | None:
    """Ask the coordinator to dial this peer back and say what it found; None when it was not asked or could not
    answer. Raises UsageError when unreachable and `required` (--require-reachable)."""
    if client_mode:
        logger.info("client mode: this peer takes no inbound connections, so its reachability is not checked")
        return None
    try:
        answer = client.check_reachability(peer_id=peer_id)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            logger.info("the coordinator does not check reachability (an older version); training on")
        else:
            logger.warning(f"could not check whether this peer is reachable from outside ({e.code().name}: "
                           f"{e.details()}); training on")
        return None
    if answer.verdict == Verdict.REACHABLE:
        logger.info(f"this peer is {answer.message}")
    elif answer.verdict == Verdict.UNREACHABLE:
        message = f"this peer is {answer.message}{random_port_hint(host_maddrs)}"
        if required:
            raise UsageError(f"{message} (--require-reachable: not training)")
        logger.warning(message)
    else:
        logger.info(f"reachability from outside {answer.message}")
    return answer
