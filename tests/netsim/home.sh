#!/bin/sh
# A simulated home network in network namespaces: the single description of its topology,
# firewall and router daemon, used by tests/support/home.rs and by people at a shell.
#
#   home (the box)      192.168.1.2/24 on eth0 ─┐
#   wifi (a phone)      192.168.1.3/24 on eth0 ─┤ br-lan 192.168.1.1/24
#                                               router  NAT (nftables masquerade, hairpin),
#                                                       miniupnpd: UPnP-IGD, NAT-PMP, PCP
#   internet (a phone)  $INTERNET_IP on eth0  ──── wan $WAN_CIDR
#
# Veth pairs, one bridge and routes only; no namespace has a way out. The internet phone's
# default route is the router's WAN address: only the router's firewall keeps it out of the
# LAN, as at a real home.
#
# Verbs for people (root, or inside tests/in-netns):
#   home.sh up DIR             make the namespaces (held by `unshare --net` processes whose
#                              ids go to DIR), wire them, start miniupnpd in `router`
#   home.sh exec DIR NS CMD…   run CMD in NS (home, wifi, router, internet)
#   home.sh down DIR           stop everything in the namespaces, which then go away
# Verbs for tests/support/home.rs (namespaces given as paths nsenter --net= accepts, in
# NS_HOME, NS_WIFI, NS_ROUTER, NS_INTERNET):
#   home.sh wire               interfaces, addresses, routes, sysctls, the router's ruleset
#   home.sh miniupnpd-conf DIR print miniupnpd.conf (state files under DIR) to stdout
#   home.sh miniupnpd-flush    empty miniupnpd's chains, as a router reboot would
#   home.sh hairpin DIR        (in `router`) keep the hairpin copy of miniupnpd's rules
# Settings (environment, with defaults): WAN_CIDR=203.0.114.1/24 (the router's WAN address
# and prefix), INTERNET_IP=203.0.114.50 (same subnet), and for miniupnpd.conf
# UPNP_MIN_LIFETIME=120, UPNP_MAX_LIFETIME=86400, UPNP_NOTIFY_INTERVAL=30,
# UPNP_HTTP_PORT=5000, UPNP_LEASE_FILE= (empty: mappings die with the daemon),
# UPNP_NATPMP=yes, UPNP_UPNP=yes, UPNP_SECURE=yes, UPNP_IGD_V1=no,
# UPNP_RULES="allow 1024-65535 192.168.1.0/24 1024-65535;deny 0-65535 0.0.0.0/0 0-65535".
set -eu
PATH=$PATH:/usr/sbin:/sbin

LAN_NET=192.168.1.0/24
ROUTER_LAN=192.168.1.1
BOX_IP=192.168.1.2
WIFI_IP=192.168.1.3
WAN_CIDR=${WAN_CIDR:-203.0.114.1/24}
WAN_IP=${WAN_CIDR%/*}
INTERNET_IP=${INTERNET_IP:-203.0.114.50}
PREFIX=${WAN_CIDR#*/}

in_ns() { ns=$1; shift; nsenter --net="$ns" -- "$@"; }

ruleset() {
    # The table and chain names are miniupnpd's nftables defaults: it adds its rules to
    # `miniupnpd` (forward), `prerouting_miniupnpd` (DNAT) and `postrouting_miniupnpd`
    # (SNAT/peer) in table inet filter, and does not create any of them itself.
    cat <<NFT
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "br-lan" accept
        # From the WAN side, only what a mapping forwards (DNAT), as OpenWrt's firewall does:
        # miniupnpd's accept rules name the box's LAN address and port, and without this the
        # phone outside (whose default route is this router) would reach the box at its LAN
        # address directly, which the internet never carries.
        iifname "wan" ct status ! dnat drop
        # miniupnpd accepts what its mappings let in
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
        # Hairpin: the LAN reaching the WAN address gets the same port mappings as the
        # internet does. miniupnpd's own rules match only packets that came in on wan, so
        # "home.sh hairpin" keeps a copy of them here.
        iifname "br-lan" ip daddr $WAN_IP jump hairpin
    }
    chain hairpin {
    }
    # For "home.sh hairpin" to know that it sees rule changes.
    chain hairpin_canary {
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "wan" masquerade
        # Hairpin: a LAN host reaching another one through the WAN address sees the router
        # as the source, so the reply comes back through the router and is un-NATed.
        ip saddr $LAN_NET oifname "br-lan" ct status dnat masquerade
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
NFT
}

wire() {
    : "${NS_HOME:?} ${NS_WIFI:?} ${NS_ROUTER:?} ${NS_INTERNET:?}"
    for ns in "$NS_HOME" "$NS_WIFI" "$NS_ROUTER" "$NS_INTERNET"; do
        # IPv4 only. With IPv6 on, each link-local address finishes duplicate address
        # detection a second or two after its link comes up, and a browser started in the
        # meantime aborts its page load with ERR_NETWORK_CHANGED.
        in_ns "$ns" sh -c 'for f in all default; do
            echo 1 >/proc/sys/net/ipv6/conf/$f/disable_ipv6; done'
        in_ns "$ns" ip link set lo up
    done
    # The LAN: a bridge in the router (its switch and Wi-Fi access point) with one port each
    # for the box and the phone at home.
    in_ns "$NS_ROUTER" ip link add br-lan type bridge
    in_ns "$NS_ROUTER" ip link add lan-home type veth peer name eth0 netns "$NS_HOME"
    in_ns "$NS_ROUTER" ip link add lan-wifi type veth peer name eth0 netns "$NS_WIFI"
    in_ns "$NS_ROUTER" ip link add wan type veth peer name eth0 netns "$NS_INTERNET"
    for port in lan-home lan-wifi; do
        in_ns "$NS_ROUTER" ip link set "$port" master br-lan up
    done
    in_ns "$NS_ROUTER" ip addr add "$ROUTER_LAN/24" dev br-lan
    in_ns "$NS_ROUTER" ip link set br-lan up
    in_ns "$NS_ROUTER" ip addr add "$WAN_CIDR" dev wan
    in_ns "$NS_ROUTER" ip link set wan up
    in_ns "$NS_ROUTER" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
    # Where the host has br_netfilter loaded, bridged frames would pass the router's IP
    # firewall too; a home router's switch does not do that.
    in_ns "$NS_ROUTER" sh -c 'for f in /proc/sys/net/bridge/bridge-nf-call-*; do
        [ ! -e "$f" ] || echo 0 >"$f"; done'
    ruleset | in_ns "$NS_ROUTER" nft -f -
    for pair in "$NS_HOME $BOX_IP" "$NS_WIFI $WIFI_IP"; do
        set -- $pair
        in_ns "$1" ip addr add "$2/24" dev eth0
        in_ns "$1" ip link set eth0 up
        in_ns "$1" ip route add default via "$ROUTER_LAN"
    done
    in_ns "$NS_INTERNET" ip addr add "$INTERNET_IP/$PREFIX" dev eth0
    in_ns "$NS_INTERNET" ip link set eth0 up
    in_ns "$NS_INTERNET" ip route add default via "$WAN_IP"
}

miniupnpd_conf() {
    dir=$1
    cat <<CONF
# miniupnpd.conf written by tests/netsim/home.sh for the simulated router
ext_ifname=wan
listening_ip=br-lan
http_port=${UPNP_HTTP_PORT:-5000}
enable_natpmp=${UPNP_NATPMP:-yes}
enable_upnp=${UPNP_UPNP:-yes}
ipv6_disable=yes
secure_mode=${UPNP_SECURE:-yes}
force_igd_desc_v1=${UPNP_IGD_V1:-no}
system_uptime=no
notify_interval=${UPNP_NOTIFY_INTERVAL:-30}
min_lifetime=${UPNP_MIN_LIFETIME:-120}
max_lifetime=${UPNP_MAX_LIFETIME:-86400}
uuid=6c7a1f4e-3b1d-4c52-9a51-6865617274aa
friendly_name=Hearth test router
model_name=Hearth test router
serial=00000001
presentation_url=
minissdpdsocket=$dir/minissdpd.sock
CONF
    if [ -n "${UPNP_LEASE_FILE:-}" ]; then echo "lease_file=$UPNP_LEASE_FILE"; fi
    echo "${UPNP_RULES:-allow 1024-65535 $LAN_NET 1024-65535;deny 0-65535 0.0.0.0/0 0-65535}" \
        | tr ';' '\n'
}

flush() {
    : "${NS_ROUTER:?}"
    for chain in miniupnpd prerouting_miniupnpd postrouting_miniupnpd hairpin; do
        in_ns "$NS_ROUTER" nft flush chain inet filter "$chain"
    done
}

# Runs in the router until killed: copies miniupnpd's DNAT rules (which match `iif "wan"`)
# into chain `hairpin` (jumped to for LAN packets to the WAN address) whenever they change.
# Prints "ready" once it is sure to see every change from then on.
hairpin() {
    dir=$1
    rm -f "$dir/hairpin.ready"
    sync_rules() {
        {
            echo "flush chain inet filter hairpin"
            nft list chain inet filter prerouting_miniupnpd |
                sed -n -e 's/@nh,72,8 0x11 /meta l4proto udp /' -e 's/@nh,72,8 0x6 /meta l4proto tcp /' \
                    -e 's/^[[:space:]]*iif "wan" \(.*dnat.*\)$/add rule inet filter hairpin \1/p'
        } | nft -f -
    }
    nft monitor rules | while read -r line; do
        case $line in
        *hairpin_canary*) [ -e "$dir/hairpin.ready" ] || : >"$dir/hairpin.ready" ;;
        *prerouting_miniupnpd*) sync_rules ;;
        esac
    done &
    # The monitor subscribes a moment after it starts: poke until it has seen a change.
    n=0
    while [ ! -e "$dir/hairpin.ready" ]; do
        n=$((n + 1)); [ $n -lt 200 ] || { echo "nft monitor saw nothing" >&2; exit 1; }
        nft add rule inet filter hairpin_canary counter
        sleep 0.02
    done
    nft flush chain inet filter hairpin_canary
    sync_rules # what miniupnpd set up before (from its lease file)
    echo ready
    wait
}

holders() {
    for ns in home wifi router internet; do
        echo "$ns $(cat "$1/$ns.pid")"
    done
}

verb=${1:-}
[ $# -gt 0 ] && shift
case "$verb" in
wire) wire ;;
miniupnpd-conf) miniupnpd_conf "$1" ;;
miniupnpd-flush) flush ;;
hairpin) hairpin "$1" ;;
up)
    dir=$(realpath -m "$1")
    mkdir -p "$dir"
    for ns in home wifi router internet; do
        # The holder leaves with its namespace's last process; `down` ends it.
        unshare --net -- sleep infinity </dev/null >/dev/null 2>&1 &
        echo $! >"$dir/$ns.pid"
    done
    # unshare has made its namespace once /proc/PID/ns/net differs from ours.
    for ns in home wifi router internet; do
        pid=$(cat "$dir/$ns.pid")
        n=0
        while [ "$(readlink /proc/$pid/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do
            n=$((n + 1)); [ $n -lt 100 ] || { echo "no namespace from $pid" >&2; exit 1; }
            sleep 0.05
        done
    done
    NS_HOME=/proc/$(cat "$dir/home.pid")/ns/net NS_WIFI=/proc/$(cat "$dir/wifi.pid")/ns/net \
        NS_ROUTER=/proc/$(cat "$dir/router.pid")/ns/net \
        NS_INTERNET=/proc/$(cat "$dir/internet.pid")/ns/net wire
    miniupnpd_conf "$dir" >"$dir/miniupnpd.conf"
    in_ns "/proc/$(cat "$dir/router.pid")/ns/net" "$0" hairpin "$dir" >/dev/null 2>"$dir/hairpin.log" &
    n=0; while [ ! -e "$dir/hairpin.ready" ]; do n=$((n + 1)); [ $n -lt 100 ] || exit 1; sleep 0.05; done
    in_ns "/proc/$(cat "$dir/router.pid")/ns/net" miniupnpd -d -f "$dir/miniupnpd.conf" \
        -P "$dir/miniupnpd.pid" >"$dir/miniupnpd.log" 2>&1 &
    echo "home is up: box 192.168.1.2 (home), phone 192.168.1.3 (wifi), router $ROUTER_LAN / $WAN_IP, internet $INTERNET_IP"
    echo "miniupnpd log: $dir/miniupnpd.log"
    ;;
exec)
    dir=$1 ns=$2; shift 2
    exec nsenter --net="/proc/$(cat "$dir/$ns.pid")/ns/net" -- "$@"
    ;;
down)
    dir=$1
    holders "$dir" | while read -r ns pid; do
        inode=$(readlink "/proc/$pid/ns/net" 2>/dev/null) || continue
        # Everything still running in the namespace, then its holder.
        for p in /proc/[0-9]*; do
            [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$inode" ] && kill "${p#/proc/}" 2>/dev/null
        done
        true
    done
    rm -f "$dir"/*.pid
    ;;
*)
    sed -n '2,/^set -eu/p' "$0" | sed '$d' >&2
    exit 2
    ;;
esac
