#!/bin/sh
# mmdebstrap --customize-hook for the Hearth base root file system (see ../README.md).
# Runs on the host after every package is installed; $1 is the root directory, $2 the source
# (debian | rpios). Commands meant for the target run through chroot (qemu-aarch64 binfmt).
set -eu
root=$1
source=$2
here=$(cd "$(dirname "$0")/.." && pwd)

"$here/lib/configure-root.sh" "$root"

case "$source" in
debian)
  # Debian's raspi-firmware writes /boot/firmware/{config.txt,cmdline.txt} itself on every
  # kernel or initramfs update, from /etc/default/raspi-firmware (a conffile: settings are
  # appended, later assignments win), /etc/default/raspi-firmware-custom (extra config.txt
  # lines, from image/rootfs) and /etc/default/raspi-extra-cmdline. Configure, then rerun
  # its hook so the files reflect the configuration.
  cat >>"$root/etc/default/raspi-firmware" <<'CONF'

# Hearth image (image/build-image.sh): boot by label, serial + HDMI consoles.
ROOTPART="LABEL=RASPIROOT"
CONSOLES="serial0,115200 tty1"
# No cma= on the command line: Debian's own default on a Pi 4 (its hook only omits it when
# it runs on a Pi 4, not in the image build).
CMA=0
KERNEL_ARCH="arm64"
CONF
  : >"$root/etc/default/raspi-extra-cmdline"
  chroot "$root" env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware
  ;;
rpios)
  # Raspberry Pi OS: its firmware package copies kernels, initramfs, DTBs and overlays into
  # /boot/firmware; config.txt and cmdline.txt are the image's to write (pi-gen does the same).
  mkdir -p "$root/boot/firmware"
  cat >"$root/boot/firmware/config.txt" <<'CONF'
# Hearth image (image/build-image.sh --source rpios)
arm_64bit=1
auto_initramfs=1
camera_auto_detect=1
display_auto_detect=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
disable_overscan=1
enable_uart=1

[pi4]
arm_boost=1

[all]
CONF
  echo "console=serial0,115200 console=tty1 root=LABEL=RASPIROOT rootfstype=ext4 rw fsck.repair=yes rootwait" \
    >"$root/boot/firmware/cmdline.txt"
  # From now on apt in the image verifies with the keyring package, not the build's copy.
  sed -i 's#signed-by=[^] ]*raspberrypi[^] ]*#signed-by=/usr/share/keyrings/raspberrypi-archive-keyring.gpg#' \
    "$root/etc/apt/sources.list"
  ;;
esac

echo "customize: /boot/firmware:"
ls -l "$root/boot/firmware" | sed 's/^/  /'
for f in config.txt cmdline.txt; do
  [ -s "$root/boot/firmware/$f" ] || { echo "customize: /boot/firmware/$f missing" >&2; exit 1; }
  echo "--- $f"; cat "$root/boot/firmware/$f"
done
