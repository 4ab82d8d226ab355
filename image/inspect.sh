#!/usr/bin/env bash
# Checks a built Hearth SD-card image without mounting it (no loop device, no root needed
# beyond reading the file): sfdisk -J for the partition table, dd to copy each partition to
# a temporary file, mtools for the FAT one, debugfs for the ext4 one.
#
#   image/inspect.sh image/out/hearth-debian-arm64.img
#
# Exits 0 when every check passes, 1 with the list of misses otherwise.
set -euo pipefail

IMG=${1:?usage: $0 IMAGE}
[ -f "$IMG" ] || { echo "inspect: no such image: $IMG" >&2; exit 1; }

need=()
for p in fdisk mtools e2fsprogs jq coreutils; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "inspect: missing packages: ${need[*]}" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fails=0
ok()   { echo "ok    $*"; }
miss() { echo "MISS  $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else miss "$what"; fi; }

# --- partition table ---
json=$(sfdisk -J "$IMG") || { echo "inspect: sfdisk cannot read a partition table in $IMG" >&2; exit 1; }
label=$(jq -r '.partitiontable.label' <<<"$json")
count=$(jq '.partitiontable.partitions | length' <<<"$json")
check "MBR (dos) partition table [$label]" test "$label" = dos
check "two partitions [$count]" test "$count" -eq 2
[ "$count" -ge 2 ] || { echo "inspect: FAILED ($fails)"; exit 1; }
p() { jq -r ".partitiontable.partitions[$1].$2" <<<"$json"; }
fat_start=$(p 0 start); fat_size=$(p 0 size); fat_type=$(p 0 type)
root_start=$(p 1 start); root_size=$(p 1 size); root_type=$(p 1 type)
check "partition 1 is FAT32 LBA (type c) [$fat_type]" test "$fat_type" = c
check "partition 1 starts at 4 MiB [sector $fat_start]" test "$fat_start" -eq 8192
check "partition 1 is 256 MiB [$((fat_size / 2048)) MiB]" test "$fat_size" -eq 524288
check "partition 2 is Linux (type 83) [$root_type]" test "$root_type" = 83

extract() { # start size file
  dd if="$IMG" of="$3" bs=4M iflag=skip_bytes,count_bytes skip=$(($1 * 512)) count=$(($2 * 512)) \
    conv=sparse status=none
}
extract "$fat_start" "$fat_size" "$WORK/fat"
extract "$root_start" "$root_size" "$WORK/root"

# --- FAT: RASPIFIRM ---
fat_label=$(mlabel -i "$WORK/fat" -s :: 2>/dev/null | sed -n 's/^ *Volume label is \(.*\)$/\1/p' | sed 's/ *$//')
check "FAT label RASPIFIRM [$fat_label]" test "$fat_label" = RASPIFIRM
mdir -i "$WORK/fat" -b ::/ 2>/dev/null | sed 's#^::/##' >"$WORK/fat.list" || true
echo "      FAT files: $(tr '\n' ' ' <"$WORK/fat.list")"
has()  { grep -qx "$1" "$WORK/fat.list"; }
hasg() { grep -qE "$1" "$WORK/fat.list"; }
for f in start4.elf fixup4.dat bcm2711-rpi-4-b.dtb config.txt cmdline.txt; do
  check "FAT has $f" has "$f"
done
check "FAT has a kernel (vmlinuz* or kernel*.img)" hasg '^(vmlinuz.*|kernel.*\.img)$'
check "FAT has an initrd (initrd.img* or initramfs*)" hasg '^(initrd\.img.*|initramfs.*)$'
if hasg '^bcm2712-rpi-5-b\.dtb$'; then echo "      (Pi 5 device tree present)"; fi
mtype -i "$WORK/fat" ::config.txt >"$WORK/config.txt" 2>/dev/null || : >"$WORK/config.txt"
mtype -i "$WORK/fat" ::cmdline.txt >"$WORK/cmdline.txt" 2>/dev/null || : >"$WORK/cmdline.txt"
for l in arm_64bit=1 camera_auto_detect=1 display_auto_detect=1 dtoverlay=vc4-kms-v3d; do
  check "config.txt: $l" grep -qx "$l" <(tr -d '\r' <"$WORK/config.txt")
done
for w in root=LABEL=RASPIROOT console=serial0,115200 console=tty1 rootwait; do
  check "cmdline.txt: $w" grep -qw -- "$w" "$WORK/cmdline.txt"
done
if grep -q '^kernel=' "$WORK/config.txt"; then  # Debian's hook names the kernel and initramfs
  k=$(sed -n 's/^kernel=//p' "$WORK/config.txt" | tr -d '\r')
  check "config.txt's kernel=$k is on the FAT" has "$k"
  i=$(sed -n 's/^initramfs \([^ ]*\).*/\1/p' "$WORK/config.txt" | tr -d '\r')
  [ -z "$i" ] || check "config.txt's initramfs $i is on the FAT" has "$i"
fi

# --- ext4: RASPIROOT ---
dbg() { debugfs -R "$1" "$WORK/root" 2>/dev/null; }
root_label=$(e2label "$WORK/root" 2>/dev/null || true)
check "ext4 label RASPIROOT [$root_label]" test "$root_label" = RASPIROOT
fsck_clean() { e2fsck -fn "$WORK/root" >/dev/null 2>&1; }
check "ext4 is clean (e2fsck -fn)" fsck_clean
stat_hearth=$(dbg 'stat /usr/bin/hearth')
check "/usr/bin/hearth present" grep -q 'Type: regular' <<<"$stat_hearth"
mode=$(sed -n 's/.*Mode: *\([0-7]*\).*/\1/p' <<<"$stat_hearth" | head -1)
check "/usr/bin/hearth executable [mode ${mode:-?}]" test "$(( 8#${mode:-0} & 0111 ))" -ne 0
unit=$(dbg 'stat /usr/lib/systemd/system/hearth.service'; dbg 'stat /lib/systemd/system/hearth.service')
check "hearth.service unit file installed" grep -q 'Type: regular' <<<"$unit"
wants=$(dbg 'ls -l /etc/systemd/system/multi-user.target.wants')
check "hearth.service enabled (multi-user.target.wants)" grep -qw 'hearth.service' <<<"$wants"
link=$(dbg 'stat /etc/systemd/system/multi-user.target.wants/hearth.service' | sed -n 's/.*Fast link dest: "\(.*\)"/\1/p')
check "  -> $link" grep -q 'hearth.service$' <<<"$link"
check "hearth-growroot.service enabled" grep -qw 'hearth-growroot.service' <<<"$wants"
check "/etc/hostname is hearth" test "$(dbg 'cat /etc/hostname')" = hearth
fstab=$(dbg 'cat /etc/fstab')
check "fstab mounts LABEL=RASPIROOT on /" grep -qE '^LABEL=RASPIROOT[[:space:]]+/[[:space:]]+ext4' <<<"$fstab"
check "fstab mounts LABEL=RASPIFIRM on /boot/firmware" grep -qE '^LABEL=RASPIFIRM[[:space:]]+/boot/firmware[[:space:]]+vfat' <<<"$fstab"
check "no ssh server (/usr/sbin/sshd absent)" test -z "$(dbg 'stat /usr/sbin/sshd' | grep 'Type:' || true)"
check "root's password locked" grep -qE '^root:[!*]' <<<"$(dbg 'cat /etc/shadow')"
check "/boot/firmware is an empty mount point" test "$(dbg 'ls -p /boot/firmware' | awk -F/ 'NF > 5 && $6 != "." && $6 != ".."' | wc -l)" -eq 0
check "gst-launch-1.0 present (GStreamer runtime)" grep -q 'Type: regular' <<<"$(dbg 'stat /usr/bin/gst-launch-1.0')"

echo "image: $IMG ($(( $(stat -c %s "$IMG") / 1048576 )) MiB, root partition $((root_size / 2048)) MiB)"
if [ "$fails" -gt 0 ]; then echo "inspect: FAILED ($fails checks)"; exit 1; fi
echo "inspect: all checks passed"
