#!/usr/bin/env bash
# An aarch64 Debian userland that tests/test_remote.py serves over a loopback sshd, its Python run
# under qemu-user: the stand-in for an ARM board. Idempotent; ~40 s the first time.
#   bash .ci/arm64_userland.sh [ROOT]     (root; default /srv/pipeline-arm64 — sshd refuses /tmp)
set -euo pipefail
ROOT=${1:-/srv/pipeline-arm64}
PY=${PYTHON:-python3}

if [ ! -f "$ROOT/.ready" ]; then
  rm -rf "$ROOT"
  # --foreign unpacks without running the (emulated, ~6 min) second stage; dpkg-deb -x of the
  # downloaded .debs gives a userland that runs Python, which is all the device runner needs.
  debootstrap --arch arm64 --foreign --variant=minbase --include=python3 bookworm "$ROOT" \
    http://deb.debian.org/debian >/dev/null
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
  cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
  # XNNPACK reads the CPU count from /sys; binding the host's /sys crashes the interpreter and
  # leaving it out silently disables XNNPACK (and changes outputs).
  mkdir -p "$ROOT/sys/devices/system/cpu" "$ROOT/proc" "$ROOT/root"
  echo "0-$(( $(nproc) - 1 ))" > "$ROOT/sys/devices/system/cpu/possible"
  echo "0-$(( $(nproc) - 1 ))" > "$ROOT/sys/devices/system/cpu/present"
  # The same runtime and numpy versions as the host, as aarch64 wheels.
  versions=$($PY -c "import importlib.metadata as m; print(f\"ai-edge-litert=={m.version('ai-edge-litert')} numpy=={m.version('numpy')}\")")
  $PY -m pip install -q --target "$ROOT/opt/site" --only-binary=:all: --python-version 3.11 \
    --implementation cp --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 $versions
  touch "$ROOT/.ready"
fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
echo "aarch64 userland ready in $ROOT"
