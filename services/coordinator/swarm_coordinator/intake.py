"""What enters the store from outside the RPC hot path: run config versions and samples synced from the dataset.

A mixin of Store (store.py), sharing its lock, connection and in-memory queue; split out to keep each module short.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from swarm.runconfig import RunConfig
from swarm_coordinator import configs, db
from swarm_coordinator.errors import UnknownConfigVersion
from swarm_coordinator.rules import cut_chunks


class IntakeMixin:
    # ------------------------------------------------------------------------------------------------ config

    def ensure_config(self, config: RunConfig | None, *, run_id: str) -> tuple[configs.ConfigVersion, bool]:
        """Make `config` (or, when None, the stored one / the defaults) current under `run_id`."""
        with self._lock, self._conn.begin():
            current = configs.latest(self._conn)
            if config is None:
                config = current.config if current else RunConfig()
            version, created = configs.store_if_changed(self._conn, config, run_id=run_id, now=self.clock())
            self._set_config(version)
        return version, created

    def _set_config(self, version: configs.ConfigVersion) -> None:
        self._versions[version.version] = version
        self.config = version

    def refresh_config(self) -> bool:
        """Pick up a version stored by `swarm config set` (another process). Returns whether the version changed."""
        with self._lock, self._conn.begin():
            latest = configs.latest_version_number(self._conn)
            if self.config is not None and latest == self.config.version:
                return False
            version = configs.latest(self._conn)
            if version is None:
                return False
            self._set_config(version)
            return True

    def get_config(self, version: int = 0) -> configs.ConfigVersion | None:
        current = self.config
        if version == 0 or (current and version == current.version):
            return current
        if current is None or version > current.version:
            return None  # peers only ever learn versions from us: a newer one does not exist (no query for it)
        if version not in self._versions:
            with self._lock, self._conn.begin():
                found = configs.get(self._conn, version)
            if found is None:
                return None
            self._versions[version] = found
        return self._versions[version]

    def check_config_version(self, version: int) -> None:
        if version <= 0 or self.get_config(version) is None:
            latest = self.config.version if self.config else 0
            raise UnknownConfigVersion(f"unknown config version {version}; re-fetch the config with GetConfig "
                                       f"(current version is {latest})")

    @property
    def max_data_epochs(self) -> int:
        return self.config.config.max_data_epochs if self.config else RunConfig().max_data_epochs

    # ------------------------------------------------------------------------------------------------ chunks

    @property
    def sync_cursor(self) -> int:
        """Highest dataset sample id already synced (chunked or pending): the next ListSamples starts after it."""
        return self._sync_cursor

    def add_samples(self, samples: Sequence[tuple[int, int, int]], *, flush: bool) -> list[int]:
        """Cut newly synced (sample_id, bucket width, bucket height) into chunks; returns the new chunk ids."""
        with self._lock:
            fresh = [s for s in samples if s[0] > self._sync_cursor]
            if not fresh and not (flush and self._pending):
                return []
            chunk_size = (self.config.config if self.config else RunConfig()).chunk_size
            new_chunks, pending = cut_chunks(self._pending, fresh, chunk_size=chunk_size, flush=flush)
            cursor = max([self._sync_cursor, *(s[0] for s in fresh)])
            with self._conn.begin():
                ids = self._insert_chunks(new_chunks)
                self._conn.execute(db.pending_samples.delete())
                rows = [{"sample_id": sid, "bucket_width": w, "bucket_height": h}
                        for (w, h), sids in pending.items() for sid in sids]
                if rows:
                    self._conn.execute(db.pending_samples.insert(), rows)
                db.set_meta(self._conn, "sync_after_id", str(cursor))
            self._pending, self._sync_cursor = pending, cursor
            self._apply_new_chunks(ids, new_chunks)
            return ids

    def add_chunks(self, chunks: Iterable[tuple[tuple[int, int], Sequence[int]]]) -> list[int]:
        """Add ready-made chunks ((bucket width, height), sample ids): seeding for tests and benchmarks."""
        chunks = [(bucket, list(sample_ids)) for bucket, sample_ids in chunks]
        with self._lock:
            with self._conn.begin():
                ids = self._insert_chunks(chunks)
            self._apply_new_chunks(ids, chunks)
            return ids

    def _insert_chunks(self, chunks: list[tuple[tuple[int, int], list[int]]]) -> list[int]:
        first = max(self.queue.chunks, default=0) + 1  # one writer process (flock), so ids cannot collide
        ids = list(range(first, first + len(chunks)))
        if chunks:
            now = self.clock()
            self._conn.execute(db.chunks.insert(), [
                {"id": cid, "bucket_width": w, "bucket_height": h, "sample_ids": ",".join(map(str, sids)),
                 "n_samples": len(sids), "times_trained": 0, "created": now}
                for cid, ((w, h), sids) in zip(ids, chunks)])
        return ids

    def _apply_new_chunks(self, ids: list[int], chunks: list[tuple[tuple[int, int], list[int]]]) -> None:
        for cid, ((w, h), sids) in zip(ids, chunks):
            self._chunk_info[cid] = (w, h, ",".join(map(str, sids)))
            self.queue.add_chunk(cid, n_samples=len(sids))
