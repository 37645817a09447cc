#!/usr/bin/env bash
# Idempotent set-up of the kernel lane (make test-kernels; docs/kernels.md), after scripts/setup.sh:
#   1. qemu-system-x86, kmod (depmod), busybox-static and udev (virtme-ng's guest init needs udevd
#      to name its virtio-serial ports: without it a guest's output is lost)
#   2. virtme-ng into .venv (pyproject's "kernels" extra)
#   3. each kernel of the list: its Debian package downloaded and unpacked into
#      .cache/kernels/RELEASE/ (dpkg-deb -x, depmod -b), its headers installed for bcc and linked
#      as the unpacked tree's build/ and source/
# A second run checks and does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

say()  { printf 'kernels: %s\n' "$*"; }
die()  { printf 'kernels: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: sudo make test-kernels"
CACHE=.cache/kernels
mkdir -p "$CACHE/results"

# The kernels, by Debian package name pattern. Debian 12's stock kernel: the newest ABI in apt
# (linux-image-6.1.0-NN-amd64; not -cloud-amd64, whose initramfs has no 9p for virtme-ng).
newest_debian12() {
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null \
        | awk '{print $1}' | sort -V | tail -n1
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
    fi
}

# --- 1. packages ------------------------------------------------------------------------------
missing=()
for p in qemu-system-x86 kmod busybox-static udev; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then say "installing ${missing[*]}"; apt_install "${missing[@]}"; fi

# --- 2. virtme-ng -----------------------------------------------------------------------------
if [ ! -x .venv/bin/vng ] || ! .venv/bin/vng --version >/dev/null 2>&1; then
    say "installing virtme-ng into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test,kernels]' 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    .venv/bin/vng --version >/dev/null || die "virtme-ng did not install (.venv/bin/vng)"
fi

# --- 3. kernels -------------------------------------------------------------------------------
pkg=$(newest_debian12)
if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(newest_debian12)
fi
[ -n "$pkg" ] || die "no linux-image-6.1.0-NN-amd64 in apt (a Debian 12 archive in sources.list?)"
for image in $pkg; do
    rel=${image#linux-image-}
    dir=$CACHE/$rel
    if [ ! -e "$dir/boot/vmlinuz-$rel" ] || [ ! -e "$dir/lib/modules/$rel/modules.dep" ]; then
        say "fetching $image"
        rm -rf "$dir" "$CACHE/dl"
        mkdir -p "$CACHE/dl"
        (cd "$CACHE/dl" && apt-get download "$image" >/dev/null 2>&1) \
            || { apt-get update -qq; (cd "$CACHE/dl" && apt-get download "$image" >/dev/null); } \
            || die "apt-get download $image failed"
        mkdir -p "$dir.tmp"
        dpkg-deb -x "$CACHE"/dl/"$image"_*.deb "$dir.tmp"
        depmod -b "$dir.tmp" "$rel"
        mv "$dir.tmp" "$dir"
        rm -rf "$CACHE/dl"
    fi
    # bcc compiles against /lib/modules/RELEASE/build: in the guest that is the unpacked tree.
    hdr=linux-headers-$rel
    installed "$hdr" || { say "installing $hdr"; apt_install "$hdr"; }
    common=/usr/src/linux-headers-${rel%-amd64}-common
    [ "$(readlink "$dir/lib/modules/$rel/build" 2>/dev/null)" = "/usr/src/$hdr" ] \
        || ln -sfn "/usr/src/$hdr" "$dir/lib/modules/$rel/build"
    [ "$(readlink "$dir/lib/modules/$rel/source" 2>/dev/null)" = "$common" ] \
        || ln -sfn "$common" "$dir/lib/modules/$rel/source"
done
say "ready: $(cd "$CACHE" && ls -d */boot 2>/dev/null | cut -d/ -f1 | tr '\n' ' ')"
