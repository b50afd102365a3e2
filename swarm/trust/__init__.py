"""Swarm trust: admission bound to join tokens, robust aggregation, and who did what (issue 10).

- `credentials` (pure: the coordinator imports only this): coordinator-signed, short-lived credentials.
- `robust` (pure torch): drop non-finite parts, cap claimed weights, CenteredClip.
- `dht_auth`: hivemind DHT authorizer that requires a credential on every DHT request and response.
- `admission`, `reducer`, `guard`: the guard for hivemind averagers; THE entry points are `averager_class` and
  `optimizer_class` (see guard.py's docstring), configured by one `TrustSettings`.

Names are imported lazily, so `import swarm.trust.credentials` never pulls in hivemind.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TrustSettings": "swarm.trust.admission",
    "publish_credential": "swarm.trust.admission",
    "averager_class": "swarm.trust.guard",
    "optimizer_class": "swarm.trust.guard",
    "CredentialAuthorizer": "swarm.trust.dht_auth",
    "CredentialFile": "swarm.trust.dht_auth",
    "load_or_create_identity": "swarm.trust.dht_auth",
    "RobustRules": "swarm.trust.robust",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'swarm.trust' has no attribute {name!r}")
