"""`swarm status`: a run's global progress as a readable table (formatting is pure; fetching is one RPC)."""
from __future__ import annotations

import math
import time

import grpc

from swarm.rpc import channel, token_metadata
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc

MAX_PEER_ROWS = 50


def fetch_progress(address: str, *, token: str | None, timeout: float = 10.0) -> pb.Progress:
    with channel(address) as ch:
        return pb_grpc.CoordinatorStub(ch).GetProgress(pb.GetProgressRequest(), metadata=token_metadata(token),
                                                       timeout=timeout)


def _ago(unix_ms: int, now: float) -> str:
    seconds = max(0.0, now - unix_ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def format_progress(p: pb.Progress, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    epoch_total = p.samples_total * p.max_data_epochs
    percent = f" ({100.0 * p.samples_done / epoch_total:.1f}% of {epoch_total})" if epoch_total else ""
    lines = [
        f"run complete:      {'yes' if p.run_complete else 'no'}",
        f"samples done:      {p.samples_done}{percent}",
        *([f"regularization:    {p.reg_samples_done} samples done riding along ({p.reg_samples_total} in the set)"]
          if p.reg_samples_total or p.reg_samples_done else []),
        f"data epochs done:  {p.data_epochs_done} of {p.max_data_epochs}",
        f"chunks:            {p.chunks_total} in all: {p.chunks_queued} queued, {p.chunks_leased} leased, "
        f"{p.chunks_done} done this data epoch" + (f"; {p.samples_pending} samples waiting to fill a chunk"
                                                    if p.samples_pending else ""),
        f"peers alive:       {p.peers_alive} ({p.peers_training} training)",
        f"swarm epoch:       {p.swarm_epoch}" + (f" (slowest live peer at {p.swarm_epoch_min})"
                                                  if p.swarm_epoch_min != p.swarm_epoch else ""),
        f"learning rate:     {p.lr:.3g}" + (f" (decay over {p.lr_total_steps} global epochs)"
                                             if p.lr_total_steps else ""),
        f"config version:    {p.config_version}",
    ]
    peers = sorted(p.peers, key=lambda peer: (-peer.samples_contributed, peer.peer_id))
    if peers:
        rows = [("peer", "name", "samples", "leased", "chunks", "epoch", "loss", "samples/s", "last seen")]
        for peer in peers[:MAX_PEER_ROWS]:
            state = "" if peer.alive else " (dead)"
            state = " (finished)" if peer.alive and peer.finished else state
            rows.append((_short(peer.peer_id), peer.name or "-", str(peer.samples_contributed),
                         str(peer.samples_leased), str(peer.chunks_contributed), str(peer.global_epoch),
                         "-" if math.isnan(peer.loss) else f"{peer.loss:.4f}", f"{peer.samples_per_s:.2f}",
                         _ago(peer.last_seen_unix_ms, now) + state))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines.extend("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
        if len(peers) > MAX_PEER_ROWS:
            lines.append(f"... and {len(peers) - MAX_PEER_ROWS} more peers")
    if p.contributions:
        lines.extend(["", "contributions as judged by groupmates (swarm.trust; most dropped first):"])
        rows = [("peer", "token", "accepted", "clipped", "dropped", "refused")]
        rows += [(_short(c.peer_id), c.token_name or "-", str(c.accepted), str(c.clipped), str(c.dropped),
                  str(c.refused)) for c in list(p.contributions)[:MAX_PEER_ROWS]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.extend("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
    if p.credentials:
        lines.extend(["", "credentials issued / refused per peer and token (swarm.trust; most refused first):"])
        rows = [("peer", "token", "issued", "refused")]
        rows += [(_short(c.peer_id), c.token_name or "-", str(c.issued), str(c.refused))
                 for c in list(p.credentials)[:MAX_PEER_ROWS]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.extend("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
        if len(p.credentials) > MAX_PEER_ROWS:
            lines.append(f"... and {len(p.credentials) - MAX_PEER_ROWS} more")
    return "\n".join(lines)


def _short(peer_id: str) -> str:
    return peer_id if len(peer_id) <= 16 else f"{peer_id[:6]}…{peer_id[-6:]}"


def describe_rpc_error(e: grpc.RpcError, address: str) -> str:
    if e.code() == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the coordinator at {address}: is it running, and is the address right?"
    return f"{e.code().name}: {e.details()}"
