import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from swarm_launcher.processes import start_service

KEY = Path(__file__).parent.parent / "data" / "bootstrap.key"
# The peer ID that tests/data/bootstrap.key encodes: a committed key gives a deterministic peer ID.
EXPECTED_PEER_ID = "QmQJ3KMfh8TfJqZcRrZqrNvfLZYncAXotU4LCB4DrtYVpG"


def _start(tmp_path, processes, name="bootstrap"):
    proc = start_service(name, ["bootstrap-dht", "--identity-path", str(tmp_path / "id" / "bootstrap.key"),
                                "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--metrics-port", "0",
                                "--refresh-period", "1"], workdir=tmp_path)
    processes.append(proc)
    return proc, proc.wait_ready(timeout=60)


@pytest.mark.timeout(120)
def test_peer_id_survives_restart_and_peers_can_join(tmp_path, processes):
    (tmp_path / "id").mkdir()
    shutil.copy(KEY, tmp_path / "id" / "bootstrap.key")
    proc, info = _start(tmp_path, processes)
    assert info["peer_id"] == EXPECTED_PEER_ID
    assert info["multiaddrs"] and all(m.endswith(f"/p2p/{EXPECTED_PEER_ID}") for m in info["multiaddrs"])

    served = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{info['metrics_port']}/multiaddrs", timeout=5).read())
    assert served == {"peer_id": EXPECTED_PEER_ID, "multiaddrs": info["multiaddrs"]}
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{info['metrics_port']}/metrics", timeout=5).read().decode()
    assert "swarm_bootstrap_dht_routing_table_peers" in metrics

    import hivemind
    from hivemind.utils import get_dht_time
    # A client-mode peer (no inbound port) joins through the bootstrap node and shares a value with a second peer.
    first = hivemind.DHT(initial_peers=info["multiaddrs"], client_mode=True, start=True)
    second = hivemind.DHT(initial_peers=info["multiaddrs"], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        assert first.store("greeting", "hello", expiration_time=get_dht_time() + 60)
        found = second.get("greeting", latest=True)
        assert found is not None and found.value == "hello"
    finally:
        first.shutdown()
        second.shutdown()

    assert proc.stop() == 0
    _, info_again = _start(tmp_path, processes, name="bootstrap-again")
    assert info_again["peer_id"] == EXPECTED_PEER_ID


def test_new_identity_is_created_and_kept(tmp_path, processes):
    proc, info = _start(tmp_path, processes)
    assert (tmp_path / "id" / "bootstrap.key").is_file()
    proc.stop()
    _, again = _start(tmp_path, processes, name="bootstrap-again")
    assert again["peer_id"] == info["peer_id"] != EXPECTED_PEER_ID


def test_directory_as_identity_path_is_refused(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "swarm_launcher", "bootstrap-dht", "--identity-path", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "is a directory" in out.stderr


@pytest.mark.parametrize("changes, words", [({"metrics_port": 70000}, "metrics port"),
                                            ({"refresh_period": 0}, "refresh period must be > 0")])
def test_settings_refuse_what_cannot_run(changes, words):
    from swarm_bootstrap_dht.node import BootstrapSettings

    with pytest.raises(ValueError, match=words):
        BootstrapSettings(**changes)


@pytest.mark.timeout(120)
def test_start_in_process_serves_multiaddrs_and_stops(tmp_path):
    from swarm_bootstrap_dht.node import BootstrapSettings, start

    node = start(BootstrapSettings(identity_path=str(tmp_path / "bootstrap.key"), host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                                   metrics_port=0, refresh_period=0.2))
    try:
        served = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/multiaddrs",
                                                   timeout=5).read())
        assert served == {"peer_id": node.peer_id, "multiaddrs": node.multiaddrs} and node.multiaddrs
    finally:
        node.stop()
    node.stop()  # a second stop is a no-op
    assert not node.dht.is_alive()
