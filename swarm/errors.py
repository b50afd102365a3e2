"""Errors shared by every floor: a service's command, the launcher and the foundation raise the same types.

The `swarm` dispatcher prints either as `swarm COMMAND: error: MESSAGE` and exits with code 2, so the message must
say what to fix.
"""
from __future__ import annotations


class UsageError(Exception):
    """Bad user input found after argument parsing; the message says what to fix."""


class ConfigError(ValueError):
    """A run config that cannot be used; the message says which key is wrong and how to fix it."""
