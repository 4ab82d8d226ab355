#!/bin/sh
# The box's own clock chain, as the image runs it: systemd-networkd takes an address and the
# NTP server over DHCP (option 42), systemd-timesyncd asks that server and marks the clock
# synchronised. Both with the image's own files (image/rootfs), without systemd as PID 1.
#
# Run as root inside the box's network namespace and a private mount namespace:
#   nsenter --net=<box> unshare --mount --propagation private tests/netsim/timesync.sh OUT
# OUT (made by the caller) receives: run-systemd/ (bound onto /run/systemd: the mark is
# run-systemd/timesync/synchronized), networkd.log, timesyncd.log, and `ntp-known` once
# networkd has learnt the NTP server. timesyncd starts only once the caller creates OUT/go.
#
# Nothing can set the machine's clock: both daemons run without CAP_SYS_TIME (timesyncd
# logs that clock_adjtime was refused, and still marks the clock synchronised, as it does
# once it trusts its server). Nothing touches the host's /etc, /run or /var: all are private
# mounts here and vanish with the namespace.
set -eu
OUT=$1
IMAGE=$(dirname "$0")/../../image/rootfs
# Where systemd-timesyncd is not installed (another NTP client is), `make deps` unpacks it
# into target/ instead of replacing that client.
TIMESYNCD=/lib/systemd/systemd-timesyncd
[ -x "$TIMESYNCD" ] || TIMESYNCD=$(dirname "$0")/../../target/timesyncd/lib/systemd/systemd-timesyncd
mkdir -p "$OUT/run-systemd" "$OUT/var-lib"
mount --bind "$OUT/run-systemd" /run/systemd
mkdir -p /run/systemd/netif /run/systemd/timesync
chown systemd-network:systemd-network /run/systemd/netif
# timesyncd runs as nobody: its package's own user may not exist where it is not installed.
chown nobody:nogroup /run/systemd/timesync
# No system bus: the daemons must not talk to the host's.
[ ! -d /run/dbus ] || mount -t tmpfs tmpfs /run/dbus
# This namespace's sysfs, read-only: networkd then does not wait for udev.
mount -t sysfs -o ro sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /etc/systemd
mkdir -p /etc/systemd/network /etc/systemd/timesyncd.conf.d
cp "$IMAGE/etc/systemd/network/20-wired.network" /etc/systemd/network/
cp "$IMAGE/etc/systemd/timesyncd.conf.d/hearth.conf" /etc/systemd/timesyncd.conf.d/
printf '[Time]\n' >/etc/systemd/timesyncd.conf
mount --bind "$OUT/var-lib" /var/lib/systemd
mkdir -p /var/lib/systemd/timesync
chown nobody:nogroup /var/lib/systemd/timesync
export SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console
setpriv --bounding-set=-sys_time --inh-caps=-sys_time -- /lib/systemd/systemd-networkd \
    >"$OUT/networkd.log" 2>&1 &
n=0
until grep -qs '^NTP=.' /run/systemd/netif/links/*; do
    n=$((n + 1)); [ $n -lt 600 ] || { echo "networkd learnt no NTP server in 30 s" >&2; exit 1; }
    sleep 0.05
done
: >"$OUT/ntp-known"
n=0
until [ -e "$OUT/go" ]; do
    n=$((n + 1)); [ $n -lt 1200 ] || exit 1
    sleep 0.05
done
setpriv --reuid=nobody --regid=nogroup --clear-groups --bounding-set=-all --inh-caps=-all \
    --no-new-privs -- "$TIMESYNCD" >"$OUT/timesyncd.log" 2>&1 &
wait
