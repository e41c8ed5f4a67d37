#!/usr/bin/env bash
# Install the real components the test suite drives (Debian packages) and the
# npm tools (buf). Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker-registry skopeo umoci busybox-static podman containerd redis-server apache2-utils wrk docker.io)
tools=(docker-registry skopeo umoci busybox podman ctr redis-server htpasswd wrk dockerd)
# The project's own image and its Compose stack (tests/test_image.py, tests/test_compose.py):
# mmdebstrap makes the offline python base, docker-compose (1.29) drives the private dockerd.
packages+=(mmdebstrap docker-compose)
tools+=(mmdebstrap docker-compose)
# A real load balancer in front of two gateways for the rolling-restart test (tests/test_drain.py).
packages+=(haproxy)
tools+=(haproxy)
# A real forward proxy with basic auth for the egress tests (tests/test_egress.py).
packages+=(tinyproxy)
tools+=(tinyproxy)
# The peer of the site cache's hit rate in bench/ (a static file server with sendfile).
packages+=(nginx)
tools+=(nginx)
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
