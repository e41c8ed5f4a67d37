#!/usr/bin/env bash
# Install the real components the test suite drives (Debian packages) and the
# npm tools (buf). Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker-registry skopeo umoci busybox-static podman containerd redis-server apache2-utils wrk docker.io haproxy tinyproxy)
tools=(docker-registry skopeo umoci busybox podman ctr redis-server htpasswd wrk dockerd haproxy tinyproxy)
missing=()
for i in "${!tools[@]}"; do
  command -v "${tools[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
  echo "node and npm are needed for buf (npm ci); install nodejs and npm" >&2
  exit 1
fi
npm ci --no-audit --no-fund --loglevel=error
