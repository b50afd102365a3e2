"""Run config versions in the coordinator database: store on change, show, and set while the swarm runs.

A version is immutable once stored; a change is a new version. Trainers see the current version number in every
heartbeat and lease response and re-fetch the config at their next chunk boundary. Keys in
swarm.runconfig.RESTART_KEYS (the model, the seed, ...) cannot be applied to a running peer: trainers stop with a
message saying so, and must be restarted.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import sqlalchemy as sa
import yaml

from swarm.runconfig import ConfigError, RunConfig, load_yaml, restart_needed, validate, validate_run_id, yaml_float
from swarm_coordinator import db

_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}


@dataclass(frozen=True)
class ConfigVersion:
    version: int
    run_id: str
    config: RunConfig
    created: float

    @property
    def config_json(self) -> str:
        return self.config.to_json()


def _row_to_version(row) -> ConfigVersion:
    return ConfigVersion(version=row.version, run_id=row.run_id, config=RunConfig.from_json(row.config_json),
                         created=row.created)


def latest(conn: sa.Connection) -> ConfigVersion | None:
    row = conn.execute(sa.select(db.config_versions).order_by(db.config_versions.c.version.desc()).limit(1)).first()
    return _row_to_version(row) if row else None


def get(conn: sa.Connection, version: int) -> ConfigVersion | None:
    row = conn.execute(sa.select(db.config_versions).where(db.config_versions.c.version == version)).first()
    return _row_to_version(row) if row else None


def latest_version_number(conn: sa.Connection) -> int:
    return conn.execute(sa.select(sa.func.max(db.config_versions.c.version))).scalar() or 0


def store_if_changed(conn: sa.Connection, config: RunConfig, *, run_id: str, now: float | None = None
                     ) -> tuple[ConfigVersion, bool]:
    """Store `config` as a new version unless it equals the latest one (a restart with the same file keeps it)."""
    validate_run_id(run_id)
    current = latest(conn)
    if current is not None and current.config_json == config.to_json() and current.run_id == run_id:
        return current, False
    created = time.time() if now is None else now
    result = conn.execute(db.config_versions.insert().values(run_id=run_id, config_json=config.to_json(),
                                                             created=created))
    return ConfigVersion(result.inserted_primary_key[0], run_id, config, created), True


def parse_assignments(pairs: list[str]) -> dict:
    """KEY=VALUE pairs from the command line, each value read as YAML and coerced to the key's type."""
    changes: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{pair!r} is not KEY=VALUE (example: lr=5e-5)")
        if key not in _FIELD_TYPES:
            raise ConfigError(f"unknown run config key {key!r}; known keys: {', '.join(sorted(_FIELD_TYPES))}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot read {text!r}: {e}") from None
        if _FIELD_TYPES[key] in ("float", float):
            value = yaml_float(value)  # YAML 1.1 reads "5e-5" (no dot) as a string
        changes[key] = value
    return changes


def set_config(db_path: str, *, file: str | None = None, assignments: list[str] | None = None,
               run_id: str | None = None) -> tuple[ConfigVersion | None, ConfigVersion, bool]:
    """Store a new version from a YAML file and/or KEY=VALUE changes to the current one.

    Returns (previous version, current version, whether a new version was stored).
    """
    if not file and not assignments:
        raise ConfigError("nothing to set: pass --file run.yaml and/or KEY=VALUE pairs")
    engine = db.open_engine(db_path)
    try:
        with engine.begin() as conn:
            previous = latest(conn)
            base = load_yaml(file) if file else (previous.config if previous else RunConfig())
            if assignments:
                base = validate({**json.loads(base.to_json()), **parse_assignments(assignments)})
            if not run_id and previous is None:
                from swarm_coordinator.admission import random_run_id  # unguessable, as the coordinator makes them

                run_id = random_run_id()
            run_id = run_id or previous.run_id
            _check_reg_samples(conn, base)
            current, created = store_if_changed(conn, base, run_id=run_id)
        return previous, current, created
    finally:
        engine.dispose()


def _check_reg_samples(conn: sa.Connection, config: RunConfig) -> None:
    """reg_ratio > 0 needs regularization samples: refused once the dataset was synced and held none."""
    from swarm_coordinator.regularization import reg_ratio_problem

    synced = int(db.get_meta(conn, "sync_after_id") or 0) > 0
    reg_samples = conn.execute(sa.select(sa.func.count()).select_from(db.reg_samples)).scalar() or 0
    problem = reg_ratio_problem(config.reg_ratio, reg_samples=reg_samples) if synced else None
    if problem:
        raise ConfigError(f"{problem} (the coordinator syncs new samples within seconds; set it again then)")


def show_config(db_path: str, *, version: int = 0) -> ConfigVersion:
    engine = db.open_engine(db_path)
    try:
        with engine.connect() as conn:
            found = get(conn, version) if version else latest(conn)
            if found is None:
                last = latest_version_number(conn)
                raise ConfigError(f"config version {version} does not exist (latest is {last})" if version else
                                  f"{db_path} holds no run config yet: start the coordinator, or `swarm config set`")
            return found
    finally:
        engine.dispose()


def changed_keys(old: RunConfig | None, new: RunConfig) -> list[str]:
    if old is None:
        return []
    old_values, new_values = json.loads(old.to_json()), json.loads(new.to_json())
    return sorted(k for k in new_values if old_values.get(k) != new_values[k])


def restart_keys_changed(old: RunConfig | None, new: RunConfig) -> list[str]:
    return restart_needed(old, new) if old is not None else []


def to_yaml(version: ConfigVersion) -> str:
    body = yaml.safe_dump(json.loads(version.config_json), sort_keys=True)
    return f"# config version {version.version}, run id {version.run_id}\n{body}"
