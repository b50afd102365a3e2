"""Credentialed hivemind peers on loopback for the trust tests: a coordinator key, DHTs with the credential
authorizer, and a toy least-squares problem whose gradients are averaged by real hivemind averagers."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hivemind
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.dht_process import SwarmDHT
from swarm.trust.admission import TrustSettings, publish_credential
from swarm.trust.credentials import issue_credential, public_key_bytes
from swarm.trust.dht_auth import CredentialAuthorizer, CredentialFile, load_or_create_identity

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@dataclass
class Peer:
    name: str
    dht: hivemind.DHT
    credential_path: Path


class Coordinator:
    """The signing half of the coordinator: enough to hand out credentials in tests of the averaging layer."""

    def __init__(self, workdir: Path, run_id: str = "trusttest"):
        self.workdir, self.key = workdir, Ed25519PrivateKey.generate()
        self.settings = TrustSettings(run_id=run_id, coordinator_public_key=public_key_bytes(self.key),
                                      refusal_cache_s=0.2)

    def start_peer(self, name: str, initial_peers: list[str], *, lifetime_s: float = 600.0,
                   max_weight: float = 0.0) -> Peer:
        identity = self.workdir / f"{name}.identity"
        peer_id, rsa_key = load_or_create_identity(identity)
        credential_path = self.workdir / f"{name}.credential"
        CredentialFile.write(credential_path, issue_credential(
            self.key, token_name=f"token-{name}", peer_id=peer_id, dht_public_key=rsa_key.get_public_key().to_bytes(),
            lifetime_s=lifetime_s, max_weight=max_weight))
        authorizer = CredentialAuthorizer(coordinator_public_key=self.settings.coordinator_public_key,
                                          credential_source=CredentialFile(credential_path), local_private_key=rsa_key)
        dht = SwarmDHT(initial_peers=initial_peers, host_maddrs=LOOPBACK, identity_path=str(identity),
                       check_if_identity_free=False, authorizer=authorizer, start=True)
        assert publish_credential(dht, self.settings, credential_path.read_text())
        return Peer(name, dht, credential_path)


def maddrs(peer: Peer) -> list[str]:
    return [str(m) for m in peer.dht.get_visible_maddrs()]


# --- a toy problem: least squares, each peer with its own data, gradients averaged by the swarm ---

DIM = 512


def problem(seed: int, rows: int = 1024):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(DIM, generator=torch.Generator().manual_seed(12345))
    x = torch.randn(rows, DIM, generator=g) / math.sqrt(DIM)
    return x, x @ truth + 0.01 * torch.randn(rows, generator=g)


def gradient(w, data):
    x, y = data
    return x.T @ (x @ w - y) / x.shape[0] * DIM / 4


def loss(w, data):
    x, y = data
    return float(((x @ w - y) ** 2).mean())


def attacked(grad: torch.Tensor, attack: str) -> torch.Tensor:
    if attack == "nan":
        return torch.full_like(grad, math.nan)
    if attack == "inf":
        return torch.full_like(grad, math.inf)
    if attack == "x1e6":
        return grad * 1e6
    if attack == "flip_x10":
        return -10 * grad
    return grad


def averaging_round(averagers, grads, *, timeout: float = 8.0):
    """One all-reduce over every averager at once; returns each one's averaged tensor (None where it failed)."""
    for averager, grad in zip(averagers, grads):
        with averager.get_tensors() as tensors:
            tensors[0].copy_(grad)

    def run(averager):
        try:
            averager.step(timeout=timeout)
        except Exception:  # noqa: BLE001 - a failed round is reported as None, the test decides
            return None
        with averager.get_tensors() as tensors:
            return tensors[0].clone()

    with ThreadPoolExecutor(len(averagers)) as pool:
        return list(pool.map(run, averagers))
