"""The host's certificate in the join line (issue 13 item 1): `swarm token create` pins the fingerprint of the
certificate the host serves, the certificate outlives restarts (the compose host's tls-cert job, `swarm host`), and
a restarted coordinator still answers the pin its volunteers were given."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from swarm import tls
from swarm.rpc import channel, token_metadata
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc
from swarm_launcher.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_tls_env(monkeypatch):
    for name in (tls.FINGERPRINT_ENV, tls.CA_FILE_ENV, tls.INSECURE_ENV, "SWARM_TLS_CERT", "SWARM_PUBLIC_ADDRESS"):
        monkeypatch.setenv(name, "")


@pytest.fixture
def existing_db(db_path):
    from swarm_coordinator import db

    db.open_engine(db_path).dispose()
    return db_path


def token_create(capsys, *argv) -> tuple[str, list[str]]:
    """(token, the docker run join lines) of `swarm token create ARGV`."""
    with pytest.raises(SystemExit) as info:
        main(["token", "create", *argv])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    return out.strip(), [line for line in err.splitlines() if line.startswith("docker run")]


def pinned(line: str) -> str | None:
    words = shlex.split(line)
    return words[words.index("--tls-fingerprint") + 1] if "--tls-fingerprint" in words else None


def test_token_create_pins_the_hosts_certificate_in_both_join_lines(capsys, existing_db, tmp_path, monkeypatch):
    cert, key = str(tmp_path / "elsewhere.crt"), str(tmp_path / "elsewhere.key")
    fingerprint = tls.make_self_signed(cert, key, hostnames=["swarm.example.org"])
    _, lines = token_create(capsys, "--db", existing_db, "--join-address", "swarm.example.org:50051",
                            "--tls-cert", cert)
    assert len(lines) == 2 and all(pinned(line) == fingerprint for line in lines)
    assert all(re.search(r"swarm train --coordinator swarm.example.org:50051 --tls-fingerprint sha256:[0-9a-f]{64} ",
                         line) for line in lines)
    # docker-compose.yml sets SWARM_TLS_CERT (and SWARM_PUBLIC_ADDRESS) for `exec coordinator swarm token create`.
    monkeypatch.setenv("SWARM_TLS_CERT", cert)
    monkeypatch.setenv("SWARM_PUBLIC_ADDRESS", "1.2.3.4:50051")
    assert [pinned(line) for line in token_create(capsys, "--db", existing_db)[1]] == [fingerprint] * 2
    # `swarm host` keeps its certificate beside the database: found without a flag.
    monkeypatch.setenv("SWARM_TLS_CERT", "")
    assert [pinned(line) for line in token_create(capsys, "--db", existing_db)[1]] == [None] * 2  # plaintext host
    beside = tls.make_self_signed(os.path.join(os.path.dirname(existing_db), "tls.crt"),
                                  os.path.join(os.path.dirname(existing_db), "tls.key"), hostnames=["localhost"])
    assert [pinned(line) for line in token_create(capsys, "--db", existing_db)[1]] == [beside] * 2


def test_token_create_says_so_when_the_certificate_cannot_be_read(capsys, existing_db, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["token", "create", "--db", existing_db, "--join-address", "h:1", "--tls-cert", str(tmp_path / "no")])
    assert info.value.code == 2 and "cannot read the TLS certificate" in capsys.readouterr().err


def compose_tls_job(volume) -> str:
    """What docker-compose.yml's tls-cert job runs at each `up` (its /data is the tls volume), printing the
    fingerprint."""
    done = subprocess.run([sys.executable, "-m", "swarm.tls", str(volume / "tls.crt"), str(volume / "tls.key"),
                           "swarm.example.org", "", "coordinator", "dataset", "localhost", "127.0.0.1"],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_the_certificate_outlives_restarts_and_a_restarted_coordinator_answers_the_same_pin(
        capsys, coordinator, existing_db, tmp_path):
    volume = tmp_path / "tls-volume"
    volume.mkdir()
    first = compose_tls_job(volume)
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in volume.iterdir()}
    assert sorted(files) == ["tls.crt", "tls.key"] and oct((volume / "tls.key").stat().st_mode & 0o777) == "0o600"
    assert compose_tls_job(volume) == first  # the next `docker compose up`: kept, not remade
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in volume.iterdir()} == files
    from cryptography import x509

    names = x509.load_pem_x509_certificate(files["tls.crt"][0]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["swarm.example.org", "coordinator", "dataset", "localhost"]

    cert, key = str(volume / "tls.crt"), str(volume / "tls.key")
    _, lines = token_create(capsys, "--db", existing_db, "--join-address", "127.0.0.1:1", "--tls-cert", cert)
    pin = tls.ClientTls(fingerprint=pinned(lines[0]))
    for _ in range(2):  # the coordinator before and after a restart, serving the volume's certificate
        server, client = coordinator(tls_cert=cert, tls_key=key)
        with channel(server.address, tls=pin) as ch:
            config = pb_grpc.CoordinatorStub(ch).GetConfig(pb.GetConfigRequest(), metadata=token_metadata(
                client.token), timeout=10)
        assert config.version == 1
        client.close()
        server.stop(grace=0.5)


def test_swarm_host_serves_tls_off_loopback_with_a_certificate_made_once(tmp_path):
    from swarm_launcher.host import _host_tls

    assert _host_tls(tmp_path, bind_host="127.0.0.1", public_host=None, insecure=False) == ([], {}, None)
    assert _host_tls(tmp_path, bind_host="0.0.0.0", public_host="h.example", insecure=True) == (
        ["--insecure"], {}, None)
    args, env, fingerprint = _host_tls(tmp_path, bind_host="0.0.0.0", public_host="h.example", insecure=False)
    cert = str(tmp_path / "tls.crt")
    assert args == ["--tls-cert", cert, "--tls-key", str(tmp_path / "tls.key")]
    assert env == {tls.CA_FILE_ENV: cert, tls.FINGERPRINT_ENV: ""}  # children dial each other on 127.0.0.1
    assert fingerprint == tls.fingerprint_of_file(cert)
    assert _host_tls(tmp_path, bind_host="0.0.0.0", public_host="h.example", insecure=False)[2] == fingerprint


def test_the_status_pages_join_line_pins_the_served_certificate(coordinator, tmp_path):
    import json
    import urllib.request

    from swarm_coordinator.statuspage.settings import StatusPageSettings

    cert, key = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    fingerprint = tls.make_self_signed(cert, key, hostnames=["localhost", "127.0.0.1"])
    server, _ = coordinator(tls_cert=cert, tls_key=key, status_page=StatusPageSettings(
        port=0, host="127.0.0.1", public_address="swarm.example.org:50051"))
    with urllib.request.urlopen(f"http://127.0.0.1:{server.status_port}/api/status", timeout=10) as page:
        command = json.load(page)["join"]["command"]
    assert f"--coordinator swarm.example.org:50051 --tls-fingerprint {fingerprint} " in command
