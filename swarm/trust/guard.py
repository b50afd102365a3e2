"""The guard for hivemind averagers: only credentialed peers join, send parts or download state; parts are combined
robustly; a downloaded state is checked before use.

THE interface (the sync backend and the DiLoCo averager both use it):

    from swarm.trust import TrustSettings, averager_class, optimizer_class
    cls = averager_class(hivemind.averaging.DecentralizedAverager, settings)  # or GradientAverager, your subclass
    averager = cls(tensors, dht=dht, prefix=..., start=True, ...)               # same arguments as the base class
    optimizer = optimizer_class(settings)(dht=dht, run_id=..., ...)            # hivemind.Optimizer, both averagers
    averager.trust_stats()  # {peer_id: {"token": name, "accepted": n, "clipped": n, "dropped": n, "refused": n,
                            #            "weight": total weight accepted}}

With `settings.enabled` False (or settings None) these return hivemind's own classes, untouched.

What the guard does, in the averager's own process (hivemind 1.1.12 runs each averager as a forked process):
- `rpc_join_group`, `rpc_aggregate_part`, `rpc_download_state`: the caller's peer id (authenticated by libp2p) must
  have a valid credential (see admission.py), else the request is refused (NOT_LOOKING_FOR_GROUP / PROTOCOL_VIOLATION
  / no state) and counted as "refused" for that peer.
- a peer whose contribution is dropped (see robust.py and reducer.py) is banned by this peer for `ban_s`: it is
  not accepted as a follower or followed as a leader, and when another peer's group still includes it, its parts
  and its answers are ignored (the round goes on for the honest peers).
- matchmaking never asks a peer without a credential (or a banned one) to lead its group;
- before an all-reduce, every groupmate must hold a credential (a credentialed leader cannot smuggle an outsider in);
  the all-reduce runs `RobustAllReduceRunner`, with each sender's weight capped by its credential's `max_weight` and
  by what is left of its weight budget (swarm.trust.budget; the trainer refreshes the file
  `settings.budgets_path` every heartbeat; without fresh budgets only the per-round caps apply).
- a downloaded state must come from a credentialed peer, be finite, and be within `max_state_distance` x the local
  norm of the local copy; otherwise the next peer is tried (download.py, which also lets the averager turn a state
  down by its metadata before the tensors come).
The guarded class keeps its base class's name: hivemind derives RPC handle names from the class name, so guarded and
plain peers stay wire-compatible (an outsider running plain hivemind reaches our handlers and is refused there).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import AsyncIterator, Optional

from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.control import AveragingStage  # noqa: F401 - re-exported for subclasses' convenience
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.matchmaking import Matchmaking, MatchmakingException
from hivemind.optim import Optimizer
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import MPFuture, get_dht_time
from hivemind.utils.asyncio import as_aiter, azip

from swarm.logs import get_logger
from swarm.trust.admission import AdmissionCache, TrustSettings
from swarm.trust.budget import BudgetFile, WeightBudgets, WeightLedger
from swarm.trust.download import GuardedStateDownload
from swarm.trust.reducer import RobustAllReduceRunner
from swarm.trust.robust import ACCEPTED, CLIPPED, DROPPED, OUTLIER

logger = get_logger(__name__)
REFUSED = "refused"
COUNTERS = (ACCEPTED, CLIPPED, DROPPED, REFUSED)


class AveragerGuard(GuardedStateDownload):
    """Mixin placed before a DecentralizedAverager subclass (see `averager_class`). Takes `trust=TrustSettings`."""

    def __init__(self, *args, trust: TrustSettings, **kwargs):
        # Set before the base __init__: with start=True it forks the averager process, which must inherit these.
        self._trust = trust
        self._admission = AdmissionCache(trust)
        self._trust_counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
        self._trust_tokens: dict[str, str] = {}
        self._banned_until: dict[str, float] = {}
        self._weight_ledger, self._budgets_were_fresh = WeightLedger(), None
        self._budget_file = BudgetFile(trust.budgets_path) if trust.budgets_path else None
        super().__init__(*args, **kwargs)

    # hivemind creates its Matchmaking inside the averager process with no hook; this setter makes it a guarded one.
    @property
    def _matchmaking(self):
        return self.__dict__["_matchmaking"]

    @_matchmaking.setter
    def _matchmaking(self, matchmaking):
        matchmaking.__class__ = GuardedMatchmaking
        matchmaking.guard = self
        self.__dict__["_matchmaking"] = matchmaking

    # --- stats (counted in the averager process, read from the trainer's) ---

    def trust_stats(self, timeout: float = 5.0) -> dict[str, dict]:
        """{peer id: {"token": token name or "", accepted, clipped, dropped, refused}} as counted by this peer."""
        future = MPFuture()
        self._outer_pipe.send(("_get_trust_stats", [], dict(future=future)))
        return future.result(timeout=timeout)

    async def _get_trust_stats(self, future: MPFuture):
        future.set_result({peer: dict(counts, token=self._trust_tokens.get(peer, ""),
                                      weight=self._weight_ledger.accepted.get(peer, 0.0))
                           for peer, counts in self._trust_counts.items()})

    def _fresh_weight_budgets(self) -> WeightBudgets | None:
        """The budgets to cap claims with, or None (none written yet, or stale: logged once per change)."""
        budgets = self._budget_file.load() if self._budget_file is not None else None
        fresh = budgets is not None and budgets.fresh()
        if budgets is not None and fresh != self._budgets_were_fresh:
            logger.log(logging.INFO if fresh else logging.WARNING,
                       f"{self.prefix}: claims capped by the coordinator's weight budgets" if fresh else
                       f"{self.prefix}: weight budgets are {time.time() - budgets.fetched_at:.0f} s old (coordinator "
                       f"unreachable?): capping claims by the credential and the round's median only")
            self._budgets_were_fresh = fresh
        return budgets if fresh else None

    def _count(self, peer: PeerID, what: str, n: int = 1) -> None:
        self._trust_counts[peer.to_base58()][what] += n

    def _ban(self, peer: PeerID) -> None:
        if peer != self.peer_id and self._trust.ban_s > 0:
            self._banned_until[peer.to_base58()] = time.time() + self._trust.ban_s
            logger.warning(f"{self.prefix}: leaving {peer} out of averaging for {self._trust.ban_s:.0f}s")

    def _is_banned(self, peer: PeerID) -> bool:
        return self._banned_until.get(peer.to_base58(), 0.0) > time.time()

    async def _admitted(self, peer: PeerID, *, allow_banned: bool = False) -> bool:
        """Whether `peer` may average with us now: it holds a valid credential (and is not banned)."""
        if peer == self.peer_id:
            return True
        if not allow_banned and self._is_banned(peer):
            return False
        if not self.__dict__.get("_credential_refresher"):
            # Started lazily, in the averager's own event loop (the process hivemind forks has no hook at start).
            self._credential_refresher = asyncio.create_task(self._refresh_credentials_periodically())
        credential = await self._admission.credential_of(self.dht, peer.to_base58())
        if credential is not None:
            self._trust_tokens[peer.to_base58()] = credential.token_name
        return credential is not None

    async def _refresh_credentials_periodically(self, period: float = 20.0):
        while True:
            try:
                await self._admission.refresh(self.dht)
            except Exception as e:  # noqa: BLE001 - the next pass tries again
                logger.warning(f"credential refresh failed: {e!r}")
            await asyncio.sleep(period)

    # --- RPCs served to other peers ---

    async def rpc_join_group(self, request: averaging_pb2.JoinRequest, context: P2PContext
                             ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        if not await self._admitted(context.remote_id):
            self._count(context.remote_id, REFUSED)
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.NOT_LOOKING_FOR_GROUP)
            return
        async for message in super().rpc_join_group(request, context):
            yield message

    async def rpc_aggregate_part(self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
                                 ) -> AsyncIterator[averaging_pb2.AveragingData]:
        if not await self._admitted(context.remote_id):
            self._count(context.remote_id, REFUSED)
            yield averaging_pb2.AveragingData(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for message in super().rpc_aggregate_part(stream, context):
            yield message

    async def rpc_download_state(self, request: averaging_pb2.DownloadRequest, context: P2PContext
                                 ) -> AsyncIterator[averaging_pb2.DownloadData]:
        if not await self._admitted(context.remote_id):
            self._count(context.remote_id, REFUSED)
            return  # hivemind's client then tries the next peer
        async for message in super().rpc_download_state(request, context):
            yield message

    # --- all-reduce ---

    async def _aggregate_with_group(self, group_info: GroupInfo, min_vector_size: int, **kwargs):
        for peer in group_info.peer_ids:  # a banned peer is let in (others may not have banned it) but ignored
            if not await self._admitted(peer, allow_banned=True):
                self._count(peer, REFUSED)
                raise MatchmakingException(f"group {group_info.group_id.hex()[:8]} includes {peer}, which holds no "
                                           f"valid credential: not averaging with it")
        return await super()._aggregate_with_group(group_info, min_vector_size, **kwargs)

    async def _run_allreduce_inplace_(self, tensors, group_info: GroupInfo, group_id: Optional[bytes] = None,
                                      **kwargs):
        """hivemind's method with RobustAllReduceRunner and weight caps from the groupmates' credentials."""
        group_id = group_info.group_id if group_id is None else group_id
        caps = {}
        for peer in group_info.peer_ids:
            credential = self._admission.cached(peer.to_base58())
            if credential is not None and credential.max_weight > 0:
                caps[peer] = credential.max_weight
        excluded = {peer for peer in group_info.peer_ids if self._is_banned(peer)}
        # A base averager may change what its all-reduce sends (DiLoCo's averages-not-differences): build on it.
        runner_class = getattr(self, "allreduce_runner_class", lambda base: base)(RobustAllReduceRunner)
        runner = runner_class(rules=self._trust.rules, weight_caps=caps, excluded=excluded, p2p=self._p2p,
                              ledger=self._weight_ledger, budgets=self._fresh_weight_budgets(),
                              servicer_type=type(self), prefix=self.prefix, tensors=tensors,
                              group_id=group_id, ordered_peer_ids=group_info.peer_ids, **kwargs)
        try:
            await apply_allreduce(self, runner, tensors=tensors, group_info=group_info, group_id=group_id)
        finally:
            for peer, budget in runner.budget_cuts().items():  # an honest peer is never cut in a normal run
                logger.warning(f"{self.prefix}: cut the weight {peer} (token "
                               f"{self._trust_tokens.get(peer.to_base58(), '?')!r}) claimed to its remaining budget "
                               f"{budget:.0f} (samples the coordinator credited and leased it, less what was accepted)")
            for peer in runner.unused_answers():
                self._count(peer, CLIPPED)
                logger.info(f"{self.prefix}: did not use the averaged slice {peer} sent back (token "
                            f"{self._trust_tokens.get(peer.to_base58(), '?')!r}): it points against ours or is much "
                            f"longer; used this peer's own part")
            for peer in runner.refused_answers():
                # A garbage answer (non-finite or 10x too long) bans like a garbage part: otherwise the same peer
                # would reduce a slice for us again next round.
                self._count(peer, DROPPED)
                self._ban(peer)
                logger.warning(f"{self.prefix}: refused the averaged slice {peer} sent back (token "
                               f"{self._trust_tokens.get(peer.to_base58(), '?')!r}); used this peer's own part")
            for peer, verdict in runner.verdicts_by_peer().items():
                if verdict == DROPPED:
                    self._ban(peer)
                verdict = DROPPED if verdict == OUTLIER else verdict
                self._count(peer, verdict)
                if verdict != ACCEPTED:  # clipping happens to honest peers too: only a drop is worth a warning
                    logger.log(logging.WARNING if verdict == DROPPED else logging.INFO,
                               f"{self.prefix}: {verdict} the contribution of {peer} "
                               f"(token {self._trust_tokens.get(peer.to_base58(), 'this peer')!r})")


class GuardedMatchmaking(Matchmaking):
    """hivemind's Matchmaking that never asks a peer without a valid credential (or a banned one) to lead it."""

    guard: AveragerGuard

    async def _request_join_group(self, leader: PeerID) -> Optional[GroupInfo]:
        if not await self.guard._admitted(leader):
            logger.debug(f"not following {leader}: no valid credential or banned")
            return None
        return await super()._request_join_group(leader)


async def apply_allreduce(averager, runner, *, tensors, group_info: GroupInfo, group_id: bytes) -> None:
    """The tail of hivemind's `_run_allreduce_inplace_` for a runner built elsewhere: register it for the group and
    add its updates to `tensors` (an aux peer receives none)."""
    assert group_id in averager._running_groups, f"Group id {group_id} was not registered in _register_allreduce_group"
    averager._running_groups[group_id].set_result(runner)
    if runner.modes[group_info.peer_ids.index(averager.peer_id)] != _aux_mode():
        async for tensor, update in azip(as_aiter(*tensors), runner):
            tensor.add_(update, alpha=averager._averaging_alpha)
            averager.last_updated = get_dht_time()
            averager._state_updated.set()
    else:
        async for _ in runner:
            raise ValueError("aux peers should not receive averaged tensors")


def _aux_mode():
    from hivemind.averaging.allreduce import AveragingMode

    return AveragingMode.AUX


_GUARDED: dict[type, type] = {}


def averager_class(base: type, settings: TrustSettings | None) -> type:
    """`base` (a DecentralizedAverager subclass) with the guard, taking the same arguments; `base` itself when the
    checks are off. Bind settings with functools.partial(cls, trust=settings) or pass trust= at construction."""
    if settings is None or not settings.enabled:
        return base
    if not issubclass(base, DecentralizedAverager):
        raise TypeError(f"{base.__name__} is not a hivemind DecentralizedAverager subclass")
    if base not in _GUARDED:
        # Same __name__ (and qualname) as the base: hivemind's RPC handle names come from the class name.
        _GUARDED[base] = type(base.__name__, (AveragerGuard, base), {"__qualname__": base.__qualname__,
                                                                    "__module__": __name__})
    return _GUARDED[base]


def optimizer_class(settings: TrustSettings | None) -> type:
    """hivemind.Optimizer whose gradient and state averagers are guarded (hivemind.Optimizer when checks are off).

    Use it like hivemind.Optimizer (leave grad_averager_factory unset or pass an unguarded averager class in it).
    """
    if settings is None or not settings.enabled:
        return Optimizer
    return _guarded_optimizer(settings)


def _guarded_optimizer(settings: TrustSettings) -> type:
    from functools import partial

    from hivemind.optim.grad_averager import GradientAverager

    class GuardedOptimizer(Optimizer):
        def __init__(self, *args, grad_averager_factory=None, **kwargs):
            base = grad_averager_factory or GradientAverager
            guarded = partial(averager_class(base, settings), trust=settings) if isinstance(base, type) else base
            super().__init__(*args, grad_averager_factory=guarded, **kwargs)

        def _make_state_averager(self, **kwargs) -> TrainingStateAverager:
            guarded = averager_class(TrainingStateAverager, settings)
            return guarded(trust=settings, dht=self.dht, prefix=f"{self.run_id}_state_averager",
                           min_matchmaking_time=self.matchmaking_time, allreduce_timeout=self.allreduce_timeout,
                           shutdown_timeout=self.shutdown_timeout, offload_optimizer=self.offload_optimizer,
                           custom_gradients=self.offload_optimizer, status_loglevel=self.status_loglevel,
                           next_chunk_timeout=self.next_chunk_timeout, client_mode=self.client_mode,
                           auxiliary=self.auxiliary, start=True, **kwargs)

        def trust_stats(self) -> dict[str, dict]:
            """Counts from both averagers, summed per peer."""
            merged: dict[str, dict] = {}
            for averager in (self.grad_averager, self.state_averager):
                if averager is None or not hasattr(averager, "trust_stats"):
                    continue
                for peer, counts in averager.trust_stats().items():
                    into = merged.setdefault(peer, dict.fromkeys(COUNTERS, 0) | {"token": counts.get("token", "")})
                    for name in COUNTERS:
                        into[name] += counts.get(name, 0)
                    into["token"] = into["token"] or counts.get("token", "")
            return merged

    return GuardedOptimizer
