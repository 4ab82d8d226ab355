#!/usr/bin/env bash
# Boots a Hearth SD-card image under qemu-system-aarch64 (-M virt, Cortex-A72, TCG) with the
# image's own kernel and initrd, and waits until hearth.service has started and
# https://127.0.0.1:18443/join answers 200 (guest port 8443, forwarded on the host's
# loopback only).
#
#   image/boot-check.sh [--timeout SEC] [--port PORT] [--log FILE] [--no-journal] [--bare] [--offscreen] [--stay SEC]
#                       [--setup FILE] [--no-network] IMAGE
#
# First boot: --setup FILE boots a copy with FILE on the FAT partition as hearth-setup.toml
# and, after the boot, checks the copy's disk: the file is gone, the Wi-Fi configuration and
# the box's name are written. --no-network boots without a network card and waits instead for
# Hearth to say the box is not connected.
#
# The image itself is not written: the guest's disk is a qcow2 overlay on it, 1 GiB larger,
# so the first-boot partition grow has room to act. The kernel and initrd are taken from the
# FAT partition (mcopy), or from the root file system's /boot (debugfs) when the FAT one has
# none that QEMU can boot. Exits 0 on success, 1 on timeout or when QEMU stops.
set -euo pipefail

TIMEOUT=900
PORT=18443
LOG=""
# The journal goes to the serial console too, so the daemon's own lines (its "Join:" line,
# its errors) are in the log; --no-journal leaves only systemd's status lines.
APPEND_EXTRA="systemd.journald.forward_to_console=1"
# Stand-ins for a box's peripherals, as a Pi 4 on a TV has them: a sound card (HDA, sound
# discarded by QEMU) and a KMS display (virtio-gpu, nothing shown). --bare boots without.
# shellcheck disable=SC2054  # commas belong to QEMU options
PERIPHERALS=(-audiodev none,id=snd0 -device intel-hda -device hda-duplex,audiodev=snd0
             -device virtio-gpu-pci)
# GStreamer's kmssink knows no display driver QEMU's virt board has (virtio_gpu is not in its
# list): --offscreen boots a copy of the image whose /etc/hearth/hearth.toml also says
# [board.display] sink = "offscreen" (written with debugfs, no mount). The image is unchanged.
OFFSCREEN=0
# --stay SEC: after success, keep the guest running SEC seconds more and poll /join every
# 10 s, to see the unit stays up (watchdog, restarts).
STAY=0
SETUP=""
NETWORK=1
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --port) PORT=${2:?}; shift 2 ;;
    --log) LOG=${2:?}; shift 2 ;;
    --no-journal) APPEND_EXTRA=""; shift ;;
    --bare) PERIPHERALS=(); shift ;;
    --offscreen) OFFSCREEN=1; shift ;;
    --stay) STAY=${2:?}; shift 2 ;;
    --setup) SETUP=$(readlink -f "${2:?}"); shift 2 ;;
    --no-network) NETWORK=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "boot-check: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
IMG=${1:?usage: $0 [--timeout SEC] [--port PORT] [--log FILE] [--no-journal] [--bare] [--offscreen] [--stay SEC] [--setup FILE] [--no-network] IMAGE}
[ -z "$SETUP" ] || [ -f "$SETUP" ] || { echo "boot-check: no such setup file: $SETUP" >&2; exit 1; }
[ -f "$IMG" ] || { echo "boot-check: no such image: $IMG" >&2; exit 1; }
IMG=$(readlink -f "$IMG")
LOG=${LOG:-${IMG%.img}.boot.log}

# The packages it needs, installed when missing. A second pass puts back what the first one
# removed: bookworm's qemu-system-arm breaks a newer qemu-utils (bookworm-backports), and
# `apt-get install -y` removes that one, qemu-img with it; the second pass installs the
# qemu-utils that matches.
PKGS=(qemu-system-arm qemu-utils ipxe-qemu curl mtools e2fsprogs fdisk jq)
missing_pkgs() {
  local p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"
  done
}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
updated=0
for _pass in 1 2; do
  mapfile -t need < <(missing_pkgs)
  [ ${#need[@]} -gt 0 ] || break
  echo "boot-check: installing ${need[*]}"
  [ "$updated" -eq 1 ] || { $SUDO apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
done
for c in qemu-system-aarch64 qemu-img curl mcopy mdir debugfs sfdisk jq; do
  command -v "$c" >/dev/null || { echo "boot-check: $c not found (packages: ${PKGS[*]})" >&2; exit 1; }
done

WORK=$(mktemp -d)
QPID=""
cleanup() {
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
    kill "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "boot-check: interrupted"; [ -s "${LOG:-/nonexistent}" ] && report_tail; exit 1' INT TERM
report_tail() {
  echo "----- last 30 console lines -----"
  tr -d '\r' <"$LOG" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' | tail -30
  echo "---------------------------------"
  echo "boot-check: elapsed $((SECONDS - ${start:-0}))s"
}

# --- kernel and initrd from the image, without mounting it ---
json=$(sfdisk -J "$IMG")
p() { jq -r ".partitiontable.partitions[$1].$2" <<<"$json"; }
dd if="$IMG" of="$WORK/fat" bs=4M iflag=skip_bytes,count_bytes \
  skip=$(( $(p 0 start) * 512 )) count=$(( $(p 0 size) * 512 )) status=none
kernel=$(mdir -i "$WORK/fat" -b ::/ 2>/dev/null | sed 's#^::/##' | grep '^vmlinuz-' | sort -V | tail -1 || true)
if [ -n "$kernel" ]; then
  ver=${kernel#vmlinuz-}
  mcopy -i "$WORK/fat" "::$kernel" "$WORK/vmlinuz"
  mcopy -i "$WORK/fat" "::initrd.img-$ver" "$WORK/initrd"
  echo "boot-check: kernel $kernel and initrd.img-$ver from RASPIFIRM"
else
  # Raspberry Pi OS names them kernel8.img/initramfs8 on the FAT; /boot has the usual names.
  dd if="$IMG" of="$WORK/root" bs=4M iflag=skip_bytes,count_bytes \
    skip=$(( $(p 1 start) * 512 )) count=$(( $(p 1 size) * 512 )) conv=sparse status=none
  kernel=$(debugfs -R 'ls -p /boot' "$WORK/root" 2>/dev/null | awk -F/ '$6 ~ /^vmlinuz-/ {print $6}' | sort -V | tail -1)
  [ -n "$kernel" ] || { echo "boot-check: no kernel found in the image" >&2; exit 1; }
  ver=${kernel#vmlinuz-}
  debugfs -R "dump /boot/$kernel $WORK/vmlinuz" "$WORK/root" 2>/dev/null
  debugfs -R "dump /boot/initrd.img-$ver $WORK/initrd" "$WORK/root" 2>/dev/null
  rm -f "$WORK/root"
  echo "boot-check: kernel $kernel and initrd.img-$ver from RASPIROOT's /boot"
fi
[ -s "$WORK/vmlinuz" ] && [ -s "$WORK/initrd" ] || { echo "boot-check: could not extract the kernel/initrd" >&2; exit 1; }
rm -f "$WORK/fat"

size=$(stat -c %s "$IMG")
if [ "$OFFSCREEN" -eq 1 ] || [ -n "$SETUP" ]; then
  # A copy to change (and, with --setup, to read back after the boot).
  cp --sparse=always "$IMG" "$WORK/disk.img"
  truncate -s $(( size + 1024 * 1048576 )) "$WORK/disk.img"
  rs=$(( $(p 1 start) * 512 )) rl=$(( $(p 1 size) * 512 ))
  fs=$(( $(p 0 start) * 512 )) fl=$(( $(p 0 size) * 512 ))
  DRIVE="file=$WORK/disk.img,format=raw"
fi
if [ "$OFFSCREEN" -eq 1 ]; then
  dd if="$WORK/disk.img" of="$WORK/root" bs=4M iflag=skip_bytes,count_bytes skip=$rs count=$rl conv=sparse status=none
  debugfs -R 'cat /etc/hearth/hearth.toml' "$WORK/root" 2>/dev/null >"$WORK/hearth.toml"
  printf '\n# boot-check --offscreen: QEMU has no display kmssink can drive.\n[board.display]\nsink = "offscreen"\n' >>"$WORK/hearth.toml"
  debugfs -w -f - "$WORK/root" >/dev/null 2>&1 <<EOF
rm /etc/hearth/hearth.toml
write $WORK/hearth.toml /etc/hearth/hearth.toml
sif /etc/hearth/hearth.toml uid 0
sif /etc/hearth/hearth.toml gid 0
sif /etc/hearth/hearth.toml mode 0100644
EOF
  debugfs -R 'cat /etc/hearth/hearth.toml' "$WORK/root" 2>/dev/null | grep -q 'sink = "offscreen"' \
    || { echo "boot-check: could not write the offscreen configuration" >&2; exit 1; }
  dd if="$WORK/root" of="$WORK/disk.img" bs=4M seek=$rs oflag=seek_bytes conv=notrunc,sparse status=none
  rm -f "$WORK/root"
  echo "boot-check: booting a copy with [board.display] sink = \"offscreen\" in /etc/hearth/hearth.toml"
fi
if [ -n "$SETUP" ]; then
  dd if="$WORK/disk.img" of="$WORK/fat" bs=4M iflag=skip_bytes,count_bytes skip=$fs count=$fl status=none
  mcopy -o -i "$WORK/fat" "$SETUP" ::hearth-setup.toml
  dd if="$WORK/fat" of="$WORK/disk.img" bs=4M seek=$fs oflag=seek_bytes conv=notrunc status=none
  rm -f "$WORK/fat"
  echo "boot-check: booting a copy with $(basename "$SETUP") on RASPIFIRM as hearth-setup.toml"
fi
if [ -z "${DRIVE:-}" ]; then
  qemu-img create -q -f qcow2 -F raw -b "$IMG" "$WORK/disk.qcow2" $(( size + 1024 * 1048576 ))
  DRIVE="file=$WORK/disk.qcow2,format=qcow2"
fi
if [ "$NETWORK" -eq 1 ]; then
  # shellcheck disable=SC2054
  NET=(-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:8443" -device virtio-net-pci,netdev=n0)
else
  NET=(-nic none)
fi

# --- boot ---
: >"$LOG"
start=$SECONDS
echo "boot-check: booting $(basename "$IMG") (timeout ${TIMEOUT}s, console log $LOG)"
qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2048 -nographic -no-reboot \
  -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd" \
  -append "console=ttyAMA0 root=LABEL=RASPIROOT rw $APPEND_EXTRA" \
  -drive if=none,id=d0,"$DRIVE" -device virtio-blk-pci,drive=d0 \
  "${NET[@]}" \
  "${PERIPHERALS[@]}" \
  </dev/null >"$LOG" 2>&1 &
QPID=$!

started=0 code=000 result=timeout done_lines=0 last_note=$SECONDS
: >"$WORK/seen"
clean_log() { tr -d '\r' <"$LOG" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g'; }
# A console line without its timestamps, PIDs and counters: a restart loop prints each
# distinct message once.
normalize() {
  sed -E 's/^\[ *[0-9]+\.[0-9]+\] //; s/\[[0-9]+\]:/:/; s/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z +//;
          s/[0-9.]+(ms|s) CPU time/_ CPU time/; s/counter is at [0-9]+/counter is at _/'
}
while [ $((SECONDS - start)) -lt "$TIMEOUT" ]; do
  if ! kill -0 "$QPID" 2>/dev/null; then result=qemu-exited; break; fi
  # Report hearth's lines on the console (systemd's about the unit, the daemon's own) as
  # they appear, each distinct one once.
  total=$(clean_log | wc -l)
  if [ "$total" -gt "$done_lines" ]; then
    clean_log | sed -n "$((done_lines + 1)),${total}p" \
      | grep -E 'hearth(\.service|\[[0-9]+\]|-growroot)|Hearth family video call box|Join: |growpart|resize2fs' \
      | while IFS= read -r line; do
          key=$(normalize <<<"$line")
          grep -qxF -- "$key" "$WORK/seen" && continue
          printf '%s\n' "$key" >>"$WORK/seen"
          echo "boot-check: [$((SECONDS - start))s] $line"
        done || true
    done_lines=$total
  fi
  if [ "$started" -eq 0 ] && clean_log | grep -qE 'Started (hearth\.service|Hearth family video call box)|Join: https://'; then
    started=1
    echo "boot-check: [$((SECONDS - start))s] hearth.service started"
  fi
  if [ "$NETWORK" -eq 0 ]; then
    # Nothing to ask over the network: Hearth's own words that it has none.
    if [ "$started" -eq 1 ] && clean_log | grep -q 'family outside cannot join: this box is not connected to a network'; then
      result=ok; break
    fi
  # Also try once the guest is at its login prompt, in case the start line was missed.
  elif [ "$started" -eq 1 ] || clean_log | grep -q 'hearth login:'; then
    code=$(curl -sk -o "$WORK/join.html" -w '%{http_code}' --max-time 10 "https://127.0.0.1:$PORT/join" || true)
    if [ "$code" = 200 ]; then result=ok; break; fi
  fi
  if [ $((SECONDS - last_note)) -ge 60 ]; then
    last_note=$SECONDS
    restarts=$(clean_log | sed -n 's/.*hearth\.service: Scheduled restart job, restart counter is at \([0-9]*\).*/\1/p' | tail -1)
    echo "boot-check: [$((SECONDS - start))s] waiting (hearth.service restarts: ${restarts:-0}, /join: $code)"
  fi
  sleep 5
done
elapsed=$((SECONDS - start))
if [ "$result" = ok ] && [ "$STAY" -gt 0 ]; then
  echo "boot-check: staying ${STAY}s, polling /join every 10s"
  before=$(clean_log | grep -c 'hearth.service: Scheduled restart job' || true)
  ok_polls=0 bad_polls=0 t_end=$((SECONDS + STAY))
  while [ $SECONDS -lt $t_end ] && kill -0 "$QPID" 2>/dev/null; do
    sleep 10
    c=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "https://127.0.0.1:$PORT/join" || true)
    if [ "$c" = 200 ]; then ok_polls=$((ok_polls + 1)); else bad_polls=$((bad_polls + 1)); echo "boot-check: /join answered $c"; fi
  done
  after=$(clean_log | grep -c 'hearth.service: Scheduled restart job' || true)
  echo "boot-check: stay: $ok_polls polls answered 200, $bad_polls did not; hearth.service restarts during the stay: $((after - before))"
  [ "$bad_polls" -eq 0 ] && [ "$after" -eq "$before" ] || result=unstable
fi
report_tail
if [ "$result" = ok ] && [ -n "$SETUP" ]; then
  # Read back what first boot did to the card. The setup step syncs its writes; the guest
  # is stopped without a shutdown, as a power cut would.
  kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; QPID=""
  dd if="$WORK/disk.img" of="$WORK/fat" bs=4M iflag=skip_bytes,count_bytes skip=$fs count=$fl status=none
  dd if="$WORK/disk.img" of="$WORK/root" bs=4M iflag=skip_bytes,count_bytes skip=$rs count=$((rl + 1024 * 1048576)) conv=sparse status=none
  on_fat=$(mdir -i "$WORK/fat" -b ::/ 2>/dev/null | sed 's#^::/##')
  wpa=$(debugfs -R 'cat /etc/wpa_supplicant/wpa_supplicant-wlan0.conf' "$WORK/root" 2>/dev/null || true)
  wpa_mode=$(debugfs -R 'stat /etc/wpa_supplicant/wpa_supplicant-wlan0.conf' "$WORK/root" 2>/dev/null | sed -n 's/.*Mode: *\([0-7]*\).*/\1/p')
  name=$(debugfs -R 'cat /var/lib/hearth/box-name' "$WORK/root" 2>/dev/null || true)
  echo "boot-check: after first boot: RASPIFIRM has hearth-setup.toml: $(grep -qx 'hearth-setup.toml' <<<"$on_fat" && echo yes || echo no), hearth-setup-error.txt: $(grep -qx 'hearth-setup-error.txt' <<<"$on_fat" && echo yes || echo no)"
  echo "boot-check: /etc/wpa_supplicant/wpa_supplicant-wlan0.conf (mode ${wpa_mode:-missing}):"
  sed 's/psk=.*/psk=<redacted>/; s/^/boot-check:   /' <<<"$wpa"
  echo "boot-check: /var/lib/hearth/box-name: ${name:-missing}"
  grep -qx 'hearth-setup.toml' <<<"$on_fat" && result=setup-left
  grep -qx 'hearth-setup-error.txt' <<<"$on_fat" && result=setup-refused
  grep -q '^network={' <<<"$wpa" && grep -q 'ssid=' <<<"$wpa" && [ "$wpa_mode" = 0600 ] || result=setup-missing
fi
case "$result" in
  ok)
    if [ "$NETWORK" -eq 1 ]; then
      echo "boot-check: OK in ${elapsed}s: hearth.service started, https://127.0.0.1:$PORT/join answered 200 ($(stat -c %s "$WORK/join.html") bytes)"
    else
      echo "boot-check: OK in ${elapsed}s: hearth.service started and says the box is not connected to a network"
    fi
    [ -z "$SETUP" ] || echo "boot-check: OK: the setup file was applied and removed"
    exit 0 ;;
  setup-*)
    echo "boot-check: FAILED: first-boot setup ($result)"; exit 1 ;;
  unstable)
    echo "boot-check: FAILED: /join answered after ${elapsed}s but hearth did not stay up (see above)"; exit 1 ;;
  qemu-exited)
    echo "boot-check: FAILED after ${elapsed}s: QEMU stopped (see $LOG)"; exit 1 ;;
  *)
    echo "boot-check: FAILED: timeout after ${elapsed}s (hearth started: $([ $started -eq 1 ] && echo yes || echo no), last /join answer: $code)"
    exit 1 ;;
esac
