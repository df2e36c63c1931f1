#!/usr/bin/env bash
# Fetch and unpack Debian's own kernel for the guest-kernel tests (tests/guest), only when missing.
#
# Why: the host kernel of a CI machine may lack modules the tests need (ipip, vrf, gre, bonding,
# 8021q, dummy) and User-Mode Linux panics on CPUs with AMX. tests/guest boots this kernel under
# QEMU instead. Nothing is installed: `apt-get download` fetches the package that linux-image-amd64
# depends on and `dpkg-deb -x` unpacks it into the cache; `depmod -b` writes its modules.dep so the
# host's own modprobe (`modprobe -d DIR`) loads its modules inside the guest.
#
# Layout: $TABBY_GUEST_CACHE (default /var/cache/tabby-guest)/<version>/{boot/vmlinuz-<version>,
# lib/modules/<version>/...,.complete}. Idempotent and safe to run concurrently (flock); an
# unpack that fails halfway leaves nothing behind (it happens in a temp dir renamed at the end).
# Older versions are removed once a newer one is complete. Prints the kernel's directory.
set -euo pipefail

CACHE="${TABBY_GUEST_CACHE:-/var/cache/tabby-guest}"
META="${TABBY_GUEST_KERNEL_PACKAGE:-linux-image-amd64}"

die() { echo "guest-kernel: $*" >&2; exit 1; }

# The version the meta package depends on (e.g. 6.1.0-57-amd64), from the local APT lists.
resolve() {
    apt-cache depends "$META" 2>/dev/null | sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1
}

newest_complete() {
    local d best=""
    for d in "$CACHE"/*/.complete; do
        [ -e "$d" ] || continue
        best="$(basename "$(dirname "$d")")"
    done
    [ -n "$best" ] && echo "$best"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 600 9 || die "timed out waiting for $CACHE/.lock"

version="$(resolve || true)"
if [ -z "$version" ]; then
    # A fresh machine may have no APT lists yet; a kernel already cached is good enough offline.
    if have="$(newest_complete)"; then
        echo "$CACHE/$have"
        exit 0
    fi
    apt-get update -qq >/dev/null 2>&1 || true
    version="$(resolve || true)"
    [ -n "$version" ] || die "cannot tell which kernel $META depends on (apt-cache depends $META)"
fi

dir="$CACHE/$version"
if [ ! -e "$dir/.complete" ]; then
    command -v dpkg-deb >/dev/null || die "dpkg-deb is missing"
    command -v depmod >/dev/null || die "depmod is missing (Debian kmod)"
    echo "guest-kernel: fetching linux-image-$version into $dir" >&2
    rm -rf "$CACHE"/.unpack-*  # left by a run that was killed (we hold the lock)
    work="$(mktemp -d "$CACHE/.unpack-XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    # apt-get download as root writes as _apt when it can: give it a directory it may write.
    chmod 0755 "$work"
    (cd "$work" && apt-get download -qq "linux-image-$version" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    deb="$(ls "$work"/linux-image-"$version"_*.deb 2>/dev/null | head -n1)"
    if [ -z "$deb" ]; then
        # Offline with an older kernel cached (the APT lists moved on): that one still does the job.
        if have="$(newest_complete)"; then
            echo "guest-kernel: apt-get download linux-image-$version failed; using the cached $have" >&2
            echo "$CACHE/$have"
            exit 0
        fi
        die "apt-get download linux-image-$version failed"
    fi
    mkdir "$work/root"
    dpkg-deb -x "$deb" "$work/root"
    rm -f "$deb"
    [ -f "$work/root/boot/vmlinuz-$version" ] || die "no boot/vmlinuz-$version in the package"
    depmod -b "$work/root" "$version"
    touch "$work/root/.complete"
    rm -rf "$dir"
    mv "$work/root" "$dir"
    rm -rf "$work"
    trap - EXIT
    for old in "$CACHE"/*/; do
        old="${old%/}"
        [ "$old" = "$dir" ] || rm -rf "$old"
    done
fi
echo "$dir"
