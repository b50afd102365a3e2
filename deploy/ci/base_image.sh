#!/usr/bin/env bash
# Builds swarm-ci/python:3.11-bookworm, a Debian 12 (python3 = 3.11) base image from Debian's own packages, for
# machines that reach Debian's archive and PyPI but no container registry. Our Dockerfiles take it as
# --build-arg PYTHON_IMAGE=... (their defaults stay the public, digest-pinned python:3.11 images for real hosts).
# Skips the build when the image exists. Needs root, debootstrap and a running dockerd.
set -euo pipefail
IMAGE=${1:-swarm-ci/python:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists: skipping debootstrap"
  exit 0
fi
root=$(mktemp -d /tmp/swarm-ci-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap --variant=minbase bookworm into $root (about a minute)"
# python3-venv for the images' /opt/venv; ca-certificates so pip's TLS works; build-essential is left to each
# Dockerfile's build stage (it stays out of the runtime images).
debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates \
  bookworm "$root" "$MIRROR" >/tmp/swarm-ci-debootstrap.log 2>&1 \
  || { tail -20 /tmp/swarm-ci-debootstrap.log; exit 1; }
# Outgoing TLS here passes a proxy with its own CA: without the host's extra CAs, pip inside containers fails.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
fi
# The public python images call it `python`; our Dockerfiles and healthchecks do too.
ln -sf python3 "$root/usr/bin/python"
# Debian's apt lists and caches are not needed in a base (each Dockerfile runs apt-get update itself).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
docker image ls "$IMAGE"
