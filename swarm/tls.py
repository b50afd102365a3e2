"""TLS for the host's gRPC services: a self-signed certificate, server credentials, and clients that pin it.

A volunteer's bearer token must not cross the internet in the clear, and a volunteer cannot be asked to run a CA.
So the host makes a self-signed certificate once (`make_self_signed`), and the join line carries its sha256
fingerprint; a client fetches the server's certificate, refuses it unless its fingerprint is the pinned one, and
then lets gRPC verify the connection against exactly that certificate (so only the holder of its key can answer).
A host with a real certificate gives clients a CA file instead. Plaintext is allowed only on loopback (the demo,
tests) or with an explicit --insecure ($SWARM_INSECURE=1): `plaintext_refusal` says what to pass otherwise, for a
client dialing and for a server binding.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import ssl
import time
from dataclasses import dataclass

from swarm.errors import UsageError

FINGERPRINT_ENV = "SWARM_TLS_FINGERPRINT"
CA_FILE_ENV = "SWARM_TLS_CA_FILE"
# "1": plaintext gRPC off loopback is allowed (a private network the operator trusts); what --insecure sets.
INSECURE_ENV = "SWARM_INSECURE"


class TlsError(UsageError, ValueError):
    """A TLS setting, a server's certificate or a plaintext address that cannot be used; the message says what to
    fix (a UsageError: the `swarm` command prints it as its error, no traceback)."""


class TlsUnreachable(TlsError):
    """The server's certificate could not be fetched because the server did not answer (down, restarting, a network
    blip): worth trying again later, unlike a server that answers without TLS or with another certificate."""


@dataclass(frozen=True)
class ClientTls:
    """How a client checks the server: a pinned sha256 fingerprint of its certificate, or a CA file."""
    fingerprint: str | None = None  # "sha256:<64 hex>" (colons between bytes are accepted)
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.fingerprint is not None:
            object.__setattr__(self, "fingerprint", normalize_fingerprint(self.fingerprint))
        if self.ca_file is not None and not os.path.isfile(os.path.expanduser(self.ca_file)):
            raise TlsError(f"TLS CA file {self.ca_file} does not exist")
        if (self.fingerprint is None) == (self.ca_file is None):
            raise TlsError("give exactly one of a certificate fingerprint (--tls-fingerprint) or a CA file")

    @classmethod
    def from_env(cls) -> "ClientTls | None":
        fingerprint, ca_file = os.environ.get(FINGERPRINT_ENV) or None, os.environ.get(CA_FILE_ENV) or None
        return cls(fingerprint=fingerprint, ca_file=ca_file) if fingerprint or ca_file else None


def normalize_fingerprint(text: str) -> str:
    """"sha256:AB:CD..." or a bare hex digest -> "sha256:abcd..."; TlsError for anything else."""
    digest = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise TlsError(f"TLS fingerprint {text[:80]!r} is not a sha256 fingerprint (sha256:<64 hex digits>)")
    return f"sha256:{digest}"


def fingerprint_of_pem(pem: str | bytes) -> str:
    """"sha256:<hex>" of the certificate's DER bytes: what `openssl x509 -fingerprint -sha256` shows, sans colons."""
    der = ssl.PEM_cert_to_DER_cert(pem.decode() if isinstance(pem, bytes) else pem)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_from_env() -> bool:
    """Whether $SWARM_INSECURE allows plaintext off loopback ("1", "true", "yes")."""
    return os.environ.get(INSECURE_ENV, "").strip().lower() in ("1", "true", "yes")


def plaintext_refusal(address: str, *, server: bool) -> str | None:
    """Why plaintext gRPC at `address` (HOST:PORT) is refused, or None where it is allowed (a loopback host).

    A client dialing or a server binding anywhere else would send or receive join tokens in the clear; the message
    says what to pass instead. The caller skips this check when --insecure was given."""
    host = address.rpartition(":")[0]
    if is_loopback(host):
        return None
    if server:
        return (f"refusing to serve plaintext gRPC on {address}: join tokens would cross the network in the clear. "
                f"Serve TLS with --tls-cert/--tls-key (`python -m swarm.tls CERT KEY HOSTNAME` makes a self-signed "
                f"pair and prints the fingerprint clients pin), listen on 127.0.0.1, or pass --insecure "
                f"(${INSECURE_ENV}=1) on a network you trust")
    return (f"refusing to dial {address} in plaintext gRPC: the join token would cross the network in the clear. "
            f"Pass the host's certificate fingerprint with --tls-fingerprint sha256:... (${FINGERPRINT_ENV}; the "
            f"join line from `swarm token create` carries it) or a CA file with --tls-ca-file (${CA_FILE_ENV}), "
            f"or --insecure (${INSECURE_ENV}=1) for a plaintext host on a network you trust")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def fingerprint_of_file(cert_path: str) -> str:
    """The fingerprint of the PEM certificate at `cert_path`; TlsError if it cannot be read."""
    try:
        with open(os.path.expanduser(cert_path)) as f:
            return fingerprint_of_pem(f.read())
    except (OSError, ValueError) as e:
        raise TlsError(f"cannot read the TLS certificate {cert_path}: {e}") from None


def make_self_signed(cert_path: str, key_path: str, *, hostnames: list[str], days: int = 3650) -> str:
    """Write a self-signed certificate (EC P-256) for `hostnames` (names or IPs) and its key (0600); returns its
    fingerprint. Existing files are kept: the fingerprint in volunteers' join lines must not change."""
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path) as f:
            return fingerprint_of_pem(f.read())
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for host in hostnames or ["localhost"]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    # Key first, certificate last, each renamed into place whole: a crash in between leaves no certificate, so the
    # next start makes a fresh pair instead of serving a certificate whose key is missing or torn.
    _write_whole(key_path, key_pem, mode=0o600)
    _write_whole(cert_path, cert_pem, mode=0o644)
    return fingerprint_of_pem(cert_pem)


def _write_whole(path: str, data: bytes, *, mode: int) -> None:
    """Write `data` to `path` through a temporary file, fsynced and renamed (all or nothing)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def server_credentials(cert_path: str, key_path: str):
    import grpc

    try:
        with open(cert_path, "rb") as f:
            cert = f.read()
        with open(key_path, "rb") as f:
            key = f.read()
    except OSError as e:
        raise TlsError(f"cannot read the TLS certificate or key: {e}") from None
    return grpc.ssl_server_credentials([(key, cert)])


# How long a pinned fetch tries a server that does not answer before giving up (TlsUnreachable).
PIN_RETRY_S = 30.0


def pinned_certificate(address: str, fingerprint: str, *, timeout: float = 10.0,
                       retry_for: float | None = None) -> bytes:
    """The server's certificate (PEM) if its fingerprint is `fingerprint`; TlsError saying so otherwise.

    A server that cannot be reached (restarting, a network blip) is tried again for `retry_for` seconds, as gRPC
    would retry an unavailable server; one that answers without TLS or with another certificate is refused at once."""
    host, port = split_address(address)
    deadline = time.monotonic() + (PIN_RETRY_S if retry_for is None else retry_for)
    delay = 0.5
    while True:
        try:
            pem = ssl.get_server_certificate((host, port), timeout=timeout)
            break
        except ssl.SSLError as e:
            raise TlsError(f"could not fetch the TLS certificate of {address}: {e} (is it serving TLS?)") from None
        except OSError as e:
            if time.monotonic() + delay > deadline:
                raise TlsUnreachable(f"could not fetch the TLS certificate of {address}: {e} (is the host up, and "
                               f"the address right?)") from None
            time.sleep(delay)
            delay = min(2 * delay, 5.0)
    got = fingerprint_of_pem(pem)
    if not hmac.compare_digest(got, normalize_fingerprint(fingerprint)):
        raise TlsError(f"the certificate of {address} has fingerprint {got}, not the pinned {fingerprint}: "
                       f"refusing to send the join token (check the join line, or someone is in between)")
    return pem.encode()


def channel_credentials(address: str, tls: ClientTls) -> tuple[object, list[tuple[str, str]]]:
    """(grpc channel credentials, extra channel options) for `address` under `tls`."""
    import grpc

    if tls.ca_file:
        with open(os.path.expanduser(tls.ca_file), "rb") as f:
            return grpc.ssl_channel_credentials(root_certificates=f.read()), []
    pem = pinned_certificate(address, tls.fingerprint)
    # The pinned certificate is the only root trusted; its own name is what gRPC checks the server against.
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        target = dns[0] if dns else str(names.get_values_for_type(x509.IPAddress)[0])
    except (x509.ExtensionNotFound, IndexError):
        target = cert.subject.rfc4514_string().removeprefix("CN=")
    return grpc.ssl_channel_credentials(root_certificates=pem), [("grpc.ssl_target_name_override", target)]


def certificate_names(args: list[str]) -> list[str]:
    """Host names and IPs from command-line words, each of which may hold several separated by commas or spaces
    (compose passes an env var like SWARM_TLS_NAMES as one word, maybe empty); order kept, duplicates dropped."""
    names: list[str] = []
    for word in args:
        for name in word.replace(",", " ").split():
            if name not in names:
                names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    """`python -m swarm.tls CERT KEY [HOSTNAME...]`: make a self-signed certificate (kept if it exists) and print
    its fingerprint, the value volunteers pin (SWARM_TLS_FINGERPRINT / the join line). The compose host runs this
    at every start on its `tls` volume: the first start makes the pair, later ones keep it."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m swarm.tls CERT.pem KEY.pem [HOSTNAME_OR_IP[,...]...]", file=sys.stderr)
        return 2
    print(make_self_signed(args[0], args[1], hostnames=certificate_names(args[2:]) or ["localhost"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
