"""Who may take part in averaging: settings, credential publication in the DHT, and the per-peer admission cache.

An averaging RPC's caller is authenticated by libp2p (P2PContext.remote_id is the peer id whose key signed the
connection), but hivemind's averaging requests carry no room for a credential. So every peer publishes its credential
in the DHT under `TrustSettings.credentials_key` (subkey: its base58 peer id) and an averager looks the caller's
credential up there. Writing that key needs a credential already (the DHT authorizer), and a credential is only
accepted for the peer id it names, so publishing someone else's credential gains nothing.

Lookups are cached until the credential's expiry (so a revoked token's peer, which cannot renew, is refused within one
credential lifetime) and refusals for `refusal_cache_s` (so an outsider hammering a peer costs one DHT lookup a
second, not one per request).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from swarm.logs import get_logger
from swarm.trust.credentials import Credential, CredentialError, public_key_bytes, public_key_of, verify_credential
from swarm.trust.robust import RobustRules

logger = get_logger(__name__)


@dataclass(frozen=True)
class TrustSettings:
    """Everything a guarded averager needs (plain data: it crosses into hivemind's forked processes).

    :param run_id: the run's id; the credential key and the averagers' prefixes derive from it.
    :param coordinator_public_key: 32 raw bytes (or 64 hex digits) of the coordinator's Ed25519 key.
    :param enabled: False turns every check off (the averagers are hivemind's own classes), for the overhead bench.
    :param max_state_distance: a downloaded state whose parameters differ from the local copy by more than this many
      times the local norm is refused (it is garbage or an attack, not a newer version of the same model).
    :param ban_s: a peer whose contribution was dropped (non-finite parts, a garbage answer for the slice it reduced,
      a bad state) is left out of this peer's averaging for this long; clipping alone never bans (honest peers get
      clipped now and then).
    :param budgets_path: the file the trainer keeps the coordinator's weight budgets in (swarm.trust.budget); None:
      claims are capped per round only.
    """
    run_id: str
    coordinator_public_key: bytes
    enabled: bool = True
    rules: RobustRules = field(default_factory=RobustRules)
    refusal_cache_s: float = 1.0
    lookup_timeout_s: float = 5.0
    max_state_distance: float = 10.0
    ban_s: float = 60.0
    budgets_path: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "coordinator_public_key",
                           public_key_bytes(public_key_of(self.coordinator_public_key)))
        if not self.run_id:
            raise ValueError("run_id must be non-empty")
        if not self.max_state_distance > 0:
            raise ValueError(f"max_state_distance must be > 0, got {self.max_state_distance}")

    @property
    def credentials_key(self) -> str:
        return f"{self.run_id}_credentials"


def publish_credential(dht: Any, settings: TrustSettings, wire: str, *, timeout: float = 10.0) -> bool:
    """Store this peer's credential in the DHT until it expires; True when stored. Call after each renewal."""
    credential = verify_credential(wire, settings.coordinator_public_key, peer_id=dht.peer_id.to_base58())
    future = dht.store(settings.credentials_key, subkey=credential.peer_id, value=wire,
                       expiration_time=credential.expires_at, return_future=True)
    try:
        return bool(future.result(timeout=timeout))
    except Exception as e:  # noqa: BLE001 - the caller's renewal loop logs and retries
        logger.warning(f"could not publish the credential in the DHT: {e!r}")
        return False


class AdmissionCache:
    """Credential per peer id, looked up in the DHT and cached (see the module docstring). Lives in one event loop."""

    def __init__(self, settings: TrustSettings):
        self.settings = settings
        self._entries: dict[str, tuple[Credential | None, float]] = {}

    def cached(self, peer_id: str, *, now: float | None = None) -> Credential | None:
        now = time.time() if now is None else now
        credential, valid_until = self._entries.get(peer_id, (None, 0.0))
        return credential if credential is not None and valid_until > now else None

    async def credential_of(self, dht: Any, peer_id: str) -> Credential | None:
        """The peer's valid credential, or None when it has none (or it expired, or the lookup failed)."""
        now = time.time()
        entry = self._entries.get(peer_id)
        if entry is not None and entry[1] > now:
            return entry[0]
        await self.refresh(dht)
        entry = self._entries.get(peer_id)
        if entry is not None and entry[1] > time.time():
            return entry[0]
        logger.info(f"peer {peer_id} holds no valid credential in the DHT: refused")
        self._entries[peer_id] = (None, time.time() + self.settings.refusal_cache_s)
        if len(self._entries) > 10_000:  # outsiders with fresh ids must not grow this forever
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
        return None

    async def refresh(self, dht: Any) -> int:
        """Fetch every published credential in one DHT lookup and cache the valid ones; returns how many.

        One lookup serves the whole group: RPC handlers then answer from the cache, so a slow DHT (a loaded machine)
        does not turn into refused joins. The guard also calls this periodically in the background."""
        import asyncio

        try:
            found = await asyncio.wait_for(dht.get(self.settings.credentials_key, latest=True, return_future=True),
                                           timeout=self.settings.lookup_timeout_s)
        except Exception as e:  # noqa: BLE001 - a failed lookup is a refusal, retried after refusal_cache_s
            logger.warning(f"credential lookup failed: {e!r}")
            return 0
        entries = getattr(found, "value", None)
        valid = 0
        for peer_id, item in (entries.items() if isinstance(entries, dict) else ()):
            try:
                credential = verify_credential(getattr(item, "value", b""), self.settings.coordinator_public_key,
                                               peer_id=str(peer_id))
            except CredentialError as e:
                logger.debug(f"peer {peer_id}: {e}")
                continue
            self._entries[str(peer_id)] = (credential, credential.expires_at)
            valid += 1
        return valid
