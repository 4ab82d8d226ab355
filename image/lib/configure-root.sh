#!/bin/sh
# The image's own configuration, applied to a root directory ($1): the files of image/rootfs,
# the gpio group, root's locked password, the enabled services, a first-boot machine id.
# Idempotent: build-image.sh runs it when it makes the cached base (from mmdebstrap's
# customize hook, through customize-base.sh) and again on every image, so a change here or
# in image/rootfs reaches the next image without rebuilding the base.
set -eu
root=$1
here=$(cd "$(dirname "$0")/.." && pwd)

echo "configure-root: files from image/rootfs"
tar -C "$here/rootfs" --owner=0 --group=0 --numeric-owner -cf - . \
  | tar -C "$root" --no-overwrite-dir -xpf -

chroot "$root" sh -c 'getent group gpio >/dev/null || groupadd --system gpio'
# No remote login exists (no ssh); lock root's password so there is no local one either.
chroot "$root" passwd --lock root >/dev/null
chroot "$root" systemctl enable --quiet systemd-networkd.service systemd-resolved.service \
  avahi-daemon.service hearth-growroot.service hearth-setup.service wpa_supplicant@wlan0.service \
  hearth-hotspot.service hearth-wifi-request.path
# First boot: systemd makes a fresh machine id (and ConditionFirstBoot units run).
printf 'uninitialized\n' >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
