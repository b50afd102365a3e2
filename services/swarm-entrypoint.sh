#!/bin/sh
# Entrypoint of every service image: `docker run IMAGE swarm train ...` and `docker run IMAGE train ...` both work;
# sh/bash/python pass through for debugging.
# Inside a container /metrics listens on every interface (Prometheus scrapes it over the compose network, and a port
# is reachable from outside only where it is published); outside containers the default is loopback.
export SWARM_METRICS_HOST="${SWARM_METRICS_HOST:-0.0.0.0}"
case "$1" in swarm) shift ;; sh|bash|python|python3) exec "$@" ;; esac
exec swarm "$@"
