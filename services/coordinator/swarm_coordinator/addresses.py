"""Peer addresses as pure rules: parse a multiaddr, require it to name the registering peer, hide addresses.

A registered multiaddr reaches every joiner's p2p daemon, which refuses to start on one it cannot parse, so a single
bad string from one token holder would stop every new trainer. The coordinator image carries no hivemind (and the
PyPI `multiaddr` drags in trio and dnspython), so this is a strict parser of the protocols hivemind's daemon speaks;
tests/coordinator/test_hostile.py checks that whatever it accepts, hivemind's own parser (hivemind.utils.multiaddr)
accepts too. Anything else is refused with what to send instead.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Sequence

from swarm_coordinator.rules import InvalidRequest

MAX_MULTIADDR_LENGTH = 512
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*\.?$")
# Multihash codes a libp2p peer id uses: identity (small public keys: Ed25519's 12D3KooW...) and sha2-256 (Qm...).
_PEER_ID_MULTIHASHES = {0x00: range(1, 43), 0x12: range(32, 33)}


def _port(value: str) -> bool:
    return value.isdigit() and len(value) <= 5 and int(value) <= 65535


def _ip(version: int):
    def check(value: str) -> bool:
        try:
            return ipaddress.ip_address(value).version == version
        except ValueError:
            return False
    return check


def _hostname(value: str) -> bool:
    return bool(_HOSTNAME.match(value))


# protocol -> value check (None: the protocol takes no value)
_PROTOCOLS = {"ip4": _ip(4), "ip6": _ip(6), "dns": _hostname, "dns4": _hostname, "dns6": _hostname,
              "dnsaddr": _hostname, "tcp": _port, "udp": _port, "quic": None, "quic-v1": None, "ws": None,
              "wss": None, "p2p-circuit": None}


def base58_decode(text: str) -> bytes:
    """base58btc (Bitcoin's alphabet), as libp2p writes peer ids; ValueError on a character outside it."""
    number = 0
    for ch in text:
        digit = _BASE58.find(ch)
        if digit < 0:
            raise ValueError(f"{ch!r} is not a base58 character")
        number = number * 58 + digit
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * (len(text) - len(text.lstrip("1"))) + body


def base58_encode(data: bytes) -> str:
    number, text = int.from_bytes(data, "big"), ""
    while number:
        number, digit = divmod(number, 58)
        text = _BASE58[digit] + text
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + text


def is_peer_id(text: str) -> bool:
    """A libp2p peer id: base58 of a multihash (identity or sha2-256) whose length byte matches its digest."""
    if not 1 <= len(text) <= 128:
        return False
    try:
        raw = base58_decode(text)
    except ValueError:
        return False
    if len(raw) < 2 or raw[0] not in _PEER_ID_MULTIHASHES:
        return False
    return raw[1] in _PEER_ID_MULTIHASHES[raw[0]] and len(raw) == 2 + raw[1]


def parse_multiaddr(addr: str) -> list[tuple[str, str | None]]:
    """(protocol, value) pairs of a multiaddr; ValueError saying what is wrong for anything hivemind can't dial."""
    if not addr.startswith("/") or len(addr) > MAX_MULTIADDR_LENGTH or any(ch.isspace() for ch in addr):
        raise ValueError("a multiaddr starts with / and has no spaces")
    parts = addr[1:].rstrip("/").split("/")
    parsed: list[tuple[str, str | None]] = []
    i = 0
    while i < len(parts):
        name = parts[i]
        if name in ("p2p", "ipfs"):
            if i + 1 >= len(parts) or not is_peer_id(parts[i + 1]):
                raise ValueError(f"/{name}/ needs a peer id (base58, e.g. 12D3KooW... or Qm...)")
            parsed.append(("p2p", parts[i + 1]))
            i += 2
            continue
        if name not in _PROTOCOLS:
            raise ValueError(f"unknown protocol {name[:32]!r}")
        check = _PROTOCOLS[name]
        if check is None:
            parsed.append((name, None))
            i += 1
            continue
        if i + 1 >= len(parts) or not check(parts[i + 1]):
            raise ValueError(f"/{name}/ needs a valid value")
        parsed.append((name, parts[i + 1]))
        i += 2
    if not parsed or parsed[0][0] not in ("ip4", "ip6", "dns", "dns4", "dns6", "dnsaddr"):
        raise ValueError("a multiaddr starts with /ip4, /ip6 or /dns")
    return parsed


def check_peer_multiaddrs(multiaddrs: Sequence[str], *, peer_id: str, limit: int) -> tuple[str, ...]:
    """The multiaddrs a peer registers, each parsed and ending in /p2p/<its own peer id>: one peer cannot announce
    another's address (or a string that stops joiners' daemons). Duplicates dropped, order kept."""
    if len(multiaddrs) > limit:
        raise InvalidRequest(f"{len(multiaddrs)} multiaddrs announced; send at most {limit}")
    for addr in multiaddrs:
        try:
            parsed = parse_multiaddr(addr)
        except ValueError as e:
            raise InvalidRequest(f"multiaddr {addr[:80]!r} is not valid ({e}): expected e.g. "
                                 f"/ip4/1.2.3.4/tcp/31337/p2p/<your peer id>") from None
        if parsed[-1] != ("p2p", peer_id):
            raise InvalidRequest(f"multiaddr {addr[:80]!r} must end in /p2p/{peer_id[:60]} (the registering peer's "
                                 f"own id): announce only your own addresses")
    return tuple(dict.fromkeys(multiaddrs))
