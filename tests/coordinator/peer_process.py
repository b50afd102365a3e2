"""A peer as its own process for the chaos test: registers, leases chunks, heartbeats once, says which leases it
holds (JSON to OUT_FILE), then "trains" until it is killed: it blocks on stdin, which the test never writes to.

    python -m tests.coordinator.peer_process ADDRESS TOKEN PEER_ID CONFIG_VERSION OUT_FILE
"""
from __future__ import annotations

import json
import os
import sys

from swarm.rpc import channel, token_metadata
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc


def main() -> None:
    address, token, peer_id, version, out_file = sys.argv[1:6]
    metadata = token_metadata(token)
    with channel(address) as ch:
        stub = pb_grpc.CoordinatorStub(ch)
        stub.RegisterPeer(pb.RegisterPeerRequest(peer_id=peer_id), metadata=metadata, timeout=10)
        leases = stub.LeaseChunks(pb.LeaseChunksRequest(peer_id=peer_id, max_chunks=2, config_version=int(version)),
                                  metadata=metadata, timeout=10).leases
        stub.Heartbeat(pb.HeartbeatRequest(peer_id=peer_id, lease_ids=[lease.lease_id for lease in leases]),
                       metadata=metadata, timeout=10)
        tmp = f"{out_file}.tmp"
        with open(tmp, "w") as f:
            json.dump({"lease_ids": [lease.lease_id for lease in leases],
                       "chunk_ids": [lease.chunk_id for lease in leases]}, f)
        os.replace(tmp, out_file)
        sys.stdin.read()  # mid-chunk until SIGKILL


if __name__ == "__main__":
    main()
