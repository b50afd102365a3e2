"""docker-compose.yml, checked without a Docker engine: Debian's docker-compose validates and interpolates it with
deploy/example.env, and every container command of ours is a real `swarm` command line."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from swarm_launcher.cli import build_parser
from tests.deploy.dashboards import REPO

pytestmark = pytest.mark.timeout(60)

COMPOSE_FILE = REPO / "docker-compose.yml"
EXAMPLE_ENV = REPO / "deploy" / "example.env"
# Our services and the `swarm` subcommand each runs; the image each uses is built from services/<image>/Dockerfile.
SWARM_SERVICES = {
    "coordinator": ("coordinator", ["coordinator"]),
    "dataset": ("dataset", ["dataset", "serve"]),
    "ingest": ("dataset", ["ingest"]),
    "bootstrap-dht": ("bootstrap-dht", ["bootstrap-dht"]),
    "trainer": ("trainer", ["train"]),
}
LONG_RUNNING = {"minio", "coordinator", "dataset", "bootstrap-dht", "prometheus", "grafana", "trainer"}


@pytest.fixture(scope="module")
def host_env(tmp_path_factory):
    """example.env as a host fills it in: it ships no passwords, and compose refuses it until they are set
    (test_compose_secrets.py)."""
    text = EXAMPLE_ENV.read_text()
    for name in ("MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        text = text.replace(f"\n{name}=\n", f"\n{name}=test-secret-0123456789\n")
    path = tmp_path_factory.mktemp("env") / "host.env"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def compose(host_env) -> dict:
    """The compose model as docker-compose resolves it: example.env interpolated, every profile enabled."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed: `make test-deps` installs Debian's docker-compose package")
    result = subprocess.run([binary, "--env-file", str(host_env), "-f", str(COMPOSE_FILE), "--profile", "gpu",
                             "--profile", "ingest", "config"], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 0, f"docker-compose rejects docker-compose.yml:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _swarm_args(service: dict) -> list[str]:
    command = [str(arg) for arg in service["command"]]
    return command[1:] if command[:1] == ["swarm"] else command  # the image's entrypoint is `swarm`


def _ports(service: dict) -> dict[int, str]:
    """{container port: host interface}; docker-compose 1.29 prints ports with an interface in the short syntax."""
    published = {}
    for port in service.get("ports", []):
        if isinstance(port, str):  # "127.0.0.1:9000:9000/tcp"
            parts = port.split("/")[0].split(":")
            published[int(parts[-1])] = parts[0] if len(parts) == 3 else "0.0.0.0"
        else:
            published[int(port["target"])] = port.get("host_ip", "0.0.0.0")
    return published


def _named_volumes(service: dict) -> dict[str, str]:
    """{mount point: named volume}; bind mounts (host paths) are left out."""
    mounts = {}
    for mount in service.get("volumes", []):
        if isinstance(mount, str):  # "coordinator-data:/data:rw"
            source, target = mount.split(":")[:2]
            if not source.startswith(("/", ".", "~")):
                mounts[target] = source
        elif mount.get("type") == "volume":
            mounts[mount["target"]] = mount["source"]
    return mounts


def _parse(name: str, service: dict):
    args = _swarm_args(service)
    try:
        return build_parser().parse_args(args)
    except SystemExit as e:  # argparse reports the bad flag on stderr and exits
        pytest.fail(f"service {name}: `swarm {' '.join(args)}` is not a valid swarm command line (exit {e.code})")


def test_compose_file_validates_quietly(host_env):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed: `make test-deps` installs Debian's docker-compose package")
    result = subprocess.run([binary, "--env-file", str(host_env), "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_every_service_of_ours_runs_a_real_swarm_command(compose):
    services = compose["services"]
    assert set(SWARM_SERVICES) <= set(services), f"missing services: {set(SWARM_SERVICES) - set(services)}"
    for name, (image, subcommand) in SWARM_SERVICES.items():
        service = services[name]
        assert service["build"]["dockerfile"] == f"services/{image}/Dockerfile", name
        assert _swarm_args(service)[: len(subcommand)] == subcommand, (name, service["command"])
        args = _parse(name, service)
        assert callable(getattr(args, "func", None)), f"{name}: `{' '.join(subcommand)}` has no command function"


def test_the_whole_stack_is_there(compose):
    services = compose["services"]
    assert {"minio", "createbucket", "prometheus", "grafana"} <= set(services)
    bucket_job = " ".join(services["createbucket"]["command"])
    assert "mc mb --ignore-existing" in bucket_job and services["createbucket"]["restart"] == "no"
    for name in ("dataset", "ingest"):
        assert services[name]["depends_on"]["createbucket"]["condition"] == "service_completed_successfully"
    # The trainer is opt-in and asks for a GPU; nothing else is in a profile but the one-shot ingest.
    assert services["trainer"]["profiles"] == ["gpu"]
    device = services["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert {name for name, s in services.items() if s.get("profiles")} == {"trainer", "ingest"}


def test_every_piece_of_state_is_on_a_named_volume(compose):
    services = compose["services"]
    named = set(compose["volumes"])

    def volume_for(name: str, path: str) -> str:
        for target, source in _named_volumes(services[name]).items():
            if (path + "/").startswith(target.rstrip("/") + "/"):
                return source
        pytest.fail(f"{name}: {path} is not on a named volume, so it would be lost with the container")

    state = {
        "coordinator": _parse("coordinator", services["coordinator"]).db,
        "dataset": _parse("dataset", services["dataset"]).index,
        "ingest": _parse("ingest", services["ingest"]).index,
        "bootstrap-dht": _parse("bootstrap-dht", services["bootstrap-dht"]).identity_path,
        "trainer": _parse("trainer", services["trainer"]).output_dir,
        "minio": "/data",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
    }
    volumes = {name: volume_for(name, path) for name, path in state.items()}
    assert set(volumes.values()) <= named
    assert volumes["dataset"] == volumes["ingest"], "ingest must write the index the dataset service serves"


def test_long_running_services_have_healthchecks_on_their_own_ports(compose):
    services = compose["services"]
    for name in LONG_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    for name in ("coordinator", "dataset"):
        listen_port = _parse(name, services[name]).listen.rpartition(":")[2]
        assert f"127.0.0.1:{listen_port}" in " ".join(services[name]["healthcheck"]["test"]), name
    for name in ("bootstrap-dht", "trainer"):
        metrics_port = _parse(name, services[name]).metrics_port
        assert f"127.0.0.1:{metrics_port}/" in " ".join(services[name]["healthcheck"]["test"]), name


def test_prometheus_scrapes_the_metrics_port_each_service_serves(compose):
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            scraped[job["job_name"]] = [t.rpartition(":")[2] for t in static["targets"]]
        for dns in job.get("dns_sd_configs", []):
            scraped[job["job_name"]] = [str(dns["port"])]
    services = compose["services"]
    for name in ("coordinator", "dataset", "bootstrap-dht", "trainer"):
        assert scraped.get(name) == [str(_parse(name, services[name]).metrics_port)], (name, scraped.get(name))


def test_public_ports_are_the_ones_peers_need(compose):
    services = compose["services"]

    def published(name: str) -> dict[int, str]:
        return _ports(services[name])

    assert published("coordinator") == {50051: "0.0.0.0", 8080: "0.0.0.0"}  # gRPC, and the public status page
    assert published("dataset") == {50052: "0.0.0.0"}
    assert published("bootstrap-dht") == {31337: "0.0.0.0"}
    # Storage and Prometheus have no authentication worth the name: loopback only by default.
    assert set(published("minio").values()) == {"127.0.0.1"}
    assert set(published("prometheus").values()) == {"127.0.0.1"}


def test_every_variable_the_compose_file_reads_is_documented_in_example_env():
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^(\w+)=", EXAMPLE_ENV.read_text(), flags=re.M))
    assert used - documented == set(), f"add these to deploy/example.env: {sorted(used - documented)}"
    assert documented - used == set(), f"example.env sets variables compose never reads: {sorted(documented - used)}"


def test_restart_and_init_policies(compose):
    services = compose["services"]
    # A trainer that finished its run exits 0 and must stay down; a crashed one comes back.
    assert services["trainer"]["restart"] == "on-failure"
    for name in LONG_RUNNING - {"trainer"}:
        assert services[name]["restart"] == "unless-stopped", name
    for name in SWARM_SERVICES:
        assert services[name].get("init") is True, f"{name}: hivemind's children need a reaping PID 1"


def test_ci_override_builds_everything_here_and_leaves_grafana_out(host_env):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed: `make test-deps` installs Debian's docker-compose package")
    result = subprocess.run([binary, "--env-file", str(host_env), "-f", str(COMPOSE_FILE), "-f",
                             str(REPO / "deploy" / "compose.ci.yml"), "--profile", "gpu", "--profile", "ingest",
                             "config"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    # Every image is either built here or one of ours; none has to be pulled from a registry.
    for name, service in services.items():
        if name == "grafana":
            assert service["profiles"] == ["grafana"], "Grafana cannot be pulled here: it stays off"
            continue
        assert "build" in service or service["image"].startswith(("swarm-ci/", "swarm-diffusion/")), name
        if "build" in service:
            assert service["build"]["args"]["PYTHON_IMAGE"] == "swarm-ci/python:3.11-bookworm", name
    assert services["trainer"]["build"]["args"]["TORCH_FLAVOR"] == "cpu"
    for name in ("coordinator", "dataset", "bootstrap-dht", "trainer"):
        assert services[name]["build"]["args"]["TORCH_PIP_ARGS"] == "--find-links /wheels", name
