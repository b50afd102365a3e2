"""Join tokens: created once and shown once, stored only as their sha256, checked on every RPC but health.

The 2022 swarm had no authentication at all. A token is random (256 bits), so a plain sha256 is enough to make the
stored hash useless to whoever reads the database; no salt or slow hash is needed as for passwords.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from swarm.runconfig import ConfigError
from swarm_coordinator import db

TOKEN_PREFIX = "swt_"
SHOWN_PREFIX_LENGTH = 10  # "swt_" + 6 random characters: enough to tell tokens apart, useless to guess the rest
MIN_REVOKE_PREFIX = 6
TOKEN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}$")
HOW_TO_GET_ONE = "ask the swarm host for a join token: `swarm token create`"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(name: str) -> str:
    if not TOKEN_NAME_PATTERN.fullmatch(name or ""):
        raise ConfigError(f"token name {name!r} is not valid: 1-64 letters, digits, spaces or _.@- starting with a "
                          f"letter or digit")
    return name


def create_token(db_path: str, *, name: str, replace: bool = False) -> str:
    """Create a join token named `name` and return it; only its hash is stored, so this is the one chance to see it.

    With `replace`, earlier tokens of the same name are revoked in the same transaction (a service that makes itself
    a fresh token at each start).
    """
    _check_name(name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    engine = db.open_engine(db_path)
    try:
        with engine.begin() as conn:
            now = time.time()
            if replace:
                conn.execute(db.tokens.update().where(db.tokens.c.name == name, db.tokens.c.revoked.is_(None))
                             .values(revoked=now))
            conn.execute(db.tokens.insert().values(token_hash=hash_token(token), prefix=token[:SHOWN_PREFIX_LENGTH],
                                                   name=name, created=now))
    finally:
        engine.dispose()
    return token


@dataclass(frozen=True)
class TokenInfo:
    name: str
    prefix: str
    created: float
    revoked: float | None


def list_tokens(db_path: str) -> list[TokenInfo]:
    engine = db.open_engine(db_path)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(db.tokens).order_by(db.tokens.c.id)).all()
    finally:
        engine.dispose()
    return [TokenInfo(r.name, r.prefix, r.created, r.revoked) for r in rows]


def revoke_tokens(db_path: str, name_or_prefix: str) -> list[TokenInfo]:
    """Revoke every live token with this name, or the one token this is (or starts with). Returns what was revoked."""
    key = (name_or_prefix or "").strip()
    if not key:
        raise ConfigError("say which token to revoke: its name, the token itself, or the start of it (`token list`)")
    engine = db.open_engine(db_path)
    try:
        with engine.begin() as conn:
            live = conn.execute(sa.select(db.tokens).where(db.tokens.c.revoked.is_(None))).all()
            matches = [r for r in live if r.name == key]
            if not matches:
                matches = [r for r in live if r.token_hash == hash_token(key)]
            if not matches and len(key) >= MIN_REVOKE_PREFIX:
                matches = [r for r in live if key.startswith(r.prefix) or r.prefix.startswith(key)]
                if len(matches) > 1:
                    raise ConfigError(f"{key!r} matches {len(matches)} tokens "
                                      f"({', '.join(r.name for r in matches)}): give more of the token, or its name")
            if not matches:
                raise ConfigError(f"no live token is named or starts with {key!r}: see `swarm token list`")
            now = time.time()
            conn.execute(db.tokens.update().where(db.tokens.c.id.in_([r.id for r in matches])).values(revoked=now))
    finally:
        engine.dispose()
    return [TokenInfo(r.name, r.prefix, r.created, now) for r in matches]


class TokenChecker:
    """`check(token) -> error message or None` for swarm.rpc.TokenAuthInterceptor, with a short cache.

    A hit costs a dict lookup; a miss one indexed SELECT. New tokens work at once (misses are never cached);
    a revoked token stops working within `ttl` seconds.
    """

    def __init__(self, engine: sa.Engine, *, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 10_000):
        self._engine, self._ttl, self._clock, self._max_entries = engine, ttl, clock, max_entries
        self._valid_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, token: str | None) -> str | None:
        if not token:
            return f"missing join token: {HOW_TO_GET_ONE}, and pass it with --token (or SWARM_TOKEN)"
        now = self._clock()
        if self._valid_until.get(token, 0.0) > now:
            return None
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(db.tokens.c.name, db.tokens.c.revoked)
                               .where(db.tokens.c.token_hash == hash_token(token))).first()
        if row is None:
            return f"invalid join token: {HOW_TO_GET_ONE}"
        if row.revoked is not None:
            return f"join token {row.name!r} was revoked: {HOW_TO_GET_ONE}"
        with self._lock:
            if len(self._valid_until) >= self._max_entries:
                self._valid_until.clear()
            self._valid_until[token] = now + self._ttl
        return None
