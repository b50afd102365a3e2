"""TLS on by default for the compose host (issue 13 item 1), checked on the compose model docker-compose resolves:
the tls-cert job makes the certificate on the `tls` volume before either gRPC service starts, both serve it, and
every container of ours that dials them trusts it (the run itself is make compose-test's)."""
from __future__ import annotations

import pytest

from swarm_launcher.cli import build_parser
from tests.deploy import test_compose as base

# test_compose.py's fixtures: example.env filled in as a host would, and the model docker-compose resolves from it.
host_env, compose = base.host_env, base.compose
_swarm_args = base._swarm_args

pytestmark = pytest.mark.timeout(60)

CERT, KEY = "/tls/tls.crt", "/tls/tls.key"


def _mounts(service: dict) -> dict[str, str]:
    """container path -> volume (or host path) of a service's mounts, ':ro' kept."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
        else:
            source, target, mode = volume["source"], volume["target"], ["ro"] if volume.get("read_only") else []
        mounts[target] = source + (":ro" if mode == ["ro"] else "")
    return mounts


def test_the_tls_cert_job_makes_the_certificate_once_on_its_volume(compose):
    job = compose["services"]["tls-cert"]
    command = [str(arg) for arg in job["command"]]
    assert command[:5] == ["python", "-m", "swarm.tls", "/data/tls.crt", "/data/tls.key"]
    assert command[5] == "swarm.example.org", "the certificate names SWARM_PUBLIC_HOST"
    assert {"coordinator", "dataset", "127.0.0.1"} <= set(command[6:]), "and the names services dial each other by"
    assert _mounts(job) == {"/data": "tls"} and "tls" in compose["volumes"]
    assert job.get("restart", "no") == "no"


@pytest.mark.parametrize("name", ["coordinator", "dataset"])
def test_both_grpc_services_serve_tls_and_wait_for_the_certificate(compose, name):
    service = compose["services"][name]
    args = build_parser().parse_args(_swarm_args(service))
    assert (args.tls_cert, args.tls_key) == (CERT, KEY) and not args.insecure
    assert _mounts(service)["/tls"] == "tls:ro"
    assert service["depends_on"]["tls-cert"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", ["coordinator", "dataset", "trainer"])
def test_every_client_of_ours_trusts_the_hosts_certificate(compose, name):
    # The coordinator syncs from dataset:50052, the dataset service checks tokens with coordinator:50051, the host's
    # trainer dials both; the healthchecks dial 127.0.0.1. The certificate names all of them.
    service = compose["services"][name]
    assert service["environment"]["SWARM_TLS_CA_FILE"] == CERT and _mounts(service)["/tls"] == "tls:ro"


def test_token_create_in_the_coordinator_container_pins_the_certificate(compose):
    env = compose["services"]["coordinator"]["environment"]
    assert env["SWARM_TLS_CERT"] == CERT and env["SWARM_PUBLIC_ADDRESS"] == "swarm.example.org:50051"
