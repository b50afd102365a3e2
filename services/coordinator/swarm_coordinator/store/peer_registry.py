"""The store's peer registry: the peers table written through to the in-memory PeerTable (peers.py), and who may
act for a peer (the join token that registered it, rules.may_register / may_act_for)."""
from __future__ import annotations

import json
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert

from swarm_coordinator import db
from swarm_coordinator.errors import PeerNotRegistered, PeerOfAnotherToken
from swarm_coordinator.limits import check_peers_per_token
from swarm_coordinator.peers import PeerRecord, PeerTable
from swarm_coordinator.rules import may_act_for, may_register
from swarm_coordinator.store.connection import StoreConnection, Transaction


class PeerRegistry:
    def __init__(self, db_conn: StoreConnection, *, peer_ttl: float, peers_per_token: int = 64):
        self._db = db_conn
        self.peers_per_token = peers_per_token
        self.table = PeerTable(peer_ttl=peer_ttl)

    def load(self, conn: sa.Connection) -> None:
        for row in conn.execute(sa.select(db.peers)):
            self.table.load(row)

    def get(self, peer_id: str) -> PeerRecord | None:
        return self.table.get(peer_id)

    def require(self, peer_id: str, caller: str | None) -> PeerRecord:
        """The registered peer `caller` (its join token's hash) may act for; else the error that says why not."""
        peer = self.table.get(peer_id)
        if peer is None:
            raise PeerNotRegistered(f"peer {peer_id} is not registered: call RegisterPeer first")
        if not may_act_for(owner=peer.owner, caller=caller):
            raise PeerOfAnotherToken(f"peer {peer_id} was registered with another join token: use your own peer id")
        return peer

    def register(self, peer_id: str, *, now: float, name: str, multiaddrs: Sequence[str], client_mode: bool,
                 batch_size: int, caller: str | None) -> PeerRecord:
        """Add or update a peer; `caller` becomes its owner (rules.may_register)."""
        with self._db.lock:
            known = self.table.get(peer_id)
            if known is not None and not may_register(owner=known.owner, caller=caller, last_seen=known.last_seen,
                                                      now=now, peer_ttl=self.table.peer_ttl):
                raise PeerOfAnotherToken(f"peer id {peer_id} is in use by a live peer registered with another join "
                                         f"token: use your own peer id")
            if caller is not None:
                others = sum(1 for p in self.table.live(now=now) if p.owner == caller and p.peer_id != peer_id)
                check_peers_per_token(others, limit=self.peers_per_token)
            values = {"name": name, "multiaddrs": json.dumps(list(multiaddrs)), "client_mode": client_mode,
                      "batch_size": batch_size, "last_seen": now}
            if caller is not None:
                values["token_hash"] = caller
            stmt = insert(db.peers).values(peer_id=peer_id, first_seen=now, samples_contributed=0,
                                           chunks_contributed=0, global_epoch=0, finished=False,
                                           samples_per_s=0.0, **values)
            with self._db.transaction() as conn:
                conn.execute(stmt.on_conflict_do_update(index_elements=[db.peers.c.peer_id], set_=values))
            return self.table.register(peer_id, now=now, name=name, multiaddrs=tuple(multiaddrs),
                                       client_mode=client_mode, batch_size=batch_size, owner=caller)

    def heartbeat(self, tx: Transaction, peer: PeerRecord, *, now: float, global_epoch: int, loss: float | None,
                  samples_per_s: float, finished: bool) -> None:
        tx.execute(db.PEER_HEARTBEAT, (now, global_epoch, loss, samples_per_s, finished, peer.peer_id))
        tx.on_commit(lambda: self.table.heartbeat(peer, now=now, global_epoch=global_epoch, loss=loss,
                                                  samples_per_s=samples_per_s, finished=finished))

    def credit(self, tx: Transaction, peer: PeerRecord, *, samples: int) -> None:
        """A counted chunk of `samples` samples goes on the peer's record."""
        tx.execute(db.PEER_CONTRIBUTED, (samples, peer.peer_id))
        tx.on_commit(lambda: self.table.contributed(peer, samples=samples))
