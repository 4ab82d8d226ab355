#!/usr/bin/env bash
# An arm64 sysroot of Debian bookworm's -dev packages that Hearth links against, extracted
# (not installed: multiarch arm64 -dev packages would replace the host's amd64 ones).
# Usage: image/cross-sysroot.sh DIR   (idempotent; ~25 s the first time)
set -euo pipefail
dir=${1:?usage: $0 SYSROOT_DIR}
# The cross compiler is checked even when the sysroot is already there: `make cross` needs both.
need=""
for p in mmdebstrap gcc-aarch64-linux-gnu; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || need="$need $p"
done
if [ -n "$need" ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $need
fi
if [ -f "$dir/.complete" ]; then exit 0; fi
rm -rf "$dir"
mkdir -p "$dir"
# --variant=extract unpacks just these packages and their dependencies, runs nothing.
mmdebstrap --quiet --arch=arm64 --variant=extract \
    --include=libc6-dev,libgstreamer1.0-dev,libgstreamer-plugins-base1.0-dev,libglib2.0-dev \
    bookworm "$dir"
# Absolute symlinks inside the sysroot would point at the host's files: make them relative.
find "$dir" -type l -lname '/*' | while read -r link; do
    target=$(readlink "$link")
    ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$dir$target")" "$link"
done
touch "$dir/.complete"
