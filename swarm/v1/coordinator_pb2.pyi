from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckReachabilityRequest(_message.Message):
    __slots__ = ("peer_id",)
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    def __init__(self, peer_id: _Optional[str] = ...) -> None: ...

class AddressReachability(_message.Message):
    __slots__ = ("multiaddr", "dialled", "reachable", "reason")
    MULTIADDR_FIELD_NUMBER: _ClassVar[int]
    DIALLED_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    multiaddr: str
    dialled: bool
    reachable: bool
    reason: str
    def __init__(self, multiaddr: _Optional[str] = ..., dialled: _Optional[bool] = ..., reachable: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class CheckReachabilityResponse(_message.Message):
    __slots__ = ("verdict", "message", "addresses", "observed_host")
    class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VERDICT_UNSPECIFIED: _ClassVar[CheckReachabilityResponse.Verdict]
        REACHABLE: _ClassVar[CheckReachabilityResponse.Verdict]
        UNREACHABLE: _ClassVar[CheckReachabilityResponse.Verdict]
        NOT_VERIFIED: _ClassVar[CheckReachabilityResponse.Verdict]
    VERDICT_UNSPECIFIED: CheckReachabilityResponse.Verdict
    REACHABLE: CheckReachabilityResponse.Verdict
    UNREACHABLE: CheckReachabilityResponse.Verdict
    NOT_VERIFIED: CheckReachabilityResponse.Verdict
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_HOST_FIELD_NUMBER: _ClassVar[int]
    verdict: CheckReachabilityResponse.Verdict
    message: str
    addresses: _containers.RepeatedCompositeFieldContainer[AddressReachability]
    observed_host: str
    def __init__(self, verdict: _Optional[_Union[CheckReachabilityResponse.Verdict, str]] = ..., message: _Optional[str] = ..., addresses: _Optional[_Iterable[_Union[AddressReachability, _Mapping]]] = ..., observed_host: _Optional[str] = ...) -> None: ...

class AuthorizeSamplesRequest(_message.Message):
    __slots__ = ("sample_ids",)
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sample_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class AuthorizeSamplesResponse(_message.Message):
    __slots__ = ("allowed", "reason")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: str
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class RunConfig(_message.Message):
    __slots__ = ("version", "run_id", "config_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    run_id: str
    config_json: str
    def __init__(self, version: _Optional[int] = ..., run_id: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class RegisterPeerRequest(_message.Message):
    __slots__ = ("peer_id", "multiaddrs", "client_mode", "name", "batch_size")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    client_mode: bool
    name: str
    batch_size: int
    def __init__(self, peer_id: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., client_mode: _Optional[bool] = ..., name: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class RegisterPeerResponse(_message.Message):
    __slots__ = ("config", "initial_peers", "dataset_address", "lease_ttl_s", "heartbeat_interval_s")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PEERS_FIELD_NUMBER: _ClassVar[int]
    DATASET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    config: RunConfig
    initial_peers: _containers.RepeatedScalarFieldContainer[str]
    dataset_address: str
    lease_ttl_s: float
    heartbeat_interval_s: float
    def __init__(self, config: _Optional[_Union[RunConfig, _Mapping]] = ..., initial_peers: _Optional[_Iterable[str]] = ..., dataset_address: _Optional[str] = ..., lease_ttl_s: _Optional[float] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "chunk_id", "sample_ids", "deadline_unix_ms", "times_trained", "bucket_width", "bucket_height", "reg_sample_ids")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TIMES_TRAINED_FIELD_NUMBER: _ClassVar[int]
    BUCKET_WIDTH_FIELD_NUMBER: _ClassVar[int]
    BUCKET_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REG_SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    chunk_id: int
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    deadline_unix_ms: int
    times_trained: int
    bucket_width: int
    bucket_height: int
    reg_sample_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, lease_id: _Optional[str] = ..., chunk_id: _Optional[int] = ..., sample_ids: _Optional[_Iterable[int]] = ..., deadline_unix_ms: _Optional[int] = ..., times_trained: _Optional[int] = ..., bucket_width: _Optional[int] = ..., bucket_height: _Optional[int] = ..., reg_sample_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class LeaseChunksRequest(_message.Message):
    __slots__ = ("peer_id", "max_chunks", "config_version")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    max_chunks: int
    config_version: int
    def __init__(self, peer_id: _Optional[str] = ..., max_chunks: _Optional[int] = ..., config_version: _Optional[int] = ...) -> None: ...

class LeaseChunksResponse(_message.Message):
    __slots__ = ("leases", "run_complete", "config_version")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    run_complete: bool
    config_version: int
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., run_complete: _Optional[bool] = ..., config_version: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("peer_id", "lease_ids", "global_epoch", "loss", "samples_per_s", "finished", "contributions")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    lease_ids: _containers.RepeatedScalarFieldContainer[str]
    global_epoch: int
    loss: float
    samples_per_s: float
    finished: bool
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    def __init__(self, peer_id: _Optional[str] = ..., lease_ids: _Optional[_Iterable[str]] = ..., global_epoch: _Optional[int] = ..., loss: _Optional[float] = ..., samples_per_s: _Optional[float] = ..., finished: _Optional[bool] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ...) -> None: ...

class GetCredentialRequest(_message.Message):
    __slots__ = ("peer_id", "dht_public_key")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    DHT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    dht_public_key: bytes
    def __init__(self, peer_id: _Optional[str] = ..., dht_public_key: _Optional[bytes] = ...) -> None: ...

class GetCredentialResponse(_message.Message):
    __slots__ = ("credential", "coordinator_public_key", "run_id", "expires_at_unix")
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    credential: str
    coordinator_public_key: bytes
    run_id: str
    expires_at_unix: float
    def __init__(self, credential: _Optional[str] = ..., coordinator_public_key: _Optional[bytes] = ..., run_id: _Optional[str] = ..., expires_at_unix: _Optional[float] = ...) -> None: ...

class Contribution(_message.Message):
    __slots__ = ("peer_id", "token_name", "accepted", "clipped", "dropped", "refused")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    token_name: str
    accepted: int
    clipped: int
    dropped: int
    refused: int
    def __init__(self, peer_id: _Optional[str] = ..., token_name: _Optional[str] = ..., accepted: _Optional[int] = ..., clipped: _Optional[int] = ..., dropped: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...

class LeaseState(_message.Message):
    __slots__ = ("lease_id", "valid", "deadline_unix_ms")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    valid: bool
    deadline_unix_ms: int
    def __init__(self, lease_id: _Optional[str] = ..., valid: _Optional[bool] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("leases", "config_version", "run_complete", "swarm_epoch", "peers_training", "swarm_epoch_min", "lr", "lr_total_steps")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    SWARM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PEERS_TRAINING_FIELD_NUMBER: _ClassVar[int]
    SWARM_EPOCH_MIN_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    LR_TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseState]
    config_version: int
    run_complete: bool
    swarm_epoch: int
    peers_training: int
    swarm_epoch_min: int
    lr: float
    lr_total_steps: int
    def __init__(self, leases: _Optional[_Iterable[_Union[LeaseState, _Mapping]]] = ..., config_version: _Optional[int] = ..., run_complete: _Optional[bool] = ..., swarm_epoch: _Optional[int] = ..., peers_training: _Optional[int] = ..., swarm_epoch_min: _Optional[int] = ..., lr: _Optional[float] = ..., lr_total_steps: _Optional[int] = ...) -> None: ...

class ReportChunkDoneRequest(_message.Message):
    __slots__ = ("peer_id", "lease_id")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    lease_id: str
    def __init__(self, peer_id: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class ReportChunkDoneResponse(_message.Message):
    __slots__ = ("outcome", "message", "samples_counted")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[ReportChunkDoneResponse.Outcome]
        COUNTED: _ClassVar[ReportChunkDoneResponse.Outcome]
        STALE: _ClassVar[ReportChunkDoneResponse.Outcome]
        DUPLICATE: _ClassVar[ReportChunkDoneResponse.Outcome]
    OUTCOME_UNSPECIFIED: ReportChunkDoneResponse.Outcome
    COUNTED: ReportChunkDoneResponse.Outcome
    STALE: ReportChunkDoneResponse.Outcome
    DUPLICATE: ReportChunkDoneResponse.Outcome
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_COUNTED_FIELD_NUMBER: _ClassVar[int]
    outcome: ReportChunkDoneResponse.Outcome
    message: str
    samples_counted: int
    def __init__(self, outcome: _Optional[_Union[ReportChunkDoneResponse.Outcome, str]] = ..., message: _Optional[str] = ..., samples_counted: _Optional[int] = ...) -> None: ...

class ReleaseLeasesRequest(_message.Message):
    __slots__ = ("peer_id", "lease_ids")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    lease_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peer_id: _Optional[str] = ..., lease_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseLeasesResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerInfo(_message.Message):
    __slots__ = ("peer_id", "name", "multiaddrs", "client_mode", "last_seen_unix_ms", "samples_contributed", "global_epoch", "finished", "loss", "samples_per_s", "chunks_contributed", "alive", "samples_leased")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MODE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_CONTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_CONTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_LEASED_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    name: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    client_mode: bool
    last_seen_unix_ms: int
    samples_contributed: int
    global_epoch: int
    finished: bool
    loss: float
    samples_per_s: float
    chunks_contributed: int
    alive: bool
    samples_leased: int
    def __init__(self, peer_id: _Optional[str] = ..., name: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., client_mode: _Optional[bool] = ..., last_seen_unix_ms: _Optional[int] = ..., samples_contributed: _Optional[int] = ..., global_epoch: _Optional[int] = ..., finished: _Optional[bool] = ..., loss: _Optional[float] = ..., samples_per_s: _Optional[float] = ..., chunks_contributed: _Optional[int] = ..., alive: _Optional[bool] = ..., samples_leased: _Optional[int] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers", "initial_peers")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    initial_peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ..., initial_peers: _Optional[_Iterable[str]] = ...) -> None: ...

class GetProgressRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Progress(_message.Message):
    __slots__ = ("samples_done", "data_epochs_done", "chunks_total", "chunks_queued", "chunks_leased", "chunks_done", "peers_alive", "swarm_epoch", "config_version", "run_complete", "peers", "max_data_epochs", "lr", "lr_total_steps", "samples_total", "samples_pending", "swarm_epoch_min", "peers_training", "contributions", "credentials", "reg_samples_done", "reg_samples_total")
    SAMPLES_DONE_FIELD_NUMBER: _ClassVar[int]
    DATA_EPOCHS_DONE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_LEASED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    PEERS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    SWARM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    MAX_DATA_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    LR_TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PENDING_FIELD_NUMBER: _ClassVar[int]
    SWARM_EPOCH_MIN_FIELD_NUMBER: _ClassVar[int]
    PEERS_TRAINING_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    REG_SAMPLES_DONE_FIELD_NUMBER: _ClassVar[int]
    REG_SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    samples_done: int
    data_epochs_done: int
    chunks_total: int
    chunks_queued: int
    chunks_leased: int
    chunks_done: int
    peers_alive: int
    swarm_epoch: int
    config_version: int
    run_complete: bool
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    max_data_epochs: int
    lr: float
    lr_total_steps: int
    samples_total: int
    samples_pending: int
    swarm_epoch_min: int
    peers_training: int
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    credentials: _containers.RepeatedCompositeFieldContainer[CredentialCount]
    reg_samples_done: int
    reg_samples_total: int
    def __init__(self, samples_done: _Optional[int] = ..., data_epochs_done: _Optional[int] = ..., chunks_total: _Optional[int] = ..., chunks_queued: _Optional[int] = ..., chunks_leased: _Optional[int] = ..., chunks_done: _Optional[int] = ..., peers_alive: _Optional[int] = ..., swarm_epoch: _Optional[int] = ..., config_version: _Optional[int] = ..., run_complete: _Optional[bool] = ..., peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ..., max_data_epochs: _Optional[int] = ..., lr: _Optional[float] = ..., lr_total_steps: _Optional[int] = ..., samples_total: _Optional[int] = ..., samples_pending: _Optional[int] = ..., swarm_epoch_min: _Optional[int] = ..., peers_training: _Optional[int] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ..., credentials: _Optional[_Iterable[_Union[CredentialCount, _Mapping]]] = ..., reg_samples_done: _Optional[int] = ..., reg_samples_total: _Optional[int] = ...) -> None: ...

class CredentialCount(_message.Message):
    __slots__ = ("peer_id", "token_name", "issued", "refused")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    token_name: str
    issued: int
    refused: int
    def __init__(self, peer_id: _Optional[str] = ..., token_name: _Optional[str] = ..., issued: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...
