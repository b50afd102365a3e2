"""swarm.v1.Coordinator's RPCs, in small servicer parts composed into the one servicer gRPC serves.

Each part answers the RPCs of one concern and holds only what those need (the store, some settings). `compose`
checks that every RPC of the service is answered by exactly one part, so a new RPC (say, admission) is a new part
(or a method of one) listed in server.py's `servicer_parts`, and forgetting it fails at start, not at the first call.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc
from swarm_coordinator import addresses, metrics, rules
from swarm_coordinator.configs import ConfigVersion
from swarm_coordinator.errors import ConfigNotFound
from swarm_coordinator.peers import PeerRecord
from swarm_coordinator.progress import current_lr, lr_total_steps
from swarm_coordinator.rpc_handling import caller, rpc_handler
from swarm_coordinator.store import Store

SERVICE_NAME = "swarm.v1.Coordinator"


def _config_message(version: ConfigVersion) -> pb.RunConfig:
    return pb.RunConfig(version=version.version, run_id=version.run_id, config_json=version.config_json)


def _peer_info(peer: PeerRecord, *, alive: bool, samples_leased: int = 0) -> pb.PeerInfo:
    # No multiaddrs: a volunteer's IP address is not for every token holder (and `swarm status`) to read. A joiner
    # dials the initial peers instead: the bootstrap DHT and reachable peers' announced addresses (design.md).
    return pb.PeerInfo(peer_id=peer.peer_id, name=peer.name, client_mode=peer.client_mode,
                       last_seen_unix_ms=int(peer.last_seen * 1000), samples_contributed=peer.samples_contributed,
                       global_epoch=peer.global_epoch, finished=peer.finished,
                       loss=math.nan if peer.loss is None else peer.loss, samples_per_s=peer.samples_per_s,
                       chunks_contributed=peer.chunks_contributed, alive=alive, samples_leased=samples_leased)


class PeerRpcs:
    """RegisterPeer and ListPeers: joining, and the addresses a joiner dials."""

    def __init__(self, store: Store, *, bootstrap_peers: Sequence[str] = (), dataset_address: str = "",
                 heartbeat_interval: float = 30.0):
        self.store, self.dataset_address, self.heartbeat_interval = store, dataset_address, heartbeat_interval
        self.bootstrap_peers = list(bootstrap_peers)

    def set_bootstrap_peers(self, peers: Sequence[str]) -> None:
        """New bootstrap multiaddrs (BootstrapPeersSource refreshes them); one reference swap, no lock needed."""
        self.bootstrap_peers = list(peers)

    @rpc_handler("RegisterPeer")
    def RegisterPeer(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        peer_id = rules.check_peer_id(request.peer_id)
        multiaddrs = addresses.check_peer_multiaddrs(request.multiaddrs, peer_id=peer_id, limit=rules.MAX_MULTIADDRS)
        name = rules.check_name(request.name)
        if request.batch_size < 0:
            raise rules.InvalidRequest(f"batch_size must be >= 0, got {request.batch_size}")
        self.store.register(peer_id, name=name, multiaddrs=multiaddrs, client_mode=request.client_mode,
                            batch_size=request.batch_size, caller=caller(context))
        initial = self.store.initial_peers(self.bootstrap_peers, exclude_peer_id=peer_id)
        return pb.RegisterPeerResponse(config=_config_message(self.store.config), initial_peers=initial,
                                       dataset_address=self.dataset_address, lease_ttl_s=self.store.lease_ttl,
                                       heartbeat_interval_s=self.heartbeat_interval)

    @rpc_handler("ListPeers")
    def ListPeers(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        leased = self.store.samples_leased()  # trainers cap weight claims with it (swarm.trust.budget)
        return pb.ListPeersResponse(peers=[_peer_info(p, alive=True, samples_leased=leased.get(p.peer_id, 0))
                                           for p in self.store.live_peers()],
                                    initial_peers=self.store.initial_peers(self.bootstrap_peers))


class ConfigRpcs:
    """GetConfig: the current run config, or a version a peer names."""

    def __init__(self, store: Store):
        self.store = store

    @rpc_handler("GetConfig")
    def GetConfig(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        if request.version < 0:
            raise rules.InvalidRequest(f"version must be >= 0 (0 means the current one), got {request.version}")
        version = self.store.get_config(request.version)
        if version is None:
            raise ConfigNotFound(f"config version {request.version} does not exist; the latest is "
                                 f"{self.store.config.version}")
        return _config_message(version)


class LeaseRpcs:
    """LeaseChunks, Heartbeat, ReportChunkDone, ReleaseLeases: the chunk lease protocol."""

    def __init__(self, store: Store, *, contributions=None):
        self.store, self.contributions = store, contributions  # admission.ContributionBook: trust counters

    @rpc_handler("LeaseChunks")
    def LeaseChunks(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        peer_id = rules.check_peer_id(request.peer_id)
        count = rules.check_max_chunks(request.max_chunks)
        self.store.check_config_version(request.config_version)
        grants = self.store.lease(peer_id, count, caller=caller(context))
        return pb.LeaseChunksResponse(
            leases=[pb.Lease(lease_id=g.lease_id, chunk_id=g.chunk_id, sample_ids=g.sample_ids,
                             deadline_unix_ms=int(g.deadline * 1000), times_trained=g.times_trained,
                             bucket_width=g.bucket_width, bucket_height=g.bucket_height,
                             reg_sample_ids=g.reg_sample_ids) for g in grants],
            run_complete=self.store.run_complete(), config_version=self.store.config.version)

    @rpc_handler("Heartbeat")
    def Heartbeat(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        peer_id = rules.check_peer_id(request.peer_id)
        lease_ids = rules.check_lease_ids(request.lease_ids)
        loss = rules.check_heartbeat_numbers(global_epoch=request.global_epoch, loss=request.loss,
                                             samples_per_s=request.samples_per_s)
        states = self.store.heartbeat(peer_id, lease_ids, global_epoch=request.global_epoch, loss=loss,
                                      samples_per_s=request.samples_per_s, finished=request.finished,
                                      caller=caller(context))
        if self.contributions is not None and request.contributions:
            self.contributions.record(peer_id, request.contributions)
        epochs = self.store.epochs()
        config = self.store.config
        samples_total = self.store.queue.samples_total
        return pb.HeartbeatResponse(
            leases=[pb.LeaseState(lease_id=lid, valid=valid, deadline_unix_ms=int(deadline * 1000))
                    for lid, valid, deadline in states],
            config_version=config.version, run_complete=self.store.run_complete(), swarm_epoch=epochs.swarm_epoch,
            peers_training=epochs.peers_training, swarm_epoch_min=epochs.swarm_epoch_min,
            lr=current_lr(config.config, epoch=epochs.swarm_epoch, samples_total=samples_total),
            lr_total_steps=lr_total_steps(config.config, samples_total=samples_total))

    @rpc_handler("ReportChunkDone")
    def ReportChunkDone(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        peer_id = rules.check_peer_id(request.peer_id)
        lease_id = rules.check_lease_id(request.lease_id)
        result = self.store.report(peer_id, lease_id, caller=caller(context))
        metrics.count_report(result.outcome.name)
        return pb.ReportChunkDoneResponse(outcome=int(result.outcome), message=result.message,
                                          samples_counted=result.samples_counted)

    @rpc_handler("ReleaseLeases")
    def ReleaseLeases(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        peer_id = rules.check_peer_id(request.peer_id)
        lease_ids = rules.check_lease_ids(request.lease_ids)
        return pb.ReleaseLeasesResponse(released=self.store.release(peer_id, lease_ids, caller=caller(context)))


class ProgressRpcs:
    """GetProgress: the run's global progress (`swarm status`)."""

    def __init__(self, store: Store, *, contributions=None, credentials=None):
        self.store, self.contributions = store, contributions  # admission.ContributionBook
        self.credentials = credentials  # admission.CredentialBook

    @rpc_handler("GetProgress")
    def GetProgress(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        p = self.store.progress()
        leased = self.store.samples_leased()
        return pb.Progress(
            samples_done=p.samples_done, data_epochs_done=p.data_epochs_done, chunks_total=p.chunks_total,
            chunks_queued=p.chunks_queued, chunks_leased=p.chunks_leased, chunks_done=p.chunks_done,
            peers_alive=p.peers_alive, swarm_epoch=p.swarm_epoch, config_version=p.config_version,
            run_complete=p.run_complete, max_data_epochs=p.max_data_epochs, lr=p.lr, lr_total_steps=p.lr_total_steps,
            samples_total=p.samples_total, samples_pending=p.samples_pending, swarm_epoch_min=p.swarm_epoch_min,
            peers_training=p.peers_training, reg_samples_done=p.reg_samples_done, reg_samples_total=p.reg_samples_total,
            peers=[_peer_info(peer, alive=peer.peer_id in p.alive_peer_ids, samples_leased=leased.get(peer.peer_id, 0))
                   for peer in p.peers],
            contributions=self.contributions.messages() if self.contributions is not None else [],
            credentials=self.credentials.messages() if self.credentials is not None else [])


class SampleAccessRpcs:
    """AuthorizeSamples: may the caller's token stream these samples (the dataset service asks per stream)?"""

    def __init__(self, store: Store, *, full_access_token_hashes: Iterable[str] = ()):
        # The coordinator's own dataset token (its sync) may read any sample; it holds no leases.
        self.store, self.full_access = store, frozenset(full_access_token_hashes)

    @rpc_handler("AuthorizeSamples")
    def AuthorizeSamples(self, request, context):  # noqa: N802 (the RPC's name in the proto)
        sample_ids = rules.check_sample_ids(request.sample_ids)
        who = caller(context)
        if who is not None and who in self.full_access:
            return pb.AuthorizeSamplesResponse(allowed=True)
        unleased = self.store.unleased_samples(sample_ids, caller=who)
        if unleased:
            return pb.AuthorizeSamplesResponse(allowed=False, reason=rules.describe_unleased(unleased))
        return pb.AuthorizeSamplesResponse(allowed=True)


def compose(parts: Iterable[object]) -> pb_grpc.CoordinatorServicer:
    """One servicer answering each RPC of swarm.v1.Coordinator with the part that defines it. ValueError when an RPC
    has no part or two parts define it (say which), so a half-wired server never starts."""
    parts = list(parts)
    servicer = pb_grpc.CoordinatorServicer()
    for method in pb.DESCRIPTOR.services_by_name["Coordinator"].methods:
        owners = [part for part in parts if callable(getattr(part, method.name, None))]
        if len(owners) != 1:
            names = ", ".join(type(part).__name__ for part in owners) or "no part"
            raise ValueError(f"RPC {method.name} must be answered by exactly one servicer part, got {names}")
        setattr(servicer, method.name, getattr(owners[0], method.name))
    return servicer
