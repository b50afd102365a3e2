"""The store's run config versions: which one is current, older ones peers still name, and `swarm config set`'s.

A version is immutable once stored (configs.py), so every version read once stays cached. The current version is
read without the lock: peers ask for it on every lease, and swapping one reference is atomic.
"""
from __future__ import annotations

from swarm.runconfig import RunConfig
from swarm_coordinator import configs, db
from swarm_coordinator.errors import UnknownConfigVersion
from swarm_coordinator.store.connection import StoreConnection

# meta key: sha256 of the run config file the coordinator last started with (--config).
SOURCE_DIGEST_KEY = "run_config_file_sha256"


class ConfigVersions:
    def __init__(self, db: StoreConnection, *, clock):
        self._db, self._clock = db, clock
        self._versions: dict[int, configs.ConfigVersion] = {}
        self.current: configs.ConfigVersion | None = None

    def load(self, conn) -> None:
        """Read the latest version (in the store's loading transaction)."""
        latest = configs.latest(conn)
        if latest is not None:
            self._make_current(latest)

    def _make_current(self, version: configs.ConfigVersion) -> None:
        self._versions[version.version] = version
        self.current = version

    @property
    def config(self) -> RunConfig:
        """The current run config, or the defaults before any is stored."""
        return self.current.config if self.current else RunConfig()

    def ensure(self, config: RunConfig | None, *, run_id: str,
               source_digest: str | None = None) -> tuple[configs.ConfigVersion, bool]:
        """Make `config` (or, when None, the stored one / the defaults) current under `run_id`; returns (version,
        whether a new one was stored). With `source_digest` (the run config file's hash), a file that is the one
        applied last time is not applied again, so a `swarm config set` made since then survives a restart."""
        with self._db.transaction() as conn:
            latest = configs.latest(conn)
            applied = db.get_meta(conn, SOURCE_DIGEST_KEY)
            if config is not None and latest is not None and source_digest is not None and applied == source_digest:
                config = None
            if config is None:
                config = latest.config if latest else RunConfig()
            version, created = configs.store_if_changed(conn, config, run_id=run_id, now=self._clock())
            if source_digest is not None:
                db.set_meta(conn, SOURCE_DIGEST_KEY, source_digest)
            self._make_current(version)
        return version, created

    def refresh(self) -> bool:
        """Pick up a version stored by `swarm config set` (another process). Returns whether the version changed."""
        with self._db.transaction() as conn:
            latest = configs.latest_version_number(conn)
            if self.current is not None and latest == self.current.version:
                return False
            version = configs.latest(conn)
            if version is None:
                return False
            self._make_current(version)
            return True

    def get(self, version: int = 0) -> configs.ConfigVersion | None:
        """Version `version` (0: the current one), None when it does not exist."""
        current = self.current
        if version == 0 or (current and version == current.version):
            return current
        if current is None or version > current.version:
            return None  # peers only ever learn versions from us: a newer one does not exist (no query for it)
        if version not in self._versions:
            with self._db.transaction() as conn:
                found = configs.get(conn, version)
            if found is None:
                return None
            self._versions[version] = found
        return self._versions[version]

    def check(self, version: int) -> None:
        """UnknownConfigVersion unless a peer's `version` exists: it must re-fetch the config first."""
        if version <= 0 or self.get(version) is None:
            latest = self.current.version if self.current else 0
            raise UnknownConfigVersion(f"unknown config version {version}; re-fetch the config with GetConfig "
                                       f"(current version is {latest})")
