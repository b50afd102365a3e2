"""DHT admission: every DHT request and response in the swarm carries a coordinator-signed credential.

hivemind's `TokenAuthorizerBase` (hivemind.utils.auth) signs each DHT request with the peer's RSA key and attaches an
`AccessToken`; the serving node checks the token, the signature, a nonce and the time. Our token is the credential:
- `AccessToken.username` holds the credential's wire form (it carries its own coordinator signature);
- `AccessToken.public_key` is the peer's DHT RSA key, which must equal the key bound in the credential;
- `expiration_time` repeats the expiry for hivemind's logs; `signature` is unused.
A node without a valid credential gets no answer (hivemind drops the request), and a node that answers without one
is ignored, so an outsider who knows the bootstrap address and the run id can neither read nor write the run's keys.

One RSA key serves both as the libp2p identity (so the peer id is known before the DHT starts and can be put in the
credential) and as the DHT signing key: `load_or_create_identity` makes that file.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Protocol

from cryptography.hazmat.primitives import serialization
from hivemind.p2p import P2P, PeerID
from hivemind.proto import crypto_pb2
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey

from swarm.logs import get_logger
from swarm.trust.credentials import (
    Credential,
    CredentialError,
    issue_credential,
    load_or_create_signing_key,
    public_key_bytes,
    public_key_of,
    verify_credential,
)

logger = get_logger(__name__)

# Ask the credential source again when less than this much of the credential is left (the trainer renews at half
# its lifetime, so a fresh one is normally there already).
REFRESH_MARGIN_S = 30.0


class CredentialSource(Protocol):
    def __call__(self) -> str:
        """The newest credential (wire form) of this peer; raises CredentialError when there is none."""


class CredentialFile:
    """Reads the credential the trainer's renewal loop writes (the DHT runs in a forked process, so a file is the
    simplest channel that always shows the newest credential). Picklable."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)

    def __call__(self) -> str:
        try:
            return Path(self.path).read_text().strip()
        except FileNotFoundError as e:
            raise CredentialError(f"no credential yet at {self.path}") from e

    @staticmethod
    def write(path: str | os.PathLike, wire: str) -> None:
        """Replace the credential file atomically (0600): a reader never sees half a credential."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(wire)
        os.replace(tmp, path)


class SelfIssuedCredential:
    """A credential source for host infrastructure that holds the coordinator's signing key (the bootstrap DHT run by
    `swarm host`): it signs a fresh credential for its own peer id and RSA key whenever asked. Picklable."""

    def __init__(self, *, signing_key_path: str | os.PathLike, token_name: str, peer_id: str,
                 dht_public_key: bytes, lifetime_s: float = 600.0):
        self.signing_key_path, self.token_name, self.peer_id = str(signing_key_path), token_name, peer_id
        self.dht_public_key, self.lifetime_s = dht_public_key, lifetime_s

    def coordinator_public_key(self) -> bytes:
        return public_key_bytes(load_or_create_signing_key(self.signing_key_path))

    def __call__(self) -> str:
        return issue_credential(load_or_create_signing_key(self.signing_key_path), token_name=self.token_name,
                                peer_id=self.peer_id, dht_public_key=self.dht_public_key,
                                lifetime_s=self.lifetime_s)


class CredentialAuthorizer(TokenAuthorizerBase):
    """hivemind DHT authorizer: pass as `hivemind.DHT(..., authorizer=CredentialAuthorizer(...))`.

    :param coordinator_public_key: the run's coordinator key (32 raw bytes or 64 hex digits); credentials signed by
      any other key are refused.
    :param credential_source: returns this peer's current credential (wire form), e.g. a `CredentialFile`.
    :param local_private_key: the RSA key the credential binds (see `load_or_create_identity`).
    """

    def __init__(self, *, coordinator_public_key: bytes | str, credential_source: Callable[[], str],
                 local_private_key: RSAPrivateKey):
        super().__init__(local_private_key)
        self._coordinator_key_bytes = public_key_bytes(public_key_of(coordinator_public_key))
        self._credential_source = credential_source

    @property
    def coordinator_public_key(self) -> bytes:
        return self._coordinator_key_bytes

    async def get_token(self) -> AccessToken:
        wire = self._credential_source()
        credential = verify_credential(wire, self._coordinator_key_bytes,
                                       dht_public_key=self.local_public_key.to_bytes())
        return AccessToken(username=wire, public_key=credential.dht_public_key,
                           expiration_time=str(credential.expires_at))

    def is_token_valid(self, access_token: AccessToken) -> bool:
        return self.check_token(access_token) is not None

    def check_token(self, access_token: AccessToken) -> Credential | None:
        try:
            return verify_credential(access_token.username, self._coordinator_key_bytes,
                                     dht_public_key=access_token.public_key)
        except CredentialError as e:
            logger.debug(f"DHT request or response refused: {e}")
            return None

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        try:
            return float(access_token.expiration_time) - time.time() < REFRESH_MARGIN_S
        except ValueError:
            return True

    def __getstate__(self):
        # The base class holds an asyncio.Lock and a nonce store bound to the creating process: rebuild them there.
        return dict(coordinator_public_key=self._coordinator_key_bytes, credential_source=self._credential_source,
                    local_private_key=self._local_private_key)

    def __setstate__(self, state):
        self.__init__(**state)


def load_or_create_identity(path: str | os.PathLike) -> tuple[str, RSAPrivateKey]:
    """(base58 peer id, RSA key) of the libp2p identity file at `path`, created (0400) when missing.

    Pass the same path as hivemind.DHT's `identity_path`: the DHT then runs with this peer id, and the key signs DHT
    requests, so the coordinator can bind both in one credential before the DHT starts.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        P2P.generate_identity(str(path))
    raw = path.read_bytes()
    proto = crypto_pb2.PrivateKey.FromString(raw)
    if proto.key_type != crypto_pb2.KeyType.RSA:
        raise CredentialError(f"{path} holds a non-RSA libp2p identity; delete it to create an RSA one")
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key._private_key = serialization.load_der_private_key(proto.data, password=None)
    return PeerID.from_identity(raw).to_base58(), key
