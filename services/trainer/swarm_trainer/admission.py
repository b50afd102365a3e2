"""The trainer's admission (issue 10): a credential from the coordinator before the DHT starts, renewed in the
background, published in the DHT for the other peers' averagers to check; trust counters for heartbeats and metrics.

Order matters: the credential binds the peer id, so the libp2p identity is made first (a key file in the output
folder: a restarted trainer keeps its peer id), then the credential is fetched, then the DHT starts with that
identity and the credential authorizer. The renewal loop refreshes the credential file at half its lifetime; the DHT
(a forked process) reads that file whenever its current credential nears expiry.

Weight budgets (swarm.trust.budget): once per heartbeat interval a thread asks the coordinator's ListPeers what each
peer was credited and holds in leases, and writes it to `weight-budgets.json` in the output folder; this peer's
guarded averagers (hivemind's forked processes) read it and cap every sender's claim by what is left of it. When the
coordinator cannot be reached the budgets age out and the averagers fall back to the per-round caps (logged once
here, once per averager there).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from prometheus_client import Gauge

from swarm.logs import get_logger
from swarm.trust.admission import TrustSettings, publish_credential
from swarm.trust.budget import budget_slack, budgets_from_peers, write_budgets
from swarm.trust.dht_auth import CredentialAuthorizer, CredentialFile, load_or_create_identity
from swarm.v1 import coordinator_pb2 as pb

logger = get_logger(__name__)

CONTRIBUTIONS = Gauge("swarm_trainer_contributions", "Groupmates' contributions as this peer's averagers judged "
                      "them (cumulative), by peer, token and verdict", ["peer", "token", "verdict"])
VERDICTS = ("accepted", "clipped", "dropped", "refused")
RETRY_S = 10.0


class Admission:
    """This trainer's credential: `obtain()` before the DHT, `start(dht)` after it, `stop()` when leaving."""

    def __init__(self, client, *, output_dir: str | Path, identity_path: str | None = None,
                 stop: threading.Event | None = None):
        self.client = client
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.identity_path = str(identity_path or output_dir / "peer.identity")
        self.credential_path = output_dir / "credential"
        self.budgets_path = output_dir / "weight-budgets.json"
        self._stop = stop or threading.Event()
        self._thread: threading.Thread | None = None
        self.settings: TrustSettings | None = None
        self.expires_at = 0.0

    def obtain(self) -> TrustSettings:
        """Make (or load) the identity and fetch the first credential; returns the swarm's trust settings."""
        self.peer_id, self._rsa_key = load_or_create_identity(self.identity_path)
        answer = self._fetch()
        self.settings = TrustSettings(run_id=answer.run_id, coordinator_public_key=answer.coordinator_public_key,
                                      budgets_path=str(self.budgets_path))
        logger.info(f"credential for peer {self.peer_id} valid for {self.expires_at - time.time():.0f} s")
        return self.settings

    def authorizer(self) -> CredentialAuthorizer:
        return CredentialAuthorizer(coordinator_public_key=self.settings.coordinator_public_key,
                                    credential_source=CredentialFile(self.credential_path),
                                    local_private_key=self._rsa_key)

    def _fetch(self) -> pb.GetCredentialResponse:
        answer = self.client.get_credential(peer_id=self.peer_id,
                                            dht_public_key=self._rsa_key.get_public_key().to_bytes())
        CredentialFile.write(self.credential_path, answer.credential)
        self.expires_at = answer.expires_at_unix
        return answer

    def start(self, dht) -> None:
        """Publish the credential in the DHT and keep renewing it (at half its remaining lifetime)."""
        self.dht = dht
        publish_credential(dht, self.settings, self.credential_path.read_text())
        self._thread = threading.Thread(target=self._renew_loop, name="credential-renewal", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(1.0, (self.expires_at - time.time()) / 2)):
            try:
                self._fetch()
                publish_credential(self.dht, self.settings, self.credential_path.read_text())
            except Exception as e:  # noqa: BLE001 - keep trying; a revoked token ends with the credential expiring
                logger.warning(f"credential renewal failed: {e!r}; retrying in {RETRY_S:.0f} s "
                               f"(the current one expires in {self.expires_at - time.time():.0f} s)")
                if self._stop.wait(RETRY_S):
                    return

    def start_budgets(self, run, *, interval: float) -> None:
        """Refresh the weight budgets file every `interval` seconds; `run` (a PeerRun) gives the config (read at each
        pass, so a new config version is picked up)."""
        self._budget_thread = threading.Thread(target=self._budget_loop, args=(run, interval), name="weight-budgets",
                                               daemon=True)
        self._budget_thread.start()

    def _budget_loop(self, run, interval: float) -> None:
        failing, delay = False, 0.0  # the first at once: the averagers start capping from their first round
        while not self._stop.wait(delay):
            delay = interval
            try:
                budgets = budgets_from_peers(self.client.list_peers().peers, fetched_at=time.time(),
                                             slack=budget_slack(target_batch_size=run.config.target_batch_size,
                                                                chunk_size=run.config.chunk_size),
                                             heartbeat_interval_s=interval)
                write_budgets(self.budgets_path, budgets)
            except Exception as e:  # noqa: BLE001 - retried next interval; the averagers age the old budgets out
                if not failing:
                    logger.warning(f"could not refresh the weight budgets from the coordinator ({e!r}); once the last "
                                   f"ones are a few heartbeats old, claims are capped per round only")
                failing = True
            else:
                if failing:
                    logger.info("weight budgets from the coordinator again")
                failing = False

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, getattr(self, "_budget_thread", None)):
            if thread is not None:
                thread.join(timeout=5)



def contributions(stats: dict[str, dict]) -> list[pb.Contribution]:
    """Heartbeat messages (and trainer gauges) from an optimizer's `trust_stats()`."""
    out = []
    for peer, counts in stats.items():
        for verdict in VERDICTS:
            CONTRIBUTIONS.labels(peer, counts.get("token", ""), verdict).set(counts.get(verdict, 0))
        out.append(pb.Contribution(peer_id=peer, token_name=counts.get("token", ""),
                                   **{verdict: int(counts.get(verdict, 0)) for verdict in VERDICTS}))
    return out
