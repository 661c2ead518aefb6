#!/usr/bin/env bash
# Build a minimal Debian + Python 3 image without pulling from any registry.
# For machines that reach a Debian mirror but no container registry (air-gapped
# clusters, CI here). Usage: images/make-local-base.sh [TAG]
set -euo pipefail
tag="${1:-0123d/debian-python:bookworm}"
suite="${SUITE:-bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already present"; exit 0
fi
# Use the mirror the host's apt already uses, so proxies and local mirrors keep working.
mirror="${MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
  | grep -oE '^(URIs:|deb) *[a-z]+://[^ ]+/debian/?( |$)' | grep -oE '[a-z]+://[^ ]+' | head -n1 || true)}"
[ -n "$mirror" ] || { echo "no Debian mirror found in /etc/apt; set MIRROR=" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install debootstrap" >&2; exit 1; }
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag"
echo "built base image $tag"
