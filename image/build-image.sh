#!/usr/bin/env bash
# Hearth SD-card image for the Raspberry Pi 4 (and Pi 5 with --source rpios).
#
#   image/build-image.sh --deb target/debian/hearth_<ver>_arm64.deb    # the image
#   image/build-image.sh --base-only                                  # just the cached base
#
# Stage 1 (cached, ~20 min under emulation): mmdebstrap makes an arm64 bookworm root file
# system with the kernel, firmware, GStreamer and the image's configuration, as
# <cache>/base-<source>.tar. Made once; rebuilt only when missing (or --rebuild-base).
# Stage 2 (every build, a few minutes): unpack the base, install the Hearth .deb in a chroot
# (qemu-user), enable hearth.service, and assemble the disk image without loop devices or
# mounts: mkfs.vfat + mcopy for RASPIFIRM, mke2fs -d for RASPIROOT, sfdisk + dd for the disk.
# Output: <out>/hearth-<source>-arm64.img and .img.zst. See image/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=bookworm
MIRROR=${HEARTH_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${HEARTH_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
RPI_ARCHIVE=${HEARTH_RPI_ARCHIVE:-http://archive.raspberrypi.com/debian}

FIRM_START_MIB=4      # the FAT partition starts at 4 MiB
FIRM_SIZE_MIB=256     # and is 256 MiB (type c, W95 FAT32 LBA)

DEB=""
OUT="$HERE/out"
CACHE=/var/cache/hearth-image
SOURCE=debian
BASE_ONLY=0
REBUILD_BASE=0

usage() {
  cat <<EOF
usage: $0 [--deb PATH] [--out DIR] [--cache DIR] [--source debian|rpios] [--base-only] [--rebuild-base]
  --deb PATH       the hearth arm64 .deb to install (required unless --base-only)
  --out DIR        where the image goes (default: image/out)
  --cache DIR      where the base root file system tarball is kept (default: /var/cache/hearth-image)
  --source S       debian (default; Debian's kernel and firmware: Pi 4, USB camera) or
                   rpios (Raspberry Pi OS archive: Pi 4 and Pi 5, Pi camera via libcamera)
  --base-only      build (or reuse) the cached base and stop
  --rebuild-base   build the base again even if it is cached
EOF
}

die() { echo "build-image: $*" >&2; exit 1; }
log() { echo "build-image: [$(date +%T)] $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --deb) DEB=${2:?--deb needs a path}; shift 2 ;;
    --deb=*) DEB=${1#*=}; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --cache) CACHE=${2:?--cache needs a directory}; shift 2 ;;
    --cache=*) CACHE=${1#*=}; shift ;;
    --source) SOURCE=${2:?--source needs debian or rpios}; shift 2 ;;
    --source=*) SOURCE=${1#*=}; shift ;;
    --base-only) BASE_ONLY=1; shift ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

case "$SOURCE" in debian|rpios) ;; *) die "--source must be debian or rpios, not '$SOURCE'" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap's root mode, chroot, binfmt_misc)"
if [ "$BASE_ONLY" -eq 0 ]; then
  [ -n "$DEB" ] || die "--deb PATH is required (the hearth arm64 .deb), or use --base-only"
  [ -f "$DEB" ] || die "no such .deb: $DEB"
  DEB=$(readlink -f "$DEB")
  deb_arch=$(dpkg-deb -f "$DEB" Architecture 2>/dev/null) || die "not a .deb: $DEB"
  [ "$deb_arch" = arm64 ] || die "$DEB is for $deb_arch, the image needs arm64"
  [ "$(dpkg-deb -f "$DEB" Package)" = hearth ] || die "$DEB is not the hearth package"
fi
mkdir -p "$OUT" "$CACHE"
OUT=$(readlink -f "$OUT")
CACHE=$(readlink -f "$CACHE")

# --- host tools --------------------------------------------------------------------------
HOST_PKGS=(mmdebstrap qemu-user-static binfmt-support arch-test debian-archive-keyring
           dosfstools mtools e2fsprogs fdisk zstd curl ca-certificates util-linux)
missing=()
for p in "${HOST_PKGS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing host packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# --- binfmt_misc: arm64 programs must run here (through qemu-aarch64-static) ---------------
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
fi
if [ -e /proc/sys/fs/binfmt_misc/status ] && ! grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
if ! grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || ! arch-test arm64 >/dev/null 2>&1; then
  die "cannot run arm64 binaries: binfmt_misc is not mounted or qemu-aarch64 is not registered (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64) - a container may need --privileged"
fi
grep -qs '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
  || log "warning: qemu-aarch64 is registered without the F flag; chroots may not find the interpreter"

# --- stage 1: the cached base root file system ---------------------------------------------
# Packages of the base. No openssh-server (no network login at all). systemd-timesyncd asks
# only the NTP server the home network names over DHCP (rootfs timesyncd.conf.d: the fallback
# is 127.0.0.1, never a pool: no outbound connection the owner did not configure); fake-hwclock keeps the clock
# moving forward across reboots on a board without a real-time clock until then.
# ca-certificates: the roots ACME and dynamic-DNS servers' HTTPS is checked against.
COMMON_PKGS=(systemd-sysv udev dbus kmod iproute2 systemd-resolved adduser
             avahi-daemon libnss-mdns ca-certificates
             initramfs-tools zstd e2fsprogs fdisk cloud-guest-utils fake-hwclock systemd-timesyncd
             wpasupplicant wireless-regdb iw
             alsa-utils
             gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
             gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-alsa gstreamer1.0-x
             gstreamer1.0-tools gstreamer1.0-nice)
DEBIAN_PKGS=(linux-image-arm64 raspi-firmware firmware-brcm80211)
RPIOS_PKGS=(raspberrypi-archive-keyring linux-image-rpi-v8 linux-image-rpi-2712 raspi-firmware
            firmware-brcm80211 libcamera-ipa libcamera-tools gstreamer1.0-libcamera)

BASE_TAR="$CACHE/base-$SOURCE.tar"

# Whatever shapes the base; recorded beside the tarball so a stale cache is reported.
# (image/rootfs and lib/configure-root.sh are applied again on every image: not part of it.)
base_recipe() {
  printf '%s\n' "$SUITE" "$SOURCE" "${COMMON_PKGS[*]}" "${DEBIAN_PKGS[*]}" "${RPIOS_PKGS[*]}"
  cat "$HERE/lib/customize-base.sh"
}

build_base() {
  local pkgs components mirrors=()
  if [ "$SOURCE" = debian ]; then
    pkgs=("${COMMON_PKGS[@]}" "${DEBIAN_PKGS[@]}")
    components="main contrib non-free-firmware"
  else
    pkgs=("${COMMON_PKGS[@]}" "${RPIOS_PKGS[@]}")
    components="main contrib non-free non-free-firmware"
    if ! curl -fsS --max-time 20 -o /dev/null "$RPI_ARCHIVE/dists/$SUITE/InRelease" 2>/dev/null; then
      die "--source rpios needs the Raspberry Pi OS archive ($RPI_ARCHIVE), which cannot be reached from here; use --source debian"
    fi
    local key="$CACHE/raspberrypi-archive-keyring.asc"
    curl -fsS --max-time 60 -o "$key.tmp" "$RPI_ARCHIVE/raspberrypi.gpg.key" \
      || die "cannot fetch the Raspberry Pi OS archive key from $RPI_ARCHIVE/raspberrypi.gpg.key"
    mv "$key.tmp" "$key"
    mirrors+=("deb [signed-by=$key] $RPI_ARCHIVE $SUITE main")
  fi
  mirrors=("deb $MIRROR $SUITE $components"
           "deb $MIRROR $SUITE-updates $components"
           "deb $SECURITY_MIRROR $SUITE-security $components"
           "${mirrors[@]}")

  local tmp="$BASE_TAR.tmp.$$"
  rm -f "$tmp"
  log "stage 1: building $BASE_TAR with mmdebstrap (arm64 $SUITE, ~20 min under emulation)"
  local t0=$SECONDS
  mmdebstrap --mode=root --arch=arm64 --variant=minbase --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-include=/usr/share/doc/hearth/*' \
    --include="$(IFS=,; echo "${pkgs[*]}")" \
    --skip=cleanup/apt/lists \
    --customize-hook="$(printf '%q' "$HERE/lib/customize-base.sh") \"\$1\" $SOURCE" \
    "$SUITE" "$tmp" "${mirrors[@]}" \
    || { rm -f "$tmp"; die "mmdebstrap failed (base-$SOURCE)"; }
  mv "$tmp" "$BASE_TAR"
  base_recipe | sha256sum | cut -d' ' -f1 >"$BASE_TAR.recipe"
  log "stage 1: done in $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s: $(du -h "$BASE_TAR" | cut -f1) $BASE_TAR"
}

if [ -s "$BASE_TAR" ] && [ "$REBUILD_BASE" -eq 0 ]; then
  log "stage 1: using cached $BASE_TAR"
  if [ "$(cat "$BASE_TAR.recipe" 2>/dev/null)" != "$(base_recipe | sha256sum | cut -d' ' -f1)" ]; then
    log "warning: the base was built from another recipe (packages or lib/customize-base.sh changed); --rebuild-base to refresh it"
  fi
else
  build_base
fi
[ "$BASE_ONLY" -eq 1 ] && exit 0

# --- stage 2: Hearth on the base, then the disk image ---------------------------------------
T0=$SECONDS
WORK=$(mktemp -d "$CACHE/work.XXXXXX")
cleanup() { rm -rf --one-file-system "$WORK"; }
trap cleanup EXIT
ROOT="$WORK/root"
mkdir "$ROOT"

log "stage 2: unpacking the base"
tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$BASE_TAR"

log "stage 2: installing $(basename "$DEB") in the image (chroot, qemu-user)"
cp "$DEB" "$ROOT/tmp/hearth.deb"
# No service starts inside the build.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
# The image's resolv.conf points at systemd-resolved, which is not running here.
mv "$ROOT/etc/resolv.conf" "$ROOT/etc/resolv.conf.hearth-build" 2>/dev/null || true
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# A private mount namespace: /proc and /dev go away with it, whatever happens.
unshare --mount --propagation private -- /bin/sh -eu -c '
  root=$1 here=$2 source=$3
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  mount -t sysfs sysfs "$root/sys"
  in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }
  if ! in_root apt-get install -y --no-install-recommends /tmp/hearth.deb; then
    echo "build-image: retrying after apt-get update" >&2
    in_root apt-get update -qq
    in_root apt-get install -y --no-install-recommends /tmp/hearth.deb
  fi
  in_root systemctl enable hearth.service
  in_root apt-get clean
  # The image configuration again (image/rootfs may have changed since the base was made),
  # and Debian'"'"'s firmware hook again so config.txt/cmdline.txt follow it.
  "$here/lib/configure-root.sh" "$root"
  if [ "$source" = debian ]; then
    in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware
  fi
' sh "$ROOT" "$HERE" "$SOURCE"
rm -f "$ROOT/tmp/hearth.deb" "$ROOT/usr/sbin/policy-rc.d" "$ROOT/etc/resolv.conf"
mv "$ROOT/etc/resolv.conf.hearth-build" "$ROOT/etc/resolv.conf" 2>/dev/null || true
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/apt/* "$ROOT"/var/log/dpkg.log
[ -x "$ROOT/usr/bin/hearth" ] || die "the .deb did not install /usr/bin/hearth"
unit=""
for u in "$ROOT/lib/systemd/system/hearth.service" "$ROOT/usr/lib/systemd/system/hearth.service"; do
  [ -f "$u" ] && unit=$u
done
[ -n "$unit" ] || die "the .deb did not install hearth.service"
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/hearth.service" ] || die "hearth.service is not enabled"

log "stage 2: RASPIFIRM (FAT32, ${FIRM_SIZE_MIB} MiB) from /boot/firmware"
FW="$ROOT/boot/firmware"
ls "$FW"/config.txt "$FW"/cmdline.txt >/dev/null || die "no config.txt/cmdline.txt in the base's /boot/firmware"
FAT="$WORK/firmware.vfat"
truncate -s "${FIRM_SIZE_MIB}M" "$FAT"
mkfs.vfat -F 32 -n RASPIFIRM "$FAT" >/dev/null
mcopy -i "$FAT" -s -p -m -Q "$FW"/* ::/
# /boot/firmware stays as an empty mount point in the root file system.
find "$FW" -mindepth 1 -delete

log "stage 2: RASPIROOT (ext4, mke2fs -d)"
used_mib=$(du -sxm "$ROOT" | cut -f1)
# Room for the journal, metadata and a first boot; the partition grows to the card's size
# on first boot (hearth-growroot.service).
root_mib=$(( (used_mib * 115 / 100 + 256 + 3) / 4 * 4 ))
EXT4="$WORK/root.ext4"
mke2fs -q -t ext4 -L RASPIROOT -d "$ROOT" "$EXT4" "${root_mib}M" >/dev/null
e2fsck -fn "$EXT4" >/dev/null 2>&1 || die "e2fsck found problems in the new root file system"

IMG_NAME="hearth-$SOURCE-arm64.img"
IMG="$OUT/$IMG_NAME"
log "stage 2: assembling $IMG ($((FIRM_START_MIB + FIRM_SIZE_MIB + root_mib)) MiB)"
rm -f "$IMG.tmp"
truncate -s "$((FIRM_START_MIB + FIRM_SIZE_MIB + root_mib))M" "$IMG.tmp"
sfdisk --quiet "$IMG.tmp" <<EOF
label: dos
unit: sectors

start=$((FIRM_START_MIB * 2048)), size=$((FIRM_SIZE_MIB * 2048)), type=c
start=$(((FIRM_START_MIB + FIRM_SIZE_MIB) * 2048)), size=$((root_mib * 2048)), type=83
EOF
dd if="$FAT" of="$IMG.tmp" bs=1M seek="$FIRM_START_MIB" conv=notrunc,sparse status=none
dd if="$EXT4" of="$IMG.tmp" bs=1M seek="$((FIRM_START_MIB + FIRM_SIZE_MIB))" conv=notrunc,sparse status=none
mv "$IMG.tmp" "$IMG"

log "stage 2: compressing $IMG_NAME.zst"
zstd -q -f -T0 -10 "$IMG" -o "$IMG.zst"
(cd "$OUT" && sha256sum "$IMG_NAME" "$IMG_NAME.zst" >"$IMG_NAME.sha256")

log "stage 2: done in $(( (SECONDS - T0) / 60 )) min $(( (SECONDS - T0) % 60 )) s"
ls -l "$IMG" "$IMG.zst"
echo "Flash: zstd -d -c $IMG.zst | dd of=/dev/sdX bs=4M conv=fsync"
