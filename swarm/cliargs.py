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
