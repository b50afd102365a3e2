"""The trainer's Prometheus metrics (prefix `swarm_trainer_`), served on `/metrics` by swarm.metrics.MetricsServer."""
from __future__ import annotations

import torch
from prometheus_client import Counter, Gauge, Histogram

LOSS = Gauge("swarm_trainer_loss", "Loss of the last local batch")
LR = Gauge("swarm_trainer_lr", "Learning rate of the next global step (a function of the global epoch)")
SAMPLES_PER_SECOND = Gauge("swarm_trainer_samples_per_second", "This peer's training throughput (samples/s)")
LOCAL_STEP = Gauge("swarm_trainer_local_step", "optimizer.step() calls made by this peer (one per local batch)")
GLOBAL_EPOCH = Gauge("swarm_trainer_global_epoch", "The swarm's epoch as this peer sees it (optimizer.local_epoch)")
PEERS_IN_LAST_ROUND = Gauge("swarm_trainer_peers_in_last_round",
                            "Peers that reported progress in the swarm's current epoch")
AVERAGING_SECONDS = Histogram("swarm_trainer_averaging_seconds",
                              "Wall time of optimizer.step() calls that ran a global step (averaging included)",
                              buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
SAMPLES_TRAINED = Counter("swarm_trainer_samples_trained_total", "Samples this peer pushed through optimizer.step()")
CHUNKS_REPORTED = Counter("swarm_trainer_chunks_reported_total", "Chunk reports by outcome", ["outcome"])
# swarm_trainer_network_bytes_total{direction="sent|received"} is traffic.py's collector: hivemind's processes count.
GPU_MEMORY_BYTES = Gauge("swarm_trainer_gpu_memory_bytes", "CUDA memory allocated by this process (0 on CPU)")
GPU_MEMORY_PEAK_BYTES = Gauge("swarm_trainer_gpu_memory_peak_bytes", "Peak CUDA memory allocated (0 on CPU)")
FINISHED = Gauge("swarm_trainer_finished", "1 once this peer has nothing left to train and waits at the barrier")


def update_gpu_memory(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        GPU_MEMORY_BYTES.set(torch.cuda.memory_allocated(device))
        GPU_MEMORY_PEAK_BYTES.set(torch.cuda.max_memory_allocated(device))
    else:
        GPU_MEMORY_BYTES.set(0)
        GPU_MEMORY_PEAK_BYTES.set(0)


def metric_names() -> list[str]:
    """Every metric this module exports, for the README and a test that keeps the list honest."""
    from swarm_trainer.traffic import METRIC_NAME

    return sorted([METRIC_NAME, *(m._name for m in (
        LOSS, LR, SAMPLES_PER_SECOND, LOCAL_STEP, GLOBAL_EPOCH, PEERS_IN_LAST_ROUND, AVERAGING_SECONDS, SAMPLES_TRAINED,
        CHUNKS_REPORTED, GPU_MEMORY_BYTES, GPU_MEMORY_PEAK_BYTES, FINISHED))])
