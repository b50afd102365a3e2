"""The compose host's secrets (issue 13 item 7), checked with Debian's docker-compose and no Docker engine:
example.env's passwords are refused until the host sets real ones, Grafana is private by default, and the dataset
service reads S3 with a read-only account that `createbucket` makes, never MinIO's root credentials."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.dashboards import REPO

pytestmark = pytest.mark.timeout(60)

COMPOSE_FILE = REPO / "docker-compose.yml"
EXAMPLE_ENV = REPO / "deploy" / "example.env"
ROOT_PASSWORD = "root-secret-0123456789abcdef"


def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed: `make test-deps` installs Debian's docker-compose package")
    return binary


def env_file(folder: Path, **values: str) -> Path:
    """example.env with `values` set, as a host edits it."""
    text = EXAMPLE_ENV.read_text()
    for name, value in values.items():
        text, count = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
        assert count == 1, name
    path = folder / "host.env"
    path.write_text(text)
    return path


def config(env: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([docker_compose(), "--env-file", str(env), "-f", str(COMPOSE_FILE), *extra, "config"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def services(env: Path) -> dict:
    result = config(env, "--profile", "ingest")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def test_example_env_as_shipped_is_refused_with_what_to_set(tmp_path):
    refused = config(EXAMPLE_ENV)
    assert refused.returncode != 0
    assert "set MINIO_ROOT_PASSWORD in .env to a long random secret (openssl rand -hex 24)" in refused.stderr
    half = config(env_file(tmp_path, MINIO_ROOT_PASSWORD=ROOT_PASSWORD))
    assert half.returncode != 0 and "set GRAFANA_ADMIN_PASSWORD in .env to a long random secret" in half.stderr
    assert config(env_file(tmp_path, MINIO_ROOT_PASSWORD=ROOT_PASSWORD, GRAFANA_ADMIN_PASSWORD="g" * 24)
                  ).returncode == 0


def test_grafana_is_private_unless_the_host_opts_in(tmp_path):
    grafana = services(env_file(tmp_path, MINIO_ROOT_PASSWORD=ROOT_PASSWORD, GRAFANA_ADMIN_PASSWORD="g" * 24)
                       )["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["ports"] == ["127.0.0.1:3000:3000/tcp"] or grafana["ports"][0]["host_ip"] == "127.0.0.1"
    opened = services(env_file(tmp_path, MINIO_ROOT_PASSWORD=ROOT_PASSWORD, GRAFANA_ADMIN_PASSWORD="g" * 24,
                               GRAFANA_BIND="0.0.0.0", GRAFANA_ANONYMOUS="true"))["grafana"]
    assert opened["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert opened["ports"] == ["0.0.0.0:3000:3000/tcp"] or opened["ports"][0]["host_ip"] == "0.0.0.0"


def test_the_dataset_service_never_holds_the_root_credentials(tmp_path):
    found = services(env_file(tmp_path, MINIO_ROOT_PASSWORD=ROOT_PASSWORD, GRAFANA_ADMIN_PASSWORD="g" * 24))
    dataset = found["dataset"]
    assert ROOT_PASSWORD not in yaml.safe_dump(dataset)
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(dataset["environment"])
    credentials = dataset["environment"]["AWS_SHARED_CREDENTIALS_FILE"]
    mounts = {v.split(":")[1]: v for v in dataset["volumes"] if isinstance(v, str)}
    assert mounts["/s3-reader"].startswith("s3-reader:") and mounts["/s3-reader"].endswith(":ro")
    assert credentials.startswith("/s3-reader/")
    assert found["createbucket"]["environment"]["CREDENTIALS"] == credentials
    assert found["ingest"]["environment"]["AWS_SECRET_ACCESS_KEY"] == ROOT_PASSWORD  # the writer stays the host's


# A stand-in for MinIO's `mc` (the real one needs a MinIO server): it logs each call and remembers the policy that
# `admin policy attach` gave the reader, as `admin user info` would show it.
FAKE_MC = """#!/bin/sh
echo "$*" >> "$MC_LOG"
case "$1 $2" in
  "admin user") [ "$3" = info ] && [ -f "$MC_STATE" ] && cat "$MC_STATE" ;;
  "admin policy") [ "$3" = attach ] && echo "PolicyName: $5" > "$MC_STATE" ;;
esac
exit 0
"""


def test_createbucket_makes_one_read_only_account_and_keeps_its_secret(tmp_path, monkeypatch):
    import boto3

    found = services(env_file(tmp_path, MINIO_ROOT_PASSWORD=ROOT_PASSWORD, GRAFANA_ADMIN_PASSWORD="g" * 24))
    job = found["createbucket"]
    script = job["command"][0].replace("$$", "$")  # docker-compose 1.29 prints $$ as the container gets $
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text(FAKE_MC)
    (bin_dir / "mc").chmod(0o755)
    credentials = tmp_path / "s3-reader" / "credentials"
    credentials.parent.mkdir()
    env = {**job["environment"], "CREDENTIALS": str(credentials), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "MC_LOG": str(tmp_path / "mc.log"), "MC_STATE": str(tmp_path / "mc.state")}
    for _ in range(2):  # `docker compose up` runs it at every start
        run = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o644  # readable by the dataset image's non-root user
    # botocore reads the file as the dataset service will (environment credentials would come first: none there).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    keys = boto3.session.Session().get_credentials()
    assert keys.access_key == "swarm-dataset-reader" and len(keys.secret_key) == 36
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert calls.count(f"admin user add host swarm-dataset-reader {keys.secret_key}") == 2  # the same secret again
    assert calls.count("admin policy attach host swarm-dataset-read --user swarm-dataset-reader") == 1
    policy = [c for c in calls if c.startswith("admin policy create")]
    assert policy == ["admin policy create host swarm-dataset-read /tmp/read-only.json"] * 2
    assert not any(ROOT_PASSWORD in c for c in calls[1:] if not c.startswith("alias set"))


def test_createbucket_refuses_the_old_example_placeholder(tmp_path):
    """A .env made from an older example.env still holds its placeholder: the bucket job stops with what to do, so
    neither ingest nor the dataset service (which wait for it) starts."""
    found = services(env_file(tmp_path, MINIO_ROOT_PASSWORD="change-me-to-a-long-random-secret",
                              GRAFANA_ADMIN_PASSWORD="g" * 24))
    job = found["createbucket"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text(FAKE_MC)
    (bin_dir / "mc").chmod(0o755)
    env = {**job["environment"], "CREDENTIALS": str(tmp_path / "credentials"), "MC_LOG": str(tmp_path / "mc.log"),
           "MC_STATE": str(tmp_path / "mc.state"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run = subprocess.run(["sh", "-c", job["command"][0].replace("$$", "$")], env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 1 and "old example placeholder" in run.stderr and "openssl rand" in run.stderr
    assert not (tmp_path / "mc.log").exists(), "nothing was done with the placeholder"
