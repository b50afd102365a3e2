#!/usr/bin/env bash
# `make compose-test`: build every image with a real Docker engine, run the compose host as README "Run a swarm"
# says, join two volunteers as README "Join a swarm" says, train a tiny run to its end, check it, restart the host
# and check that its volumes kept its state. Root only (apt, dockerd). Budget: 15 minutes on 2 cores with a cold
# cache, a few with a warm one (layers: dependencies first, our code last).
#
# What this machine cannot do and how the test stands in (deploy/compose.ci.yml): no container registry, so the
# Python base is built here from Debian's packages (deploy/ci/base_image.sh), MinIO becomes moto's S3 server and
# Prometheus Debian's package, both in local images; Grafana is left out; the trainer is the CPU variant, its torch
# the CPU wheel on this disk handed to the build through deploy/ci/wheels/.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${SWARM_COMPOSE_TEST_DIR:-/tmp/swarm-compose-test}
PROJECT=swarmci
N_IMAGES=24  # 48 samples in 2 epochs: each volunteer trains for longer than one 15 s Prometheus scrape
DEADLINE_S=${SWARM_COMPOSE_TEST_TRAIN_TIMEOUT:-900}
STARTED=$(date +%s)
log() { printf '[compose-test %4ss] %s\n' "$(( $(date +%s) - STARTED ))" "$*"; }
fail() { log "FAILED: $*"; exit 1; }

# --- Tools and engine ------------------------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
fi
# `docker compose` as README writes it: where the CLI has no compose v2 plugin, a private plugin runs Debian's
# docker-compose 1.29 (same commands, same files).
export DOCKER_CONFIG="$WORK/docker-config"
mkdir -p "$DOCKER_CONFIG/cli-plugins"
if ! DOCKER_CONFIG=${HOME}/.docker docker compose version >/dev/null 2>&1; then
  cat >"$DOCKER_CONFIG/cli-plugins/docker-compose" <<'EOF'
#!/bin/sh
# docker CLI plugin: `docker compose ARGS` runs `docker-compose ARGS` (Debian's 1.29).
if [ "$1" = docker-cli-plugin-metadata ]; then
  echo '{"SchemaVersion":"0.1.0","Vendor":"swarm-diffusion CI","Version":"1.29","ShortDescription":"docker-compose 1.29"}'
  exit 0
fi
shift
exec docker-compose "$@"
EOF
  chmod 0755 "$DOCKER_CONFIG/cli-plugins/docker-compose"
fi
STARTED_DOCKERD=""
if ! timeout 10 docker info >/dev/null 2>&1; then
  log "no Docker daemon answers: starting dockerd (log: $WORK/dockerd.log)"
  dockerd >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 1; done
  timeout 10 docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; fail "dockerd did not start"; }
fi

# --- A copy of the repo to run in (the developer's tree gets no .env, run.yaml or images/) -------------------------
HOST_DIR="$WORK/host"
rm -rf "$HOST_DIR" && mkdir -p "$HOST_DIR"
(cd "$REPO" && git ls-files -co --exclude-standard -z | xargs -0 tar -c --ignore-failed-read 2>/dev/null) \
  | tar -x -C "$HOST_DIR"
torch_wheel=$(ls "$REPO"/deploy/ci/wheels/torch-*.whl 2>/dev/null | head -1 || true)
if [ -z "$torch_wheel" ]; then
  torch_wheel=$(find /opt/wheels / -xdev -name 'torch-2.13.0+cpu-*.whl' -print -quit 2>/dev/null || true)
  [ -n "$torch_wheel" ] || fail "no torch-2.13.0+cpu wheel on this disk for the images' CPU torch"
fi
cp "$torch_wheel" "$HOST_DIR/deploy/ci/wheels/"
export SWARM_CI_BASE_IMAGE=swarm-ci/python:3.11-bookworm
bash "$REPO/deploy/ci/base_image.sh" "$SWARM_CI_BASE_IMAGE"

compose() { docker compose "$@"; }
# Everything that could be left from an earlier, interrupted run.
cleanup() {
  set +e
  # The volunteers' whole logs outlive their containers: a failed check can be read afterwards.
  for p in 1 2; do
    docker logs "swarmci-peer-$p" >"$WORK/peer-$p.log" 2>&1 && log "volunteer $p's log: $WORK/peer-$p.log"
  done
  docker rm -f swarmci-peer-1 swarmci-peer-2 >/dev/null 2>&1
  docker volume rm -f swarmci-trainer-1 swarmci-trainer-2 >/dev/null 2>&1
  [ -f "$HOST_DIR/.env" ] && (cd "$HOST_DIR" && compose down -v --remove-orphans >/dev/null 2>&1)
  if [ -n "$STARTED_DOCKERD" ]; then kill "$STARTED_DOCKERD"; wait "$STARTED_DOCKERD" 2>/dev/null; fi
}
trap cleanup EXIT
cd "$HOST_DIR"

# --- README "Run a swarm" ------------------------------------------------------------------------------------------
# Peers reach the host through the address of Docker's default bridge on this machine: what a public IP is for a
# real host (every port the README opens is published there).
PUBLIC_IP=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
if [ -z "$PUBLIC_IP" ]; then  # dockerd 20.10 lists only the subnet: the bridge takes its first address
  PUBLIC_IP=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' \
              | python3 -c 'import ipaddress, sys; print(next(ipaddress.ip_network(sys.stdin.read().strip()).hosts()))')
fi
[ -n "$PUBLIC_IP" ] || fail "no address for Docker's default bridge"
log "host at $PUBLIC_IP (Docker's default bridge), working in $HOST_DIR"
cp deploy/example.env .env
cp deploy/run.example.yaml run.yaml && sed -i 's|^SWARM_RUN_CONFIG=.*|SWARM_RUN_CONFIG=./run.yaml|' .env
sed -i -e "s|^SWARM_PUBLIC_HOST=.*|SWARM_PUBLIC_HOST=$PUBLIC_IP|" -e "s|^SWARM_PUBLIC_IP=.*|SWARM_PUBLIC_IP=$PUBLIC_IP|" \
  -e "s|^MINIO_ROOT_PASSWORD=.*|MINIO_ROOT_PASSWORD=ci-$(date +%s%N)|" \
  -e "s|^GRAFANA_ADMIN_PASSWORD=.*|GRAFANA_ADMIN_PASSWORD=ci-$(date +%s%N)|" .env
# The CI overrides and a fixed project name (volume names below), as a host would put them in .env.
printf 'COMPOSE_FILE=docker-compose.yml:deploy/compose.ci.yml\nCOMPOSE_PROJECT_NAME=%s\n' "$PROJECT" >>.env
# A tiny run: the tiny SD-shaped model, small images, a global epoch every few samples.
cat >run.yaml <<'EOF'
model: tiny
resolution: 64
buckets_side_min: 64
buckets_side_max: 128
lr: 1.0e-3
lr_scheduler: constant
ucg: 0.1
chunk_size: 4
target_batch_size: 8
max_data_epochs: 2
seed: 42
EOF
EPOCHS=2
# Metrics of the two volunteers (published on this host) for the compose's Prometheus.
cat >deploy/prometheus/targets/trainers-ci.yml <<EOF
- targets: ["$PUBLIC_IP:9104", "$PUBLIC_IP:9105"]
EOF
mkdir -p images
"$REPO/.venv/bin/python" -c "from swarm_launcher.demo_images import write_demo_folder as w; import sys; \
sys.exit(w('images', limit=$N_IMAGES) != $N_IMAGES)" || fail "could not write $N_IMAGES demo images"
compose down -v --remove-orphans >/dev/null 2>&1 || true

log "docker compose build"
t0=$(date +%s)
{ compose build && compose build trainer; } >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "build failed"; }
for image in coordinator dataset bootstrap-dht trainer; do
  docker image inspect "swarm-diffusion/$image:0.1.0" >/dev/null || fail "image $image was not built"
done
# Each image carries what its own code imports (per-image requirements): import every module of its service.
for pair in coordinator:swarm_coordinator dataset:swarm_dataset bootstrap-dht:swarm_bootstrap_dht trainer:swarm_trainer; do
  docker run --rm --entrypoint python "swarm-diffusion/${pair%%:*}:0.1.0" -c "import importlib, pkgutil, ${pair#*:} as p
for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'): importlib.import_module(m.name)" \
    || fail "image ${pair%%:*} lacks a dependency of ${pair#*:} (services/${pair%%:*}/requirements.txt)"
done
log "built in $(( $(date +%s) - t0 )) s: $(docker image ls 'swarm-diffusion/*' --format '{{.Repository}} {{.Size}}' | tr '\n' ' ')"

log "docker compose run --rm ingest"
compose run --rm ingest || fail "ingest failed"

wait_healthy() {  # every long-running service of the host healthy
  local deadline=$(( $(date +%s) + $1 )) service id state
  for service in minio coordinator dataset bootstrap-dht prometheus; do
    while :; do
      id=$(compose ps -q "$service")
      state=$( [ -n "$id" ] && docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo missing)
      [ "$state" = healthy ] && break
      if [ "$(date +%s)" -gt "$deadline" ]; then compose ps; compose logs --tail 30 "$service"; fail "$service is $state"; fi
      sleep 2
    done
  done
}
log "docker compose up -d"
compose up -d
wait_healthy 240
compose ps
[ "$(docker inspect -f '{{.State.ExitCode}}' "$(compose ps -q createbucket)")" = 0 ] || fail "createbucket did not exit 0"

# stdout: the bare token; stderr: the volunteers' join lines, which pin the host's TLS certificate.
TOKEN=$(compose exec -T coordinator swarm token create --db /data/coordinator.sqlite --name alice \
          2>"$WORK/join-lines.txt" | head -1)
[ -n "$TOKEN" ] || { cat "$WORK/join-lines.txt"; fail "no token"; }
FINGERPRINT=$(grep -o -- '--tls-fingerprint sha256:[0-9a-f]\{64\}' "$WORK/join-lines.txt" | head -1 | cut -d' ' -f2)
[ -n "$FINGERPRINT" ] || { cat "$WORK/join-lines.txt"; fail "the join lines pin no TLS certificate"; }
[ "$(grep -c -- "--tls-fingerprint $FINGERPRINT" "$WORK/join-lines.txt")" = 2 ] \
  || { cat "$WORK/join-lines.txt"; fail "not both join lines pin $FINGERPRINT"; }
served_fingerprint() {  # what the host's published gRPC port serves, fetched as a volunteer would
  "$REPO/.venv/bin/python" -c "import sys; from swarm.tls import fingerprint_of_pem as f; import ssl; \
print(f(ssl.get_server_certificate((sys.argv[1], int(sys.argv[2])), timeout=10)))" "$PUBLIC_IP" "$1"
}
for port in 50051 50052; do
  [ "$(served_fingerprint $port)" = "$FINGERPRINT" ] || fail "port $port does not serve the pinned certificate"
done
log "token created for alice; the join lines pin $FINGERPRINT, which both gRPC ports serve"
# Plaintext off loopback is refused, saying what to pass: the same line without the pin.
refused=$(docker run --rm -e SWARM_TOKEN="$TOKEN" swarm-diffusion/trainer:0.1.0 \
            swarm train --coordinator "$PUBLIC_IP:50051" --output-dir /tmp/run 2>&1) && fail "an unpinned trainer ran"
grep -q -- "refusing to dial $PUBLIC_IP:50051 in plaintext.*--tls-fingerprint" <<<"$refused" \
  || { echo "$refused" | tail -5; fail "an unpinned trainer was not refused with the TLS message"; }
log "a trainer without the pin is refused: ${refused##*error: }"

# --- README "Join a swarm": two volunteers, one listening, one in client mode -------------------------------------
# The README's line, on CPU (no --gpus; --device cpu) with the short hivemind timeouts a one-machine swarm affords.
CPU_ARGS=(--batch-size 2 --matchmaking-time 2 --averaging-timeout 15
          --load-state-timeout 30 --barrier-timeout 120 --compression none --metrics-port 9102)
docker run -d --shm-size=1g -p 31338:31338 -p 9104:9102 -v swarmci-trainer-1:/data --name swarmci-peer-1 \
  -e SWARM_TOKEN="$TOKEN" swarm-diffusion/trainer:0.1.0 \
  swarm train --coordinator "$PUBLIC_IP:50051" --tls-fingerprint "$FINGERPRINT" --output-dir /data/run \
    --host-maddrs /ip4/0.0.0.0/tcp/31338 --announce-maddrs "/ip4/$PUBLIC_IP/tcp/31338" "${CPU_ARGS[@]}" >/dev/null
docker run -d --shm-size=1g -p 9105:9102 -v swarmci-trainer-2:/data --name swarmci-peer-2 \
  -e SWARM_TOKEN="$TOKEN" swarm-diffusion/trainer:0.1.0 \
  swarm train --coordinator "$PUBLIC_IP:50051" --tls-fingerprint "$FINGERPRINT" --output-dir /data/run --client-mode --use-auto-relay \
    "${CPU_ARGS[@]}" >/dev/null
log "two volunteers started; training until the run completes (at most $DEADLINE_S s)"

# While they train: the compose's Prometheus scrapes every target (host services and both volunteers). It scrapes
# every 15 s and a volunteer's metrics live only while it trains, so a target counts once any scrape found it up.
PROMETHEUS_SEEN="$WORK/prometheus-seen-up.txt"
rm -f "$PROMETHEUS_SEEN"
prometheus_all_up() {
  curl -fsS --max-time 5 http://127.0.0.1:9090/api/v1/targets | python3 -c '
import json, sys
seen_file = sys.argv[1]
try:
    seen = set(open(seen_file).read().split())
except FileNotFoundError:
    seen = set()
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    if t["health"] == "up":
        seen.add(t["labels"]["job"] + "@" + t["labels"]["instance"])
open(seen_file, "w").write("\n".join(sorted(seen)))
jobs = {}
for target in seen:
    jobs[target.split("@")[0]] = jobs.get(target.split("@")[0], 0) + 1
print(" ".join(f"{job}:{n} up" for job, n in sorted(jobs.items())))
expected = {"coordinator": 1, "dataset": 1, "bootstrap-dht": 1, "trainer": 2}
sys.exit(0 if all(jobs.get(j, 0) >= n for j, n in expected.items()) else 1)' "$PROMETHEUS_SEEN"
}
scraped=""
deadline=$(( $(date +%s) + DEADLINE_S ))
while :; do
  running=$(docker ps -q -f name=swarmci-peer- | wc -l)
  if [ -z "$scraped" ] && summary=$(prometheus_all_up); then scraped=1; log "Prometheus: every target scraped up ($summary)"; fi
  [ "$running" = 0 ] && break
  if [ "$(date +%s)" -gt "$deadline" ]; then
    for p in 1 2; do docker logs --tail 40 "swarmci-peer-$p"; done
    fail "the run did not finish in $DEADLINE_S s"
  fi
  sleep 3
done
for p in 1 2; do
  code=$(docker inspect -f '{{.State.ExitCode}}' "swarmci-peer-$p")
  [ "$code" = 0 ] || { docker logs --tail 60 "swarmci-peer-$p"; fail "volunteer $p exited with $code"; }
done
[ -n "$scraped" ] || { prometheus_all_up || true; fail "Prometheus never scraped every target up"; }
log "both volunteers finished"

# --- Checks --------------------------------------------------------------------------------------------------------
progress() { compose exec -T coordinator swarm status --coordinator 127.0.0.1:50051 --token "$TOKEN" --json; }
samples=$(progress | python3 -c 'import json, sys; print(json.load(sys.stdin)["samples_done"])')
[ "$samples" = $(( N_IMAGES * EPOCHS )) ] || fail "coordinator counted $samples samples, expected $N_IMAGES x $EPOCHS"
log "samples counted: $samples = $N_IMAGES images x $EPOCHS epochs"
docker run --rm -v swarmci-trainer-1:/a:ro -v swarmci-trainer-2:/b:ro --entrypoint python \
  swarm-diffusion/trainer:0.1.0 -c '
import json, sys, torch
from safetensors.torch import load_file
first, second = (json.load(open(f"/{v}/run/summary.json")) for v in "ab")
assert first["run_complete"] and second["run_complete"], (first["run_complete"], second["run_complete"])
unets = [load_file(s["checkpoint"].replace("/data", f"/{v}", 1) + "/unet/diffusion_pytorch_model.safetensors")
         for s, v in ((first, "a"), (second, "b"))]
assert unets[0].keys() == unets[1].keys()
assert first["global_epoch"] == second["global_epoch"] > 0, (first["global_epoch"], second["global_epoch"])
# Averaged in float32 by different processes: equal up to rounding (the tolerance of tests/e2e/test_chaos_swarm.py).
worst = max((unets[0][k] - unets[1][k]).abs().max().item() for k in unets[0])
for k in unets[0]:
    torch.testing.assert_close(unets[0][k], unets[1][k], atol=1e-5, rtol=1e-4, msg=f"{k} differs")
epoch = first["global_epoch"]
print(f"identical parameters: {len(unets[0])} UNet tensors (max difference {worst:.1e}), global epoch {epoch}")
' || fail "the volunteers' final parameters differ"

# --- Restart: named volumes keep the coordinator's counts, the dataset index, the bootstrap DHT's peer id and the
# TLS certificate (the volunteers' pin) -------------------------------------------------------------------------
state() {
  local peer_id index_rows
  peer_id=$(compose exec -T bootstrap-dht python -c "import json, urllib.request; \
print(json.load(urllib.request.urlopen('http://127.0.0.1:9103/multiaddrs', timeout=5))['multiaddrs'][0].rsplit('/p2p/', 1)[1])")
  index_rows=$(compose exec -T dataset python -c "import sqlite3; \
print(sqlite3.connect('file:/data/dataset.sqlite?mode=ro', uri=True).execute('select count(*) from samples').fetchone()[0])")
  echo "samples_done=$(progress | python3 -c 'import json, sys; print(json.load(sys.stdin)["samples_done"])') index=$index_rows dht=$peer_id tls=$(served_fingerprint 50051)"
}
before=$(state)
log "before restart: $before"
compose down
compose up -d
wait_healthy 240
after=$(state)
log "after restart:  $after"
[ "$before" = "$after" ] || fail "state changed across down/up"
log "PASSED in $(( $(date +%s) - STARTED )) s"
echo "compose-test: 1 passed, 0 failed"
