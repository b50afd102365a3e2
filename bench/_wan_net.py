"""The emulated WAN of bench/wan.py: network namespaces, veth links, tbf shaping, interface byte counters.

Layout (every name starts with PREFIX; nothing is added to the machine's own namespace):
- `PREFIX-sw` holds two bridges: `brwan` (hivemind traffic: the bootstrap DHT and the peers' p2p daemons) and
  `brsvc` (the coordinator and dataset service: chunk leases and images);
- `PREFIX-host` runs the host services, on 10.231.0.1 (wan) and 10.231.1.1 (svc);
- `PREFIX-pN` runs trainer N, `eth0` on the wan (10.231.0.(10+N)) and `eth1` on the svc network (10.231.1.(10+N)).
The peers' wan links are the ones shaped (tbf, both directions: the peer's egress and the switch's egress towards it)
and counted; the svc link carries the same data in every mode, so it stays unshaped and is reported apart.
Namespaces have no route between the two networks, so hivemind can only take the wan.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

PREFIX = "swarmwan"
WAN_NET, SVC_NET = "10.231.0", "10.231.1"
HOST_OCTET, PEER_OCTET0 = 1, 10
CMD_TIMEOUT_S = 20


class NetSetupError(RuntimeError):
    pass


def can_make_namespaces() -> str | None:
    """None when this process can build the bench's network, else why not (the bench then skips)."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, tc); run `sudo make bench NAME=wan`"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the `{tool}` command (iproute2)"
    return None


def _run(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if done.returncode != 0:
        raise NetSetupError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def tbf_args(rate_bytes_per_s: float) -> list[str]:
    """tbf for one direction: the rate, a bucket of at least 2 MTUs (or 20 ms at the rate), 1 s of queue."""
    rate_bits = max(8_000, int(rate_bytes_per_s * 8))
    burst = max(3_200, int(rate_bytes_per_s * 0.02))
    return ["tbf", "rate", f"{rate_bits}bit", "burst", str(burst), "latency", "1000ms"]


@dataclass(frozen=True)
class Wan:
    peers: int

    @property
    def switch(self) -> str:
        return f"{PREFIX}-sw"

    @property
    def host(self) -> str:
        return f"{PREFIX}-host"

    def peer(self, i: int) -> str:
        return f"{PREFIX}-p{i}"

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, self.host, *(self.peer(i) for i in range(self.peers))]

    def host_ip(self, net: str) -> str:
        return f"{net}.{HOST_OCTET}"

    def peer_ip(self, i: int, net: str = WAN_NET) -> str:
        return f"{net}.{PEER_OCTET0 + i}"

    def exec_prefix(self, namespace: str) -> list[str]:
        return ["ip", "netns", "exec", namespace]

    # ---- building and removing -------------------------------------------------------------------------------
    def create(self) -> None:
        self.destroy()  # leftovers of a bench that was killed before it could clean up
        for ns in self.namespaces:
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        for bridge in ("brwan", "brsvc"):
            _run("ip", "-n", self.switch, "link", "add", bridge, "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", bridge, "up")
        self._attach(self.host, "h", HOST_OCTET)
        for i in range(self.peers):
            self._attach(self.peer(i), f"p{i}", PEER_OCTET0 + i)

    def _attach(self, ns: str, tag: str, octet: int) -> None:
        for dev, bridge, net in (("eth0", "brwan", WAN_NET), ("eth1", "brsvc", SVC_NET)):
            outer = f"{tag}{dev[-1]}"  # e.g. p2 + 0: the switch's end of peer 2's wan link
            _run("ip", "-n", self.switch, "link", "add", outer, "type", "veth", "peer", "name", dev, "netns", ns)
            _run("ip", "-n", self.switch, "link", "set", outer, "master", bridge)
            _run("ip", "-n", self.switch, "link", "set", outer, "up")
            _run("ip", "-n", ns, "addr", "add", f"{net}.{octet}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")

    def shape(self, rate_bytes_per_s: float | None) -> None:
        """Shape every peer's wan link to `rate_bytes_per_s` each way (None: remove the shaping)."""
        for i in range(self.peers):
            for ns, dev in ((self.peer(i), "eth0"), (self.switch, f"p{i}0")):
                subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True,
                               timeout=CMD_TIMEOUT_S)
                if rate_bytes_per_s:
                    _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf_args(rate_bytes_per_s))

    def kill_processes(self) -> None:
        """SIGKILL whatever still runs inside the bench's namespaces (only processes this bench started live there)."""
        for ns in self.namespaces:
            done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
            for pid in done.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass

    def destroy(self) -> None:
        """Kill what runs inside, then delete the namespaces (which deletes their veths). Never raises."""
        try:
            self.kill_processes()
        except Exception:  # noqa: BLE001 - cleanup goes on
            pass
        time.sleep(0.2)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=CMD_TIMEOUT_S)

    # ---- counting --------------------------------------------------------------------------------------------
    def link_bytes(self, i: int) -> dict[str, dict[str, int]]:
        """{"wan": {"tx", "rx"}, "svc": {...}}: peer i's interface counters (from its own namespace)."""
        out = json.loads(_run("ip", "-n", self.peer(i), "-s", "-j", "link", "show"))
        by_dev = {entry["ifname"]: entry["stats64"] for entry in out}
        return {name: {"tx": int(by_dev[dev]["tx"]["bytes"]), "rx": int(by_dev[dev]["rx"]["bytes"])}
                for name, dev in (("wan", "eth0"), ("svc", "eth1"))}

    def all_link_bytes(self) -> list[dict[str, dict[str, int]]]:
        return [self.link_bytes(i) for i in range(self.peers)]


def bytes_between(before: list[dict], after: list[dict], link: str) -> int:
    """Bytes sent plus received on `link` by all peers between two all_link_bytes() readings."""
    return sum(a[link]["tx"] - b[link]["tx"] + a[link]["rx"] - b[link]["rx"] for b, a in zip(before, after))
