"""Admission (issue 10): GetCredential turns a valid join token into a short-lived credential for one hivemind peer,
and the trust counters trainers report in their heartbeats become per-peer and per-token Prometheus metrics.

The token itself was checked by the interceptor (a revoked token never gets here); the credential binds the token's
name, the peer id and the peer's DHT key, and expires after `lifetime_s`, so a revoked token's peers drop out of the
swarm within one lifetime (every peer's DHT and averagers refuse an expired credential; swarm.trust).
"""
from __future__ import annotations

import secrets
import threading
import time

import sqlalchemy as sa
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from swarm.logs import get_logger
from swarm.trust.credentials import (
    CredentialError,
    issue_credential,
    load_or_create_signing_key,
    public_key_bytes,
    verify_credential,
)
from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator import db, rules
from swarm_coordinator.metrics import PEER_SERIES_CAP, PREFIX
from swarm_coordinator.rpc_handling import caller, rpc_handler

CREDENTIALS = Counter(f"{PREFIX}credentials_total", "Credentials asked for, by token name and outcome",
                      ["token", "outcome"])
VERDICTS = ("accepted", "clipped", "dropped", "refused")
logger = get_logger(__name__)


def random_run_id() -> str:
    """A run id nobody can guess (64 random bits): peers learn it only with their credential."""
    return f"swarm-{secrets.token_hex(8)}"


class AdmissionRpcs:
    """GetCredential. `max_weight` is the per-round weight cap written into every credential (0: none): the run's
    target batch size, since no single peer can honestly have accumulated more than the whole swarm's batch."""

    def __init__(self, *, db_path: str, signing_key_path: str, run_id: str, lifetime_s: float = 600.0,
                 max_weight=lambda: 0.0, clock=time.time):
        # Per peer and token; a live peer renews at half the lifetime, so two lifetimes of silence make it stale.
        self.book = CredentialBook(stale_after_s=2 * lifetime_s, clock=clock)
        self._key = load_or_create_signing_key(signing_key_path)
        self.public_key = public_key_bytes(self._key)
        self.run_id, self.lifetime_s, self._max_weight, self._clock = run_id, lifetime_s, max_weight, clock
        self._engine = db.make_engine(db_path, immediate=False)
        self._names: dict[str, str] = {}

    def close(self) -> None:
        self._engine.dispose()

    def _token_name(self, token_hash: str | None) -> str:
        if token_hash is None:
            raise rules.InvalidRequest("no join token in the call's metadata")
        name = self._names.get(token_hash)
        if name is None:
            with self._engine.connect() as conn:
                name = conn.execute(sa.select(db.tokens.c.name).where(db.tokens.c.token_hash == token_hash)).scalar()
            if name is None:
                raise rules.InvalidRequest("the join token is not known")
            self._names[token_hash] = name
        return name

    @rpc_handler("GetCredential")
    def GetCredential(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        token = self._token_name(caller(context))
        try:
            peer_id = rules.check_peer_id(request.peer_id)
            wire = issue_credential(self._key, token_name=token, peer_id=peer_id,
                                    dht_public_key=request.dht_public_key, lifetime_s=self.lifetime_s,
                                    max_weight=float(self._max_weight() or 0.0), now=self._clock())
        except (CredentialError, rules.InvalidRequest) as e:
            CREDENTIALS.labels(token, "refused").inc()
            self.book.count(request.peer_id, token, "refused")
            raise rules.InvalidRequest(str(e)) from e
        CREDENTIALS.labels(token, "issued").inc()
        self.book.count(peer_id, token, "issued")
        credential = verify_credential(wire, self.public_key, now=self._clock())
        return pb.GetCredentialResponse(credential=wire, coordinator_public_key=self.public_key, run_id=self.run_id,
                                        expires_at_unix=credential.expires_at)


class CredentialBook:
    """Credentials issued and refused per (peer id, token name), counted by GetCredential; a Prometheus collector.

    Cardinality is bounded as for the per-peer progress metrics: `swarm_coordinator_peer_credentials{peer, token,
    outcome}` has series only for pairs that asked within `stale_after_s`, at most `series_cap` of them (most refused
    first). Memory is bounded too: past `max_entries` the pair asked longest ago is forgotten. A peer id that is not
    a valid libp2p id is counted as "(invalid)", so garbage cannot mint label values. (Per token alone:
    `swarm_coordinator_credentials_total{token, outcome}`.)
    """

    def __init__(self, *, stale_after_s: float = 1200.0, series_cap: int = PEER_SERIES_CAP,
                 max_entries: int = 10_000, clock=time.time):
        self._counts: dict[tuple[str, str], list] = {}  # (peer, token) -> [issued, refused, last asked]
        self._lock = threading.Lock()
        self.stale_after_s, self.series_cap, self._clock = stale_after_s, series_cap, clock
        self.max_entries = max_entries

    def count(self, peer_id: str, token: str, outcome: str) -> None:
        try:
            peer = rules.check_peer_id(peer_id)
        except rules.InvalidRequest:
            peer = "(invalid)"
        with self._lock:
            row = self._counts.get((peer, token))
            if row is None:
                if len(self._counts) >= self.max_entries:
                    del self._counts[min(self._counts, key=lambda key: self._counts[key][2])]
                row = self._counts[(peer, token)] = [0, 0, 0.0]
            row[0 if outcome == "issued" else 1] += 1
            row[2] = self._clock()

    def rows(self, *, recent_only: bool = False) -> list[tuple[str, str, int, int]]:
        """(peer, token, issued, refused), most refused first, then most issued; recent_only: the exported series."""
        since = self._clock() - self.stale_after_s
        with self._lock:
            rows = [(peer, token, issued, refused) for (peer, token), (issued, refused, last) in self._counts.items()
                    if not recent_only or last >= since]
        rows.sort(key=lambda row: (-row[3], -row[2], row[0], row[1]))
        return rows[:self.series_cap] if recent_only else rows

    def messages(self) -> list[pb.CredentialCount]:
        """Every pair as CredentialCount messages (GetProgress, `swarm status`), most refused first."""
        return [pb.CredentialCount(peer_id=peer, token_name=token, issued=issued, refused=refused)
                for peer, token, issued, refused in self.rows()]

    def describe(self):
        return []

    def collect(self):
        family = CounterMetricFamily(f"{PREFIX}peer_credentials", "Credentials GetCredential issued and refused, by "
                                     "peer, token and outcome (peers that asked recently, capped)",
                                     labels=["peer", "token", "outcome"])
        for peer, token, issued, refused in self.rows(recent_only=True):
            family.add_metric([peer, token, "issued"], issued)
            family.add_metric([peer, token, "refused"], refused)
        yield family


class ContributionBook:
    """The latest cumulative counts each trainer reported about each groupmate; summed over reporters on scrape.

    A Prometheus collector: `swarm_coordinator_contributions{peer, token, verdict}` says how many of that peer's
    contributions its groupmates accepted, clipped, dropped, or refused outright (no valid credential, banned).
    """

    def __init__(self, *, max_reporters: int = 10_000):
        self._latest: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
        self._lock, self._max_reporters = threading.Lock(), max_reporters

    def record(self, reporter: str, contributions) -> None:
        rows = {}
        for c in contributions:
            counts = (c.accepted, c.clipped, c.dropped, c.refused)
            if not c.peer_id or any(n < 0 for n in counts):
                raise rules.InvalidRequest("contributions need a peer_id and counts >= 0")
            rows[c.peer_id[:128]] = (c.token_name[:64], counts)
        with self._lock:
            if reporter not in self._latest and len(self._latest) >= self._max_reporters:
                return
            self._latest[reporter] = rows

    def totals(self) -> dict[tuple[str, str], dict[str, int]]:
        """{(peer id, token name): {verdict: count summed over reporters}}."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        with self._lock:
            reports = [dict(rows) for rows in self._latest.values()]
        for rows in reports:
            for peer, (token, counts) in rows.items():
                into = out.setdefault((peer, token), dict.fromkeys(VERDICTS, 0))
                for verdict, n in zip(VERDICTS, counts):
                    into[verdict] += n
        return out

    def messages(self) -> list[pb.Contribution]:
        """The totals as Contribution messages (GetProgress, `swarm status`), most dropped first."""
        rows = sorted(self.totals().items(), key=lambda item: (-item[1]["dropped"], -item[1]["clipped"], item[0]))
        return [pb.Contribution(peer_id=peer, token_name=token, **counts) for (peer, token), counts in rows]

    def describe(self):
        return []

    def collect(self):
        family = GaugeMetricFamily(f"{PREFIX}contributions", "Contributions of a peer as judged by its groupmates "
                                   "(summed over reporters), by peer, token and verdict", labels=["peer", "token",
                                                                                                  "verdict"])
        for (peer, token), counts in self.totals().items():
            for verdict, n in counts.items():
                family.add_metric([peer, token, verdict], n)
        yield family


class RevocationWatch:
    """An upkeep task: the leases of every live peer registered with a revoked token are released at once (the
    token check already refuses its heartbeats and renewals; this gives its chunks back without waiting for the lease
    TTL). Revocation happens in the database (`swarm token revoke`), so it is polled; each pass is one small query."""

    def __init__(self, store, *, db_path: str):
        self.store = store
        self._engine = db.make_engine(db_path, immediate=False)

    def close(self) -> None:
        self._engine.dispose()

    def __call__(self) -> int:
        with self._engine.connect() as conn:
            revoked = {row.token_hash: row.name for row in conn.execute(
                sa.select(db.tokens.c.token_hash, db.tokens.c.name).where(db.tokens.c.revoked.is_not(None)))}
        released = 0
        for peer in self.store.live_peers():
            if peer.owner in revoked:
                n = self.store.release(peer.peer_id, caller=peer.owner)
                if n:
                    logger.info(f"token {revoked[peer.owner]!r} was revoked: released {n} lease(s) of peer "
                                f"{peer.peer_id}")
                released += n
        return released
