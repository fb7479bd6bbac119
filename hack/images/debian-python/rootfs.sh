#!/usr/bin/env bash
# Make a minimal Debian root filesystem tarball with debootstrap.
#
#   rootfs.sh SUITE MIRROR PACKAGES_FILE OUT.tar [DEB_CACHE_DIR]
#
# Runs as root (debootstrap chroots). The tarball is uncompressed (buildah's
# ADD extracts it) and has no docs, man pages, apt lists or /dev nodes.
set -euo pipefail
suite=$1 mirror=$2 packages_file=$3 out=$4 deb_cache=${5:-}

include=$(grep -v '^[[:space:]]*\(#\|$\)' "$packages_file" | tr -s '[:space:]' ',' | sed 's/^,//; s/,$//')
work=$(mktemp -d "${out}.work.XXXXXX")
root=$work/root
# debootstrap mounts /proc, /sys (and maybe /dev) in the target: unmount everything under
# it, deepest first, and never delete files while anything is still mounted there.
unmount_all() {
    local m
    for m in $(awk -v root="$root/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    ! awk -v root="$root/" 'index($2, root) == 1 { found = 1 } END { exit !found }' /proc/mounts
}
cleanup() {
    if unmount_all; then rm -rf "$work"; else echo "rootfs: $root still has mounts; left in place" >&2; fi
}
trap cleanup EXIT

# dpkg drops docs, man pages and translations as packages unpack (keep copyright files).
mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/01-turnpike-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat >"$root/etc/apt/apt.conf.d/01-turnpike" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
CFG

args=(--variant=minbase --components=main --include="$include" --merged-usr)
[[ -n $deb_cache ]] && { mkdir -p "$deb_cache"; args+=(--cache-dir="$deb_cache"); }
echo "rootfs: debootstrap $suite ($include)" >&2
debootstrap "${args[@]}" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    [[ -f $root/debootstrap/debootstrap.log ]] && tail -n 40 "$root/debootstrap/debootstrap.log" >&2
    exit 1
}

# Sources for apt inside images (updates and security from the same mirror host).
security=${mirror%/debian}/debian-security
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
SRC

# Security and stable updates on top of the suite's packages (debootstrap takes the suite only).
cp /etc/resolv.conf "$root/etc/resolv.conf"
echo "rootfs: apt-get upgrade from $suite-updates and $suite-security" >&2
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get -q update && apt-get -q -y -o Dpkg::Options::=--force-confold dist-upgrade && apt-get clean' \
    >"$work/upgrade.log" 2>&1 || { tail -n 40 "$work/upgrade.log" >&2; exit 1; }
grep -E '^(Inst|[0-9]+ upgraded)' "$work/upgrade.log" >&2 || true

unmount_all || { echo "rootfs: cannot unmount everything under $root" >&2; exit 1; }
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* "$root"/debootstrap
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian "$root"/usr/share/linda
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
# The runtime provides these: no device nodes, no host identity in the image.
rm -rf "$root"/dev/* "$root"/proc/* "$root"/sys/* "$root"/run/*
: >"$root/etc/machine-id"
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
printf '' >"$root/etc/resolv.conf"

tar -C "$root" --numeric-owner --xattrs --sort=name -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
