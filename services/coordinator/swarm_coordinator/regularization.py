"""Which regularization (class) samples ride along with a leased chunk: DreamBooth-style prior preservation (issue 14
section 3) as pure functions, no clock, no database.

Chunks are cut from training samples only, so data epochs, run completion and the LR span stay defined by the
training set. With `reg_ratio` > 0 each lease also names `reg_count(n, reg_ratio)` regularization samples, so that
they make reg_ratio of the lease's samples (0.5: one per training sample, as diffusers' train_dreambooth.py pairs
them). They come from the chunk's pool: the regularization samples of its own aspect bucket, so that they batch with
the training samples, or every regularization sample (`ANY_BUCKET`) when its bucket has none (the trainer then
batches them by size).

Each pool is walked in id order and cycled, as DreamBooth walks its class images (example i takes class image
i % num_class_images): the chunk at `position` among its pool's `pool_chunks` chunks, trained `times_trained` times
before, starts at (times_trained * pool_chunks + position) * reg_count(chunk_size), so one data epoch walks on through
the pool and the next epoch goes on where it stopped. A lease never names one sample twice: a pool smaller than a
chunk's share gives all of its samples (a lower ratio for that chunk). The choice is a function of the chunk and the
pools, so a lease granted again after a crash or an expiry names the same samples.
"""
from __future__ import annotations

import bisect
import math
from typing import Container, Iterable, Mapping, Sequence

Bucket = tuple[int, int]
ANY_BUCKET: Bucket = (0, 0)  # the pool of every regularization sample, for chunks whose bucket has none


def reg_count(n_train: int, *, reg_ratio: float) -> int:
    """Regularization samples to add to `n_train` training samples so that they make `reg_ratio` of the total:
    n * r / (1 - r), rounded to the nearest whole sample (halves up)."""
    if not 0.0 <= reg_ratio < 1.0:
        raise ValueError(f"reg_ratio must be in [0, 1), got {reg_ratio}")
    if reg_ratio == 0.0 or n_train <= 0:
        return 0
    return math.floor(n_train * reg_ratio / (1.0 - reg_ratio) + 0.5)


def pool_key(bucket: Bucket, reg_buckets: Container[Bucket]) -> Bucket:
    """The pool a chunk of `bucket` draws from: its own bucket's regularization samples when there are any."""
    return bucket if bucket in reg_buckets else ANY_BUCKET


def pool_position(chunk_id: int, chunk_buckets: Mapping[int, Bucket], reg_buckets: Container[Bucket]
                  ) -> tuple[int, int]:
    """(position of the chunk among the chunks that share its pool, in id order; how many chunks share it).

    Reference model, O(chunks): ChunkPools.position computes the same with one sorted list per bucket."""
    key = pool_key(chunk_buckets[chunk_id], reg_buckets)
    sharing = sorted(cid for cid, bucket in chunk_buckets.items() if pool_key(bucket, reg_buckets) == key)
    return sharing.index(chunk_id), len(sharing)


def pick_reg_samples(pool: Sequence[int], *, count: int, start: int) -> list[int]:
    """`count` ids of `pool` from index `start` on, wrapping around; at most the whole pool, each id once."""
    if not pool or count <= 0:
        return []
    return [pool[(start + j) % len(pool)] for j in range(min(count, len(pool)))]


def reg_samples_for_lease(*, pool: Sequence[int], n_train: int, times_trained: int, position: int, pool_chunks: int,
                          reg_ratio: float, chunk_size: int) -> list[int]:
    """The regularization samples that ride along with one lease of a chunk of `n_train` training samples."""
    stride = reg_count(chunk_size, reg_ratio=reg_ratio)
    start = (times_trained * pool_chunks + position) * stride
    return pick_reg_samples(pool, count=reg_count(n_train, reg_ratio=reg_ratio), start=start)


def reg_ratio_problem(reg_ratio: float, *, reg_samples: int) -> str | None:
    """Why a run cannot train at `reg_ratio` with `reg_samples` regularization samples synced (None: it can)."""
    if reg_ratio > 0 and reg_samples == 0:
        return (f"reg_ratio is {reg_ratio} but the dataset holds no regularization images: ingest them with "
                f"`swarm ingest --role regularization FOLDER --index INDEX`, or set reg_ratio: 0")
    return None


class ChunkPools:
    """Every chunk's bucket, one sorted list of chunk ids per bucket: `pool_position` in O(buckets * log chunks)."""

    def __init__(self) -> None:
        self._by_bucket: dict[Bucket, list[int]] = {}

    def add(self, chunk_id: int, bucket: Bucket) -> None:
        bisect.insort(self._by_bucket.setdefault(bucket, []), chunk_id)

    def position(self, chunk_id: int, bucket: Bucket, reg_buckets: Container[Bucket]) -> tuple[int, int]:
        if pool_key(bucket, reg_buckets) != ANY_BUCKET:
            ids = self._by_bucket.get(bucket, [])
            return bisect.bisect_left(ids, chunk_id), len(ids)
        position = total = 0
        for other, ids in self._by_bucket.items():
            if pool_key(other, reg_buckets) == ANY_BUCKET:
                position += bisect.bisect_left(ids, chunk_id)
                total += len(ids)
        return position, total


def pools_by_bucket(reg_samples: Iterable[tuple[int, int, int]]) -> dict[Bucket, list[int]]:
    """(sample id, bucket width, height) -> sorted ids per bucket, plus ANY_BUCKET holding every id."""
    pools: dict[Bucket, list[int]] = {}
    for sample_id, width, height in reg_samples:
        pools.setdefault((width, height), []).append(sample_id)
        pools.setdefault(ANY_BUCKET, []).append(sample_id)
    return {bucket: sorted(ids) for bucket, ids in pools.items()}
