#!/usr/bin/env bash
# Idempotent, complete setup for snapd on Debian 12 / Ubuntu 22.04+ (run as root, usually via make).
#   1. distro packages (bcc comes from the distro: the PyPI package named "bcc" is unrelated)
#   2. kernel headers for bcc, with a fallback for kernels that ship none
#   3. tracefs / debugfs mounts
#   4. .venv from the distro python with --system-site-packages, snapd installed editable
# Every step checks before it acts, so a second run costs a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

say()  { printf 'setup: %s\n' "$*"; }
warn() { printf 'setup: WARNING: %s\n' "$*" >&2; }
die()  { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt packages, kernel headers and mounts need it): sudo make ${MAKECMDGOALS:-test}"

# --- 1. packages ------------------------------------------------------------------------------
PKGS=(python3 python3-venv python3-pip python3-bpfcc gdb elfutils gcc libc6-dev make bpftrace zstd
      systemd
      # stack reports: libc's symbols and line numbers (drgn and gdb), a server nobody here wrote
      libc6-dbg redis-server
      # USDT probes in test victims and bench helpers (<sys/sdt.h>)
      systemtap-sdt-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
KREL=$(uname -r)
have_headers() { [ -e "/lib/modules/$KREL/build/include/generated/uapi/linux/version.h" ] \
                 || [ -e "/lib/modules/$KREL/build/include/linux/kconfig.h" ]; }
HDR_PKG=""
if ! have_headers; then
    # Exact headers when the distro has them, otherwise the distro's generic flavour.
    if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
        HDR_PKG="linux-headers-$KREL"
    elif grep -qi ubuntu /etc/os-release; then
        HDR_PKG="linux-headers-generic"
    else
        HDR_PKG="linux-headers-$(dpkg --print-architecture)"
    fi
    dpkg-query -W -f='${Status}' "$HDR_PKG" 2>/dev/null | grep -q "ok installed" || missing+=("$HDR_PKG")
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    fi
fi

# --- 2. kernel headers --------------------------------------------------------------------------
# bcc compiles its programs against /lib/modules/$(uname -r)/build. A kernel without its own
# headers package gets the distro's newest headers linked in: the programs snapd builds use only
# tracepoints, perf events and helpers, whose ABI is stable, so a near version is safe.
if ! have_headers; then
    arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-generic 2>/dev/null \
               | sort -V | tail -n1 || true)
    [ -n "$arch_dir" ] || die "no kernel headers found under /usr/src; install linux-headers for $KREL"
    common_dir="${arch_dir%-amd64}-common"
    [ -d "$common_dir" ] || common_dir="${arch_dir%-generic}"
    [ -d "$common_dir" ] || common_dir="$arch_dir"
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$arch_dir" "/lib/modules/$KREL/build"
    ln -sfn "$common_dir" "/lib/modules/$KREL/source"
    warn "kernel $KREL has no headers package; linked $arch_dir (build) and $common_dir (source)."
    warn "this is safe for snapd's tracepoint/perf-event programs; install matching headers to silence this."
fi

# --- 3. mounts ----------------------------------------------------------------------------------
mountpoint -q /sys/kernel/tracing || { say "mounting tracefs"; mount -t tracefs nodev /sys/kernel/tracing; }
mountpoint -q /sys/kernel/debug   || { say "mounting debugfs"; mount -t debugfs nodev /sys/kernel/debug; }

# --- 4. venv ------------------------------------------------------------------------------------
VENV=.venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
    say "creating $VENV from /usr/bin/python3 (with system site-packages, for bcc)"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.snapd-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c 'import snapd' 2>/dev/null; then
    say "installing snapd and its test dependencies into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]' 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    "$VENV/bin/python" -c 'import snapd, elftools, yaml, pytest, zstandard, boto3, prometheus_client, drgn, pystack' || die "pip install -e '.[test]' failed"
    echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || die "bcc is not importable from $VENV (python3-bpfcc)"
say "ready"
