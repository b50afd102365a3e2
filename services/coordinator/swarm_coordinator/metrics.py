"""Prometheus metrics of the coordinator, all prefixed `swarm_coordinator_`.

RPC counters and latencies are recorded as calls happen; run progress is computed from the store on each scrape
(a custom collector), so the figures are exact at scrape time and no background loop keeps gauges up to date.
"""
from __future__ import annotations

import math
from typing import Callable

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "swarm_coordinator_"

RPC_TOTAL = Counter(f"{PREFIX}rpc_total", "RPCs answered, by method and gRPC status code", ["method", "code"])
RPC_SECONDS = Histogram(f"{PREFIX}rpc_seconds", "Time to answer an RPC (server side), by method", ["method"],
                        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
AUTH_FAILURES = Counter(f"{PREFIX}auth_failures_total", "Calls refused for a missing, wrong or revoked join token")
REPORTS = Counter(f"{PREFIX}reports_total", "ReportChunkDone answers by outcome", ["outcome"])


_report_counters: dict[str, object] = {}


def count_report(outcome: str) -> None:
    counter = _report_counters.get(outcome)
    if counter is None:
        counter = _report_counters[outcome] = REPORTS.labels(outcome)
    counter.inc()


class RpcRecorder:
    """Cached label children: labels() costs a lock and a dict lookup; calls come thousands per second."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str], object] = {}
        self._seconds: dict[str, object] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        total = self._totals.get((method, code))
        if total is None:
            total = self._totals[(method, code)] = RPC_TOTAL.labels(method, code)
        hist = self._seconds.get(method)
        if hist is None:
            hist = self._seconds[method] = RPC_SECONDS.labels(method)
        total.inc()
        hist.observe(seconds)


class ProgressCollector:
    """Run progress gauges, read from the store when Prometheus scrapes."""

    def __init__(self, progress: Callable[[], object], *, dataset_up: Callable[[], bool | None] = lambda: None):
        self._progress, self._dataset_up = progress, dataset_up

    def describe(self):
        return []  # names are produced at scrape time; nothing to check for duplicates up front

    def collect(self):
        p = self._progress()
        # A counter (exposed as ..._total): it only grows, and the dashboards and the no-progress alert rate() it.
        yield CounterMetricFamily(f"{PREFIX}samples_done", "Samples trained and counted (a sample trained twice "
                                  "counts twice)", value=p.samples_done)
        yield CounterMetricFamily(f"{PREFIX}reg_samples_done", "Regularization samples trained and counted (riding "
                                  "along with counted chunks; not in samples_done)", value=p.reg_samples_done)
        for name, doc, value in (
            ("samples_total", "Samples in chunks (one data epoch)", p.samples_total),
            ("samples_pending", "Samples synced from the dataset, waiting to fill a chunk", p.samples_pending),
            ("data_epochs_done", "Complete passes over the dataset (times the least-trained chunk was trained)",
             p.data_epochs_done),
            ("max_data_epochs", "Data epochs after which the run is complete", p.max_data_epochs),
            ("chunks_total", "Chunks the dataset is cut into", p.chunks_total),
            ("peers_alive", "Peers seen within the peer TTL", p.peers_alive),
            ("peers_training", "Live peers that have not finished", p.peers_training),
            ("swarm_epoch", "Highest global (hivemind) epoch among live peers", p.swarm_epoch),
            ("swarm_epoch_min", "Lowest global (hivemind) epoch among live peers", p.swarm_epoch_min),
            ("lr", "Learning rate the schedule gives at the swarm epoch", p.lr),
            ("lr_total_steps", "Global epochs the LR decay spans", p.lr_total_steps),
            ("config_version", "Current run config version", p.config_version),
            ("run_complete", "1 once every chunk reached max_data_epochs", int(p.run_complete)),
        ):
            yield GaugeMetricFamily(f"{PREFIX}{name}", doc, value=value)
        chunks = GaugeMetricFamily(f"{PREFIX}chunks", "Chunks by state: queued (to train this data epoch), leased "
                                   "(held by an unexpired lease), done (trained this data epoch or finished)",
                                   labels=["state"])
        for state, value in (("queued", p.chunks_queued), ("leased", p.chunks_leased), ("done", p.chunks_done)):
            chunks.add_metric([state], value)
        yield chunks
        contributed = GaugeMetricFamily(f"{PREFIX}peer_samples_contributed",
                                        "Samples each peer trained and got counted", labels=["peer", "name"])
        for peer in p.peers:
            if peer.samples_contributed or peer.peer_id in p.alive_peer_ids:
                contributed.add_metric([peer.peer_id, peer.name], peer.samples_contributed)
        yield contributed
        yield from peer_progress_families(p.peers, p.alive_peer_ids)
        up = self._dataset_up()
        if up is not None:
            yield GaugeMetricFamily(f"{PREFIX}dataset_sync_up", "1 when the last dataset sync reached the dataset "
                                    "service", value=int(up))


# At most this many peers get per-peer progress series: Prometheus' cost grows with series, a swarm's with peers.
PEER_SERIES_CAP = 200


def peer_progress_rows(peers, alive_ids, *, cap: int = PEER_SERIES_CAP) -> list:
    """The peers whose heartbeat progress is exported: live ones only (a peer that went silent drops out with its
    series), the fastest `cap` of them, so cardinality stays bounded however many come and go."""
    live = [peer for peer in peers if peer.peer_id in alive_ids]
    live.sort(key=lambda peer: (-(peer.samples_per_s or 0.0), peer.peer_id))
    return live[:cap]


def peer_progress_families(peers, alive_ids, *, cap: int = PEER_SERIES_CAP):
    """Per-peer samples/s, loss and global epoch from heartbeats, labelled by peer id and name: every trainer shows
    in Grafana, also those whose own metrics port Prometheus cannot reach."""
    rate = GaugeMetricFamily(f"{PREFIX}peer_samples_per_second", "Samples/s each live peer reported in its last "
                             "heartbeat", labels=["peer", "name"])
    loss = GaugeMetricFamily(f"{PREFIX}peer_loss", "Training loss each live peer reported in its last heartbeat",
                             labels=["peer", "name"])
    epoch = GaugeMetricFamily(f"{PREFIX}peer_global_epoch", "Global (hivemind) epoch of each live peer",
                              labels=["peer", "name"])
    for peer in peer_progress_rows(peers, alive_ids, cap=cap):
        labels = [peer.peer_id, peer.name]
        rate.add_metric(labels, float(peer.samples_per_s or 0.0))
        if peer.loss is not None and math.isfinite(peer.loss):
            loss.add_metric(labels, peer.loss)
        epoch.add_metric(labels, peer.global_epoch)
    yield from (rate, loss, epoch)


def register_collector(collector: ProgressCollector) -> Callable[[], None]:
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)
