"""Two real trainer processes (one in client mode) average through hivemind on loopback and end up equal."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

PEER_SCRIPT = Path(__file__).with_name("hivemind_peer.py")


def _wait_for(predicate, *, timeout: float, procs) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in procs:
            if proc.poll() is not None and proc.returncode != 0:
                raise AssertionError(f"peer exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("peers did not get there in time")
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_two_peers_reach_same_epoch_with_equal_parameters(tmp_path):
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("a", "b")}
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), "--workdir", str(tmp_path), "--name", "a", "--other", "b",
             "--epochs", "3", "--image-seed", "1"], stdout=logs["a"], stderr=subprocess.STDOUT))
        _wait_for((tmp_path / "a.maddrs.json").exists, timeout=120, procs=procs)
        assert json.loads((tmp_path / "a.maddrs.json").read_text()), "a non-client peer announces its addresses"
        procs.append(subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), "--workdir", str(tmp_path), "--name", "b", "--other", "a",
             "--epochs", "3", "--image-seed", "2", "--client-mode",
             "--initial-peers-file", str(tmp_path / "a.maddrs.json")], stdout=logs["b"], stderr=subprocess.STDOUT))
        for proc in procs:
            proc.wait(timeout=240)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for f in logs.values():
            f.close()
    for name, proc in zip(("a", "b"), procs):
        assert proc.returncode == 0, f"peer {name} failed:\n" + (tmp_path / f"{name}.log").read_text()[-4000:]

    a = torch.load(tmp_path / "a.result.pt")
    b = torch.load(tmp_path / "b.result.pt")
    # The client-mode flag reached both the DHT and the optimizer.
    assert (a["dht_client_mode"], a["optimizer_client_mode"]) == (False, False)
    assert (b["dht_client_mode"], b["optimizer_client_mode"]) == (True, True)
    assert a["epoch"] == b["epoch"] >= 3
    assert max(a["max_peers"], b["max_peers"]) == 2, "the peers never trained in the same epoch"
    # Alone, a peer needs target_batch_size (16) local steps per epoch; together they shared the work.
    assert min(a["steps"], b["steps"]) < 16 * a["epoch"], (a["steps"], b["steps"])
    assert a["sync"] == "anchor" and b["sync"] in ("matched", "downloaded"), (a["sync"], b["sync"])
    torch.testing.assert_close(a["params"], b["params"], rtol=0, atol=1e-5)
    # They trained: parameters moved away from the identical seeded start.
    from swarm_trainer.model import build_tiny

    start = torch.cat([p.detach().reshape(-1) for p in build_tiny(seed=42).unet.parameters()])
    assert (a["params"] - start).abs().max() > 1e-4
