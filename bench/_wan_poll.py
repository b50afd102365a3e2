"""Progress poller for bench/wan.py, run inside the host's namespace (where the coordinator is reachable).

`python -m bench._wan_poll --coordinator HOST:PORT --out FILE --trainer-metrics URL ... [--interval S]`
(the token comes from env SWARM_TOKEN). Every interval it appends one JSON line to FILE: the time, the coordinator's
samples_done, and per trainer the samples it trained and the hivemind bytes it counted (its /metrics, over the
unshaped svc network). It runs until killed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
import urllib.request

SAMPLE = re.compile(r'^(swarm_trainer_samples_trained_total|swarm_trainer_network_bytes_total\{direction="(\w+)"\}) '
                    r'([0-9.e+]+)$')
HTTP_TIMEOUT_S = 1.0
RPC_TIMEOUT_S = 2.0


def parse_trainer_metrics(text: str) -> dict[str, float]:
    """{"samples": n, "sent": bytes, "received": bytes} from a trainer's /metrics text (missing ones absent)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            found[match.group(2) or "samples"] = float(match.group(3))
    return found


def scrape(url: str) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return parse_trainer_metrics(response.read().decode())
    except (OSError, ValueError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--trainer-metrics", nargs="*", default=[])
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()

    import grpc

    from swarm.rpc import channel, token_metadata
    from swarm.v1 import coordinator_pb2, coordinator_pb2_grpc

    metadata = token_metadata(os.environ.get("SWARM_TOKEN"))
    with channel(args.coordinator) as ch, open(args.out, "a", buffering=1) as out:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        while True:
            started = time.monotonic()
            record: dict = {"t": time.time()}
            try:
                progress = stub.GetProgress(coordinator_pb2.GetProgressRequest(), metadata=metadata,
                                            timeout=RPC_TIMEOUT_S)
                record.update(samples_done=int(progress.samples_done), swarm_epoch=int(progress.swarm_epoch),
                              run_complete=bool(progress.run_complete))
            except grpc.RpcError:
                pass
            record["trainers"] = [scrape(url) for url in args.trainer_metrics]
            out.write(json.dumps(record) + "\n")
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    raise SystemExit(main())
