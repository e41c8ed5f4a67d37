#!/usr/bin/env bash
# buf breaking (FILE rules) against the protos of the previous commit that had
# any. The first commit with protos has nothing to break.
set -euo pipefail
cd "$(dirname "$0")/.."
base=$(git log --format=%H --skip=1 -n 1 -- protos 2>/dev/null || true)
if [[ -z "$base" ]]; then
  echo "buf breaking: no earlier protos to compare with"
  exit 0
fi
npx --no-install buf breaking --against ".git#ref=${base}"
echo "buf breaking: no breaking change since ${base:0:12}"
