"""Validators shared by every command line: one way to read a positive number, a port, a HOST:PORT address.

The `*_arg` functions are argparse `type=` callables: bad input raises `argparse.ArgumentTypeError`, which argparse
turns into `swarm COMMAND: error: argument --flag: MESSAGE`. The `check_*` functions validate values that did not come
through argparse (function arguments, parsed addresses) and raise `ValueError`.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

PORT_MIN = 0  # port 0 asks the OS for any free port; every service accepts it
PORT_MAX = 65535


def is_port(value: int) -> bool:
    """Whether `value` is a TCP port number a service may bind (0 = any free port)."""
    return isinstance(value, int) and not isinstance(value, bool) and PORT_MIN <= value <= PORT_MAX


def check_port(value: int, *, name: str) -> int:
    """`value` if it is a port number, else a ValueError naming `name` (e.g. "--metrics-port")."""
    if not is_port(value):
        raise ValueError(f"{name} must be a port between {PORT_MIN} and {PORT_MAX}, got {value!r}")
    return value


def split_address(text: str) -> tuple[str, int]:
    """HOST:PORT as (host, port); a ValueError says what is wrong. IPv6 hosts keep their brackets: [::1]:50051."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not is_port(int(port)):
        raise ValueError(f"must be HOST:PORT with a port between {PORT_MIN} and {PORT_MAX}, got {text!r}")
    return host, int(port)


def is_address(text: str) -> bool:
    """Whether `text` is HOST:PORT (see `split_address`)."""
    try:
        split_address(text)
    except ValueError:
        return False
    return True


def _number(text: str, kind: type, what: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float_arg(text: str) -> float:
    """A number > 0 (seconds, intervals, rates)."""
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int_arg(text: str) -> int:
    """A whole number >= 1 (counts, workers, sizes)."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def int_range_arg(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number between `low` and `high` (inclusive)."""
    def parse(text: str) -> int:
        value = _number(text, int, "a whole number")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value

    parse.__name__ = f"int_{low}_to_{high}"  # argparse names the type in some messages
    return parse


def port_arg(text: str) -> int:
    """A TCP port number; 0 picks any free port."""
    value = _number(text, int, "a port number")
    if not is_port(value):
        raise argparse.ArgumentTypeError(f"must be a port between {PORT_MIN} and {PORT_MAX}, got {text}")
    return value


def address_arg(text: str) -> str:
    """HOST:PORT, returned unchanged once checked."""
    try:
        split_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# --- TLS: how a command's gRPC clients check the host, and whether plaintext off loopback is allowed ---------------

def add_insecure_arg(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """--insecure: allow plaintext gRPC off loopback (join tokens in the clear), for a network the operator trusts."""
    what = ("serve plaintext gRPC on a non-loopback address, and dial other services in plaintext"
            if server else "dial a non-loopback host in plaintext gRPC")
    parser.add_argument("--insecure", action="store_true",
                        help=f"{what}: join tokens cross the network in the clear, so only on a network you trust "
                             f"(default: refused; env SWARM_INSECURE=1 does the same)")


def add_client_tls_args(parser: argparse.ArgumentParser) -> None:
    """--tls-fingerprint / --tls-ca-file / --insecure for a command that dials the host's services."""
    parser.add_argument("--tls-fingerprint", default=None, metavar="SHA256",
                        help="the host's TLS certificate fingerprint (sha256:...) to pin, as the join line from "
                             "`swarm token create` gives it (default: env SWARM_TLS_FINGERPRINT)")
    parser.add_argument("--tls-ca-file", default=None, metavar="PEM",
                        help="trust the host's certificate through this CA file instead (env SWARM_TLS_CA_FILE)")
    add_insecure_arg(parser, server=False)


def use_tls_args(args: argparse.Namespace, *, dials: str | None = None) -> None:
    """Apply a command's TLS flags to every gRPC channel and server of this process (swarm.rpc reads them from the
    environment: the trainer dials the dataset address the coordinator tells it with the same pin or CA file).
    UsageError for a malformed fingerprint, a missing CA file or both given, and for plaintext to `dials` (the
    address the command will dial first) off loopback without --insecure: said before any slow start-up."""
    import os

    from swarm import tls
    from swarm.errors import UsageError

    try:
        if getattr(args, "tls_fingerprint", None):
            os.environ[tls.FINGERPRINT_ENV] = tls.normalize_fingerprint(args.tls_fingerprint)
        if getattr(args, "tls_ca_file", None):
            os.environ[tls.CA_FILE_ENV] = args.tls_ca_file
        client_tls = tls.ClientTls.from_env()
    except tls.TlsError as e:
        raise UsageError(str(e)) from None
    if getattr(args, "insecure", False):
        os.environ[tls.INSECURE_ENV] = "1"
    if dials and client_tls is None and not tls.insecure_from_env():
        refusal = tls.plaintext_refusal(dials, server=False)
        if refusal:
            raise UsageError(refusal)
