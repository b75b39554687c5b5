#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, as root: system packages,
# kernel headers visible to BCC, tracefs, and the project's .venv.
# Each step checks before it acts, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'setup: %s\n' "$*" >&2; }

APT_PKGS=(python3-bpfcc libbpfcc python3-venv python3-dev bpftrace chromium
          linux-headers-cloud-amd64 gcc g++ make procps util-linux libfuse2
          prometheus   # prometheus + promtool: the sidecar's /metrics tests
          binutils)    # c++filt: tests compare gpuscope's in-process demangling with it
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || { log "need root to install: ${missing[*]}"; exit 1; }
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the prometheus service on install; the tests run their own.
if [[ " ${missing[*]:-} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

# BCC compiles against /lib/modules/$(uname -r)/{build,source}. When no headers
# match the running kernel, point them at the newest installed Debian headers.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build/include/linux/kconfig.h" ] && [ ! -e "$kdir/source/include/linux/kconfig.h" ]; then
    arch=$(ls -d /usr/src/linux-headers-*-cloud-amd64 /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
    [ -n "$arch" ] || { log "no kernel headers under /usr/src: apt-get install linux-headers-cloud-amd64"; exit 1; }
    common=${arch%-*amd64}
    common=${common%-cloud}-common
    log "no headers for $(uname -r); using $arch (+ $common)"
    mkdir -p "$kdir"
    ln -sfn "$arch" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
fi

# tracefs: BCC reads tracepoint formats from it.
if [ ! -e /sys/kernel/tracing/events ]; then
    mkdir -p /sys/kernel/tracing
    mount -t tracefs nodev /sys/kernel/tracing || log "could not mount tracefs at /sys/kernel/tracing"
fi

# The venv: Debian's CPython 3.11 (torch's wheel here is cp311), with Debian's
# pure-ctypes bcc module linked in (and nothing else from dist-packages).
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$site/bcc" ] || ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"

stamp=.venv/.gpuscope-deps
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing gpuscope (editable) with test dependencies and torch"
    pip_log=.venv/pip.log
    pipq() { .venv/bin/python -m pip install -q "$@" >>"$pip_log" 2>&1 || { cat "$pip_log" >&2; return 1; }; }
    : >"$pip_log"
    pipq --upgrade pip setuptools wheel
    # CPU build from local disk on these machines; a range that 2.13.0 satisfies.
    pipq "torch==2.13.0" || pipq "torch>=2.3,<3"
    pipq -e ".[test]"
    echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import bcc, gpuscope.collector, perfetto.protos.perfetto.trace.perfetto_trace_pb2' \
    || { log "venv check failed"; exit 1; }
log "ok"
