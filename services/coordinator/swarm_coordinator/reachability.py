"""CheckReachability (issue 12 item 3): the coordinator dials a peer's announced addresses back, so a volunteer
behind a NAT learns before training that no one can connect to it, and how to fix that.

It must not become a port scanner for a hostile token holder, so it dials only:
- the multiaddrs registered for a peer of the caller's own token (each ends in /p2p/<that peer's id>),
- on the host the gRPC call came from, or on a private/loopback address when the caller is private/loopback too
  (the demo, compose; such a caller already reaches that network itself). Link-local, multicast and unspecified
  addresses, DNS names, relays and non-TCP transports are never dialled,
- at most `MAX_DIALS_PER_CHECK` addresses per check, one check per peer every `min_interval_s`, and at most
  `max_concurrent` checks at once.
Anything it refuses to dial is answered NOT_VERIFIED with the reason. A public caller announcing only private
addresses is UNREACHABLE without a dial: no one outside its network can connect to those.
A dial is a TCP connect plus libp2p's multistream greeting (a libp2p listener sends it first), so a port forwarded
to the wrong machine is not mistaken for a reachable peer. The rules are pure functions; `ReachabilityRpcs` is the
servicer part.
"""
from __future__ import annotations

import enum
import ipaddress
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator import addresses, rules
from swarm_coordinator.rpc_handling import caller, rpc_handler

MULTISTREAM_GREETING = b"\x13/multistream/1.0.0\n"  # varint length + multistream-select's protocol id
DIAL_TIMEOUT_S = 3.0
MIN_INTERVAL_S = 10.0
MAX_CONCURRENT_CHECKS = 8
MAX_DIALS_PER_CHECK = 4
Verdict = pb.CheckReachabilityResponse.Verdict


class Decision(enum.Enum):
    DIAL = "dial"
    PRIVATE_FROM_PUBLIC = "private"  # not reachable from outside, known without dialling
    UNUSABLE = "unusable"  # no peer can dial it (0.0.0.0, link-local, multicast): unreachable, never dialled
    REFUSE = "refuse"  # might be reachable, but not the coordinator's to dial: the check is not verified


@dataclass(frozen=True)
class AddressResult:
    multiaddr: str
    dialled: bool
    reachable: bool
    reason: str
    port: int | None = None
    undialable: bool = False  # private (to a public caller) or unusable: unreachable, known without a dial

    def message(self) -> pb.AddressReachability:
        return pb.AddressReachability(multiaddr=self.multiaddr, dialled=self.dialled, reachable=self.reachable,
                                      reason=self.reason)


def caller_host(grpc_peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address in gRPC's `context.peer()` ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678"); None for anything else
    (a unix socket). An IPv4-mapped IPv6 address is its IPv4 address."""
    kind, _, rest = grpc_peer.partition(":")
    if kind == "ipv4":
        text = rest.rsplit(":", 1)[0]
    elif kind == "ipv6":
        text = rest.rsplit(":", 1)[0].strip("[]")
    else:
        return None
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def tcp_target(multiaddr: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | str:
    """(ip, port) of a dialable /ip4|ip6/.../tcp/... multiaddr, else the reason it is not dialled."""
    try:
        parsed = addresses.parse_multiaddr(multiaddr)
    except ValueError as e:
        return f"not a multiaddr ({e})"
    names = [name for name, _ in parsed]
    if "p2p-circuit" in names:
        return "a relay address: only direct addresses are dialled"
    if names[0] not in ("ip4", "ip6"):
        return "a DNS name is not dialled back: announce an /ip4 or /ip6 address"
    if len(parsed) < 2 or parsed[1][0] != "tcp" or any(n in ("ws", "wss", "quic", "quic-v1") for n in names):
        return "not a plain TCP address: only /tcp/ addresses are dialled"
    return ipaddress.ip_address(parsed[0][1]), int(parsed[1][1])


def _local(ip) -> bool:
    return ip.is_loopback or ip.is_private


def dial_decision(ip, *, caller_ip) -> tuple[Decision, str]:
    """Whether the coordinator may dial `ip` for a call from `caller_ip` (both ip_address objects or None)."""
    if caller_ip is None:
        return Decision.REFUSE, "the call's source address is unknown, so no address is known to be the caller's"
    if ip.is_unspecified or ip.is_link_local or ip.is_multicast or ip.is_reserved:
        return Decision.UNUSABLE, f"{ip} is not an address another peer can dial"
    if ip == caller_ip:
        return Decision.DIAL, "the host this call came from"
    if caller_ip.is_loopback and _local(ip):
        return Decision.DIAL, "a local address, and the caller is on this machine"
    if _local(caller_ip) and ip.is_private and not ip.is_loopback:
        return Decision.DIAL, "a private address, and the caller is on a private network too"
    if _local(ip) and not _local(caller_ip):
        return Decision.PRIVATE_FROM_PUBLIC, (f"{ip} is a private address: peers outside your network cannot "
                                              f"connect to it")
    return Decision.REFUSE, (f"{ip} is not the host this call came from ({caller_ip}): the coordinator dials back "
                             f"only the caller's own host")


def dial(ip, port: int, *, timeout: float = DIAL_TIMEOUT_S) -> tuple[bool, str]:
    """(reachable, what was found): TCP connect, then libp2p's multistream greeting, within `timeout` overall."""
    started, connected = time.monotonic(), False
    try:
        with socket.create_connection((str(ip), port), timeout=timeout) as conn:
            connected = True
            conn.settimeout(max(0.1, timeout - (time.monotonic() - started)))
            greeting = b""
            while len(greeting) < len(MULTISTREAM_GREETING):
                data = conn.recv(len(MULTISTREAM_GREETING) - len(greeting))
                if not data:
                    break
                greeting += data
    except ConnectionRefusedError:
        return False, f"connection refused: nothing listens on TCP port {port} there, or a firewall rejects it"
    except TimeoutError:
        if connected:
            return False, (f"TCP port {port} is open but did not answer as a libp2p node in {timeout:g} s: is the "
                           f"port forwarded to the machine running this peer?")
        return False, f"no answer in {timeout:g} s: a NAT or firewall drops connections to TCP port {port}"
    except OSError as e:
        return False, f"could not connect: {e.strerror or e}"
    if greeting == MULTISTREAM_GREETING:
        return True, "a libp2p node answered"
    return False, (f"TCP port {port} is open but what answers is not a libp2p node: is the port forwarded to the "
                   f"machine running this peer?")


def verdict(results: Sequence[AddressResult], *, observed: str) -> tuple[int, str]:
    """(Verdict, one line for a person) from the per-address results."""
    if any(r.reachable for r in results):
        good = next(r for r in results if r.reachable)
        return Verdict.REACHABLE, f"reachable: the coordinator connected to {good.multiaddr}"
    judged = [r for r in results if r.dialled or r.undialable]
    unverified = [r for r in results if not (r.dialled or r.undialable)]
    if unverified or not judged:  # an address it would not dial may well be reachable: say so, claim nothing
        reasons = "; ".join(f"{r.multiaddr}: {r.reason}" for r in results) or "no addresses are registered"
        return Verdict.NOT_VERIFIED, f"not verified, because not every address could be dialled ({reasons})"
    port = next((r.port for r in judged if r.port), None)
    port_text = f"TCP port {port}" if port else "the peer's TCP port"
    details = "; ".join(f"{r.multiaddr}: {r.reason}" for r in judged)
    public = observed or "YOUR_PUBLIC_IP"
    return Verdict.UNREACHABLE, (
        f"not reachable from outside ({details}). Other peers cannot connect to this one, so it trains only with "
        f"peers it dials itself. Fix it: forward {port_text} on your router/firewall to this machine and start "
        f"with --host-maddrs /ip4/0.0.0.0/tcp/{port or 'PORT'} --announce-maddrs /ip4/{public}/tcp/{port or 'PORT'}, "
        f"or run with --client-mode (no inbound connections needed)")


def check_addresses(multiaddrs: Sequence[str], *, caller_ip, dialer: Callable[..., tuple[bool, str]] = dial,
                    timeout: float = DIAL_TIMEOUT_S, max_dials: int = MAX_DIALS_PER_CHECK) -> list[AddressResult]:
    """Each registered multiaddr judged: dialled (at most `max_dials` distinct ip:port, in parallel, so a check takes
    one `timeout` at most), judged private, or refused."""
    plan: list[tuple[str, object, int | None, str]] = []  # (multiaddr, (ip, port) to dial | Decision | None, port, why)
    targets: list[tuple] = []
    for multiaddr in multiaddrs:
        target = tcp_target(multiaddr)
        if isinstance(target, str):
            plan.append((multiaddr, None, None, target))
            continue
        ip, port = target
        decision, why = dial_decision(ip, caller_ip=caller_ip)
        if decision is Decision.DIAL and target not in targets:
            if len(targets) >= max_dials:
                decision, why = Decision.REFUSE, f"at most {max_dials} addresses are dialled per check"
            else:
                targets.append(target)
        plan.append((multiaddr, target if decision is Decision.DIAL else decision, port, why))
    found: dict[tuple, tuple[bool, str]] = {}
    if targets:
        with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="reachability") as pool:
            futures = {target: pool.submit(dialer, *target, timeout=timeout) for target in targets}
            found = {target: future.result() for target, future in futures.items()}
    results = []
    for multiaddr, what, port, why in plan:
        if what is None:
            results.append(AddressResult(multiaddr, False, False, why))
        elif what in (Decision.PRIVATE_FROM_PUBLIC, Decision.UNUSABLE):
            results.append(AddressResult(multiaddr, False, False, why, port, undialable=True))
        elif what is Decision.REFUSE:
            results.append(AddressResult(multiaddr, False, False, f"not dialled: {why}", port))
        else:
            reachable, result = found[what]
            results.append(AddressResult(multiaddr, True, reachable, result, port))
    return results


class CheckThrottle:
    """One check per peer every `min_interval_s`, and at most `max_concurrent` checks at once (dials block)."""

    def __init__(self, *, min_interval_s: float = MIN_INTERVAL_S, max_concurrent: int = MAX_CONCURRENT_CHECKS,
                 clock: Callable[[], float] = time.monotonic, max_peers: int = 10_000):
        self.min_interval_s, self.clock, self.max_peers = min_interval_s, clock, max_peers
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def admit(self, peer_id: str) -> str | None:
        """None when a check may start now (release() after it), else why not."""
        with self._lock:
            now = self.clock()
            last = self._last.get(peer_id)
            if last is not None and now - last < self.min_interval_s:
                return (f"this peer was checked {now - last:.0f} s ago; ask again in "
                        f"{self.min_interval_s - (now - last):.0f} s")
            if not self._slots.acquire(blocking=False):
                return "the coordinator is busy checking other peers; ask again shortly"
            if len(self._last) >= self.max_peers:
                self._last = {p: t for p, t in self._last.items() if now - t < self.min_interval_s}
            self._last[peer_id] = now
            return None

    def release(self) -> None:
        self._slots.release()


class ReachabilityRpcs:
    """CheckReachability: dial a peer of the caller's token back on its registered addresses."""

    def __init__(self, store, *, throttle: CheckThrottle | None = None, timeout: float = DIAL_TIMEOUT_S):
        self.store, self.timeout = store, timeout
        self.throttle = throttle or CheckThrottle()

    @rpc_handler("CheckReachability")
    def CheckReachability(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        peer_id = rules.check_peer_id(request.peer_id)
        peer = self.store.peers.require(peer_id, caller(context))  # another token's peer: PERMISSION_DENIED
        caller_ip = caller_host(context.peer())
        observed = str(caller_ip) if caller_ip is not None else ""
        if peer.client_mode:
            return pb.CheckReachabilityResponse(
                verdict=Verdict.NOT_VERIFIED, observed_host=observed,
                message="not verified, because a client-mode peer takes no inbound connections: nothing to dial")
        refused = self.throttle.admit(peer_id)
        if refused is not None:
            return pb.CheckReachabilityResponse(verdict=Verdict.NOT_VERIFIED, observed_host=observed,
                                                message=f"not verified, because {refused}")
        try:
            results = check_addresses(peer.multiaddrs, caller_ip=caller_ip, timeout=self.timeout)
        finally:
            self.throttle.release()
        outcome, message = verdict(results, observed=observed)
        return pb.CheckReachabilityResponse(
            verdict=outcome, message=message, observed_host=observed,
            addresses=[r.message() for r in results])
