"""CheckReachability (issue 12 item 3) against a real coordinator over gRPC: a real hivemind DHT is reachable, a closed
port or a socket that is not libp2p is not (with the fixes named), and the coordinator refuses to dial anything but
the caller's own peer on the caller's own host. The pure rules (who may be dialled) are tested alone first."""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading

import grpc
import pytest

from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator.addresses import base58_encode
from swarm_coordinator.reachability import (
    CheckThrottle,
    Decision,
    caller_host,
    check_addresses,
    dial,
    dial_decision,
    tcp_target,
    verdict,
)

pytestmark = pytest.mark.timeout(60)
Verdict = pb.CheckReachabilityResponse.Verdict
ip = ipaddress.ip_address


def peer_id(name: str) -> str:
    return base58_encode(bytes([0, len(name)]) + name.encode())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------- pure rules

def test_caller_host_reads_grpc_peer_strings():
    assert caller_host("ipv4:203.0.113.9:51000") == ip("203.0.113.9")
    assert caller_host("ipv6:[::1]:51000") == ip("::1")
    assert caller_host("ipv6:[::ffff:203.0.113.9]:51000") == ip("203.0.113.9")
    assert caller_host("unix:/tmp/socket") is None and caller_host("ipv4:garbage") is None


def test_only_direct_tcp_addresses_are_dial_targets():
    me = peer_id("me")
    assert tcp_target(f"/ip4/203.0.113.9/tcp/31337/p2p/{me}") == (ip("203.0.113.9"), 31337)
    assert tcp_target(f"/ip6/::1/tcp/5/p2p/{me}") == (ip("::1"), 5)
    assert "DNS" in tcp_target(f"/dns4/example.org/tcp/31337/p2p/{me}")
    assert "relay" in tcp_target(f"/ip4/203.0.113.9/tcp/1/p2p/{me}/p2p-circuit/p2p/{me}")
    assert "TCP" in tcp_target(f"/ip4/203.0.113.9/udp/1/quic/p2p/{me}")


@pytest.mark.parametrize("address, caller, decision", [
    ("1.1.1.1", "1.1.1.1", Decision.DIAL),  # the caller's own public host
    ("8.8.8.8", "1.1.1.1", Decision.REFUSE),  # someone else's host: never a port scanner
    ("192.168.1.5", "1.1.1.1", Decision.PRIVATE_FROM_PUBLIC),  # behind a NAT: unreachable, no dial needed
    ("127.0.0.1", "1.1.1.1", Decision.PRIVATE_FROM_PUBLIC),
    ("127.0.0.1", "127.0.0.1", Decision.DIAL),  # the demo: everything on one machine
    ("172.18.0.4", "127.0.0.1", Decision.DIAL),
    ("172.18.0.4", "172.18.0.1", Decision.DIAL),  # compose: a private network on both sides
    ("127.0.0.1", "172.18.0.1", Decision.REFUSE),  # not the coordinator's own loopback services for a LAN caller
    ("1.1.1.1", "127.0.0.1", Decision.REFUSE),
    ("169.254.169.254", "169.254.169.254", Decision.UNUSABLE),  # cloud metadata and other link-local: never
    ("0.0.0.0", "127.0.0.1", Decision.UNUSABLE),
])
def test_who_may_be_dialled(address, caller, decision):
    assert dial_decision(ip(address), caller_ip=ip(caller))[0] is decision
    assert dial_decision(ip(address), caller_ip=None)[0] in (Decision.REFUSE, Decision.UNUSABLE)


def test_the_verdict_claims_unreachable_only_when_no_address_might_be_reachable():
    me = peer_id("me")

    def refused(host, port, *, timeout):
        return False, "connection refused"

    def verdict_for(*hosts, caller="1.1.1.1"):
        results = check_addresses([f"/ip4/{h}/tcp/31337/p2p/{me}" for h in hosts], caller_ip=ip(caller),
                                  dialer=refused)
        return verdict(results, observed=caller)

    outcome, message = verdict_for("192.168.1.5", "127.0.0.1")  # the usual NAT: only private addresses
    assert outcome == Verdict.UNREACHABLE and "--announce-maddrs /ip4/1.1.1.1/tcp/31337" in message
    assert verdict_for("1.1.1.1", "0.0.0.0")[0] == Verdict.UNREACHABLE  # the dial failed, 0.0.0.0 dials nowhere
    outcome, message = verdict_for("192.168.1.5", "8.8.8.8")  # 8.8.8.8 might answer: not the coordinator's to try
    assert outcome == Verdict.NOT_VERIFIED and "8.8.8.8 is not the host this call came from" in message
    assert verdict(check_addresses([], caller_ip=ip("1.1.1.1")), observed="1.1.1.1")[0] == Verdict.NOT_VERIFIED


def test_dials_are_capped_per_check_and_deduplicated():
    me, dialled = peer_id("me"), []

    def dialer(host, port, *, timeout):
        dialled.append((host, port))
        return False, "connection refused"

    addrs = [f"/ip4/127.0.0.{i}/tcp/{port}/p2p/{me}" for i in (1, 2) for port in (1, 2, 3)]
    results = check_addresses([addrs[0], *addrs], caller_ip=ip("127.0.0.1"), dialer=dialer, max_dials=4)
    assert len(dialled) == 4 and len(set(dialled)) == 4
    assert [r.dialled for r in results] == [True] * 5 + [False] * 2
    assert "at most 4" in results[-1].reason


def test_dial_tells_closed_silent_and_foreign_ports_apart():
    assert dial(ip("127.0.0.1"), closed_port(), timeout=1)[1].startswith("connection refused")
    with socket.socket() as silent:  # accepts (the kernel's backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        reachable, found = dial(ip("127.0.0.1"), silent.getsockname()[1], timeout=0.3)
    assert not reachable and "did not answer as a libp2p node" in found


def test_throttle_one_check_per_peer_per_interval_and_bounded_concurrency():
    now = [0.0]
    throttle = CheckThrottle(min_interval_s=10, max_concurrent=1, clock=lambda: now[0])
    assert throttle.admit("a") is None
    assert "busy" in throttle.admit("b")  # one check at a time here
    throttle.release()
    assert "ask again in 10 s" in throttle.admit("a")
    now[0] = 10.5
    assert throttle.admit("a") is None
    throttle.release()


# ------------------------------------------------------------------------------------------------ over real gRPC

@pytest.fixture
def served(coordinator):
    server, client = coordinator()
    client.address = server.address
    return client


def check(client, peer: str, **kw) -> pb.CheckReachabilityResponse:
    return client.CheckReachability(pb.CheckReachabilityRequest(peer_id=peer), **kw)


def test_a_closed_port_is_unreachable_and_the_answer_names_port_and_fixes(served):
    me, port = peer_id("closed"), closed_port()
    served.register(me, multiaddrs=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{me}"])
    answer = check(served, me)
    assert answer.verdict == Verdict.UNREACHABLE, answer.message
    assert f"TCP port {port}" in answer.message and "connection refused" in answer.message
    assert "--announce-maddrs" in answer.message and "--client-mode" in answer.message
    assert answer.observed_host == "127.0.0.1" and answer.addresses[0].dialled


def test_the_trainer_warns_once_with_address_port_and_fixes_or_stops_when_required(served, caplog):
    from swarm.errors import UsageError
    from swarm_trainer.coordinator_client import CoordinatorClient
    from swarm_trainer.reachability import check_reachability

    me, port = peer_id("natted"), closed_port()
    client = CoordinatorClient(served.address, token=served.token, timeout=10)
    try:
        client.register(peer_id=me, multiaddrs=[f"/ip4/127.0.0.1/tcp/{port}"], client_mode=False, name="n",
                        batch_size=1)
        with caplog.at_level(logging.INFO, logger="swarm_trainer.reachability"):
            answer = check_reachability(client, peer_id=me, client_mode=False, host_maddrs=["/ip4/0.0.0.0/tcp/0"])
            assert check_reachability(client, peer_id=me, client_mode=True) is None  # client mode: not asked
        assert answer.verdict == Verdict.UNREACHABLE
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and f"/ip4/127.0.0.1/tcp/{port}/p2p/{me}" in warnings[0]
        assert "forward TCP port" in warnings[0] and "--client-mode" in warnings[0]
        assert "random port" in warnings[0] and "--host-maddrs /ip4/0.0.0.0/tcp/31338" in warnings[0]
        other = peer_id("natted2")
        client.register(peer_id=other, multiaddrs=[f"/ip4/127.0.0.1/tcp/{port}"], client_mode=False, name="m",
                        batch_size=1)
        with pytest.raises(UsageError, match="--require-reachable"):
            check_reachability(client, peer_id=other, client_mode=False, required=True)
    finally:
        client.close()


def test_an_open_port_that_is_not_libp2p_is_unreachable(served):
    me = peer_id("wrongbox")
    with socket.socket() as listener:  # a port forwarded to some other program: it answers, but not as libp2p
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer_wrongly():
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        threading.Thread(target=answer_wrongly, daemon=True).start()
        served.register(me, multiaddrs=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{me}"])
        answer = check(served, me)
    assert answer.verdict == Verdict.UNREACHABLE and "not a libp2p node" in answer.message


def test_refused_to_dial_another_tokens_peer_or_another_host(served, db_path):
    from swarm_coordinator.tokens import create_token

    mallory_token = create_token(db_path, name="mallory")
    victim = peer_id("victim")
    served.register(victim, multiaddrs=[f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{victim}"])
    with pytest.raises(grpc.RpcError) as info:  # another token's peer: not even its addresses are looked at
        check(served, victim, token=mallory_token)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "another join token" in info.value.details()

    mallory = peer_id("mallory")  # its own peer, announcing a host other than the one it calls from
    served.register(mallory, token=mallory_token, multiaddrs=[f"/ip4/8.8.8.8/tcp/22/p2p/{mallory}"])
    answer = check(served, mallory, token=mallory_token)
    assert answer.verdict == Verdict.NOT_VERIFIED and answer.message.startswith("not verified, because")
    assert "not the host this call came from" in answer.message and not answer.addresses[0].dialled
    again = check(served, mallory, token=mallory_token)  # and not again right away
    assert again.verdict == Verdict.NOT_VERIFIED and "ask again" in again.message

    client_mode = peer_id("client")
    served.register(client_mode, client_mode=True)
    assert "client-mode" in check(served, client_mode).message


def test_a_real_trainer_dht_is_reachable_and_the_trainer_logs_it(served, caplog):
    import hivemind

    from swarm_trainer.coordinator_client import CoordinatorClient
    from swarm_trainer.reachability import check_reachability
    from swarm_trainer.swarm import visible_multiaddrs

    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    client = CoordinatorClient(served.address, token=served.token, timeout=10)
    try:
        me = dht.peer_id.to_base58()
        client.register(peer_id=me, multiaddrs=visible_multiaddrs(dht), client_mode=False, name="t", batch_size=1)
        with caplog.at_level(logging.INFO, logger="swarm_trainer.reachability"):
            answer = check_reachability(client, peer_id=me, client_mode=False)
        assert answer.verdict == Verdict.REACHABLE, answer.message
        assert "reachable" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        client.close()
        dht.shutdown()


def test_require_reachable_flag(tmp_path):
    from swarm_launcher.cli import build_parser
    from swarm_trainer.cli import options_from_args

    argv = ["train", "--coordinator", "h:1", "--token", "t", "--output-dir", str(tmp_path / "run")]
    assert not options_from_args(build_parser().parse_args(argv)).require_reachable
    assert options_from_args(build_parser().parse_args([*argv, "--require-reachable"])).require_reachable
