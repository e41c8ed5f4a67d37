#!/usr/bin/env bash
# The README's worked example, start to finish, with nothing from outside this
# machine (`make example`):
#
#   1. a local docker-registry on a free 127.0.0.1 port,
#   2. a small busybox base image built offline (umoci) and pushed there (skopeo),
#   3. wave-grpc serve (service + gateway) on free ports, with that registry routed,
#   4. wave-grpc augment: a layer with /usr/local/bin/hello and FOO=bar in the env,
#   5. a pull of the augmented name with skopeo and an unpack with umoci,
#   6. the injected file and the env printed from what was pulled.
#
# Needs the Debian packages docker-registry, skopeo, umoci and busybox-static
# (scripts/install-test-deps.sh installs them) and wave-grpc in $VENV (default
# .venv; `make install`). Everything lives in a temporary directory, removed on
# exit; every process the script starts is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${VENV:-.venv}"
[[ $VENV == /* ]] || VENV=$ROOT/$VENV
WAVE_GRPC="$VENV/bin/wave-grpc"

step() { printf '==> %s\n' "$*"; }
fail() {
  printf 'example: %s\n' "$*" >&2
  exit 1
}

# -- what it needs ---------------------------------------------------------------
need() { # need TOOL PACKAGE
  command -v "$1" >/dev/null 2>&1 ||
    fail "$1 is missing: install the Debian package $2 (apt-get install $2, or scripts/install-test-deps.sh)"
}
need docker-registry docker-registry
need skopeo skopeo
need umoci umoci
need busybox busybox-static
need python3 python3
[[ -x $WAVE_GRPC ]] || fail "$WAVE_GRPC is missing: run \`make install\` first"

# -- a temporary directory, and every process stopped by PID on exit -------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wave-grpc-example.XXXXXX")
PIDS=()
cleanup() {
  local status=$? pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  chmod -R u+rwX "$WORK" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port NAME PID PORT LOG: until 127.0.0.1:PORT accepts, or fail showing LOG.
wait_port() {
  local name=$1 pid=$2 port=$3 log=$4 i
  for ((i = 0; i < 300; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2 || true
      fail "$name exited before listening on 127.0.0.1:$port (log above)"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$log" >&2 || true
  fail "$name did not listen on 127.0.0.1:$port within 30 s (log above)"
}

step "working in $WORK"

# -- 1. the source registry --------------------------------------------------------
REG_PORT=$(free_port)
REGISTRY=127.0.0.1:$REG_PORT
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/reg}, delete: {enabled: true}}
http: {addr: "$REGISTRY", secret: example-only}
EOF
step "starting docker-registry on $REGISTRY"
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
wait_port docker-registry "${PIDS[-1]}" "$REG_PORT" "$WORK/registry.log"

# -- 2. a busybox base image, built offline -----------------------------------------
step "building a busybox base image offline (umoci) and pushing it as $REGISTRY/library/busybox:latest"
(
  cd "$WORK"
  mkdir -p rootfs/bin rootfs/etc
  cp "$(command -v busybox)" rootfs/bin/busybox
  for a in sh ls cat echo true; do ln -s busybox "rootfs/bin/$a"; done
  echo hello >rootfs/etc/marker
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C rootfs -cf layer.tar .
  umoci init --layout base
  umoci new --image base:amd64
  umoci raw add-layer --image base:amd64 layer.tar
  umoci config --image base:amd64 --architecture amd64 --os linux \
    --config.entrypoint /bin/sh --config.env PATH=/bin
  # --insecure-policy: no signature policy is needed for a local example; skopeo
  # still checks every digest.
  skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    oci:base:amd64 "docker://$REGISTRY/library/busybox:latest"
)

# -- 3. the service and the gateway -------------------------------------------------
GRPC_PORT=$(free_port)
GW_PORT=$(free_port)
while [[ $GW_PORT == "$GRPC_PORT" ]]; do GW_PORT=$(free_port); done
cat >"$WORK/wave-grpc.toml" <<EOF
# configs/local.toml's shape, on free ports and under $WORK.
[service]
listen = "127.0.0.1:$GRPC_PORT"
store = "sqlite:///$WORK/state/wave.db"
token_ttl = "1h"
anonymous = true

[gateway]
listen = "127.0.0.1:$GW_PORT"
public_host = "127.0.0.1:$GW_PORT"
service = "127.0.0.1:$GRPC_PORT"

[layers]
store = "file://$WORK/state/layers"
staging = "$WORK/state/staging"

[upstream]
default_route = "https"

# The local registry: unlisted loopback registries are refused by design, a
# [[registries]] entry is the operator's trust.
[[registries]]
name = "$REGISTRY"
endpoint = "http://$REGISTRY"
EOF
step "starting wave-grpc serve (gRPC on 127.0.0.1:$GRPC_PORT, gateway on 127.0.0.1:$GW_PORT)"
"$WAVE_GRPC" serve --config "$WORK/wave-grpc.toml" >"$WORK/wave-grpc.log" 2>&1 &
PIDS+=($!)
wait_port "wave-grpc (gRPC)" "${PIDS[-1]}" "$GRPC_PORT" "$WORK/wave-grpc.log"
wait_port "wave-grpc (gateway)" "${PIDS[-1]}" "$GW_PORT" "$WORK/wave-grpc.log"

# -- 4. the augmentation --------------------------------------------------------------
mkdir -p "$WORK/tools/usr/local/bin"
printf '#!/bin/sh\necho "hello from wave-grpc"\n' >"$WORK/tools/usr/local/bin/hello"
chmod +x "$WORK/tools/usr/local/bin/hello"
step "augmenting $REGISTRY/library/busybox:latest with $WORK/tools (/usr/local/bin/hello) and FOO=bar"
if ! TARGET=$("$WAVE_GRPC" augment "$REGISTRY/library/busybox:latest" \
  --layer "$WORK/tools" --config-env FOO=bar --server "127.0.0.1:$GRPC_PORT"); then
  tail -n 30 "$WORK/wave-grpc.log" >&2 || true
  fail "wave-grpc augment failed (service log above)"
fi
[[ -n $TARGET ]] || fail "wave-grpc augment printed no image name"
step "augmented image: $TARGET"

# -- 5. the pull, as a runtime does ---------------------------------------------------
step "pulling $TARGET with skopeo"
skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$TARGET" "oci:$WORK/pulled:latest"
rootless=(--rootless)
[[ $(id -u) -eq 0 ]] && rootless=()
step "unpacking it with umoci"
umoci unpack "${rootless[@]}" --image "$WORK/pulled:latest" "$WORK/bundle" >/dev/null

# -- 6. what was injected -------------------------------------------------------------
HELLO=$WORK/bundle/rootfs/usr/local/bin/hello
[[ -f $HELLO ]] || fail "the pulled image has no /usr/local/bin/hello"
step "/usr/local/bin/hello in the pulled image:"
cat "$HELLO"
step "env in the pulled image's config:"
python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["process"]["env"]))' \
  "$WORK/bundle/config.json"
grep -q '"FOO=bar"' "$WORK/bundle/config.json" || fail "FOO=bar is not in the pulled image's env"
step "done: the base image got the layer and the env without a rebuild"
