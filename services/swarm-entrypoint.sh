#!/bin/sh
# Entrypoint of every service image: `docker run IMAGE swarm train ...` and `docker run IMAGE train ...` both work;
# sh/bash/python pass through for debugging.
case "$1" in swarm) shift ;; sh|bash|python|python3) exec "$@" ;; esac
exec swarm "$@"
