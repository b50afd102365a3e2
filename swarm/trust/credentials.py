"""Credentials: the coordinator's signed statement "this hivemind peer holds join token NAME until EXPIRY".

Pure (no hivemind, no gRPC): the coordinator imports this module alone to issue credentials, and every peer uses it to
check them. A credential binds
- the join token's name (who is accountable for the peer),
- the peer's libp2p peer id (base58; averaging RPCs authenticate the caller's peer id at the transport, so the peer id
  is what an averager checks),
- the peer's DHT RSA public key (hivemind signs each DHT request with it, so the DHT authorizer checks that key),
- issued-at and expiry (Unix seconds; short-lived, so a revoked token's peers fall out within one lifetime),
- a weight cap: the most samples the peer may claim in one averaging round.

It is signed with the coordinator's Ed25519 key. The wire form is ASCII: `swc1.<payload>.<signature>` (URL-safe
base64 of canonical JSON, then of the 64-byte signature), so it fits in a DHT value, a file or a proto string.
"""
from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

WIRE_PREFIX = "swc1"
DEFAULT_LIFETIME_S = 600.0
# A credential checked this long after its expiry by a peer whose clock runs behind is still refused: clocks of
# volunteers drift by seconds, not minutes, and hivemind's own DHT auth allows one minute either way.
MAX_CLOCK_SKEW_S = 60.0
MAX_WIRE_LENGTH = 4096  # a credential is ~700 bytes; anything much larger is garbage, refuse before decoding


class CredentialError(ValueError):
    """A credential that must not be accepted; the message says why (bad signature, expired, wrong peer...)."""


@dataclass(frozen=True)
class Credential:
    token_name: str
    peer_id: str  # base58, as hivemind's PeerID.to_base58() writes it
    dht_public_key: bytes  # hivemind RSAPublicKey.to_bytes()
    issued_at: float
    expires_at: float
    max_weight: float  # samples this peer may claim per averaging round; 0 means no cap from the coordinator

    def payload(self) -> bytes:
        """Canonical bytes that the signature covers (sorted JSON, bytes as base64)."""
        fields = asdict(self)
        fields["dht_public_key"] = _b64(self.dht_public_key)
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def remaining_s(self, *, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


def issue_credential(key: Ed25519PrivateKey, *, token_name: str, peer_id: str, dht_public_key: bytes,
                     lifetime_s: float = DEFAULT_LIFETIME_S, max_weight: float = 0.0,
                     now: float | None = None) -> str:
    """Sign a credential and return its wire form. Validates its inputs (they come from a remote trainer)."""
    if not token_name or not isinstance(token_name, str):
        raise CredentialError("token name must be a non-empty string")
    if not peer_id or not isinstance(peer_id, str) or len(peer_id) > 128 or not peer_id.isalnum():
        raise CredentialError(f"peer id must be a base58 libp2p peer id, got {peer_id!r:.80}")
    if not dht_public_key or len(dht_public_key) > 1024:
        raise CredentialError("the DHT public key must be 1..1024 bytes (hivemind RSAPublicKey.to_bytes())")
    if not lifetime_s > 0:
        raise CredentialError(f"credential lifetime must be positive, got {lifetime_s}")
    if not max_weight >= 0:
        raise CredentialError(f"max weight must be >= 0, got {max_weight}")
    issued_at = time.time() if now is None else now
    credential = Credential(token_name=token_name, peer_id=peer_id, dht_public_key=bytes(dht_public_key),
                            issued_at=issued_at, expires_at=issued_at + lifetime_s, max_weight=float(max_weight))
    payload = credential.payload()
    return f"{WIRE_PREFIX}.{_b64(payload)}.{_b64(key.sign(payload))}"


def parse_credential(wire: str | bytes) -> tuple[Credential, bytes, bytes]:
    """(credential, signed payload, signature) from the wire form, WITHOUT checking the signature."""
    if isinstance(wire, bytes):
        try:
            wire = wire.decode("ascii")
        except UnicodeDecodeError as e:
            raise CredentialError("credential is not ASCII") from e
    if not isinstance(wire, str) or len(wire) > MAX_WIRE_LENGTH:
        raise CredentialError("credential is not a string of sane length")
    parts = wire.strip().split(".")
    if len(parts) != 3 or parts[0] != WIRE_PREFIX:
        raise CredentialError(f"credential must look like {WIRE_PREFIX}.<payload>.<signature>")
    try:
        payload, signature = _unb64(parts[1]), _unb64(parts[2])
        fields = json.loads(payload)
        fields["dht_public_key"] = _unb64(fields["dht_public_key"])
        credential = Credential(token_name=str(fields["token_name"]), peer_id=str(fields["peer_id"]),
                                dht_public_key=fields["dht_public_key"], issued_at=float(fields["issued_at"]),
                                expires_at=float(fields["expires_at"]), max_weight=float(fields["max_weight"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CredentialError(f"credential payload is malformed: {e}") from e
    return credential, payload, signature


def verify_credential(wire: str | bytes, coordinator_key: Ed25519PublicKey | bytes, *, peer_id: str | None = None,
                      dht_public_key: bytes | None = None, now: float | None = None) -> Credential:
    """The credential if it is signed by the coordinator, not expired, and (when given) for this peer id / DHT key.

    Raises CredentialError saying which check failed.
    """
    credential, payload, signature = parse_credential(wire)
    try:
        public_key_of(coordinator_key).verify(signature, payload)
    except InvalidSignature as e:
        raise CredentialError("credential is not signed by this swarm's coordinator") from e
    now = time.time() if now is None else now
    if credential.expires_at <= now:
        raise CredentialError(f"credential of token {credential.token_name!r} expired "
                              f"{now - credential.expires_at:.0f}s ago")
    if credential.issued_at > now + MAX_CLOCK_SKEW_S:
        raise CredentialError("credential is issued in the future (check this machine's clock)")
    if peer_id is not None and credential.peer_id != peer_id:
        raise CredentialError(f"credential is for peer {credential.peer_id}, not {peer_id}")
    if dht_public_key is not None and credential.dht_public_key != dht_public_key:
        raise CredentialError("credential is for another DHT key")
    return credential


# --- the coordinator's signing key --------------------------------------------------------------------------------

def load_or_create_signing_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """The coordinator's Ed25519 key from `path` (PEM, PKCS#8), created there with mode 0600 on first start.

    Creation is exclusive (O_EXCL), so two processes starting at once end up with the same key, not two.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race: load its key below
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise CredentialError(f"{path} is not an Ed25519 private key in PEM: move it away to create a new one "
                              f"(every peer then needs a new credential) ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise CredentialError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of the public key (what peers are given, as hex, to check credentials)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_of(key: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from raw bytes, a 64-digit hex string, or a key object."""
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, str):
        try:
            key = bytes.fromhex(key.strip())
        except ValueError as e:
            raise CredentialError("the coordinator public key must be 64 hex digits") from e
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise CredentialError("the coordinator public key must be 32 bytes (64 hex digits)")
    return Ed25519PublicKey.from_public_bytes(bytes(key))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
