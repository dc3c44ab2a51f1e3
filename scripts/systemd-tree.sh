#!/bin/sh
# Print the path of a cached minimal Debian tree that boots a real systemd under
# systemd-nspawn, building it first when the cache has none for this recipe.
# The cache key is a hash of this script, so changing the recipe (suite, packages)
# can never reuse a stale tree. Needs root, debootstrap and systemd-container.
set -eu
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,procps,python3,python3-configobj,python3-daemon,python3-sdnotify
CACHE=${RUNNER_TREE_CACHE:-/var/cache/runner-ci}
key=$(sha256sum "$0" | cut -c1-16)
tree="$CACHE/$SUITE-$key"
if [ ! -f "$tree/.complete" ]; then
    mirror=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    rm -rf "$tree" "$tree.tmp"
    mkdir -p "$CACHE"
    echo "systemd-tree: debootstrap $SUITE into $tree (about 75 s, once)" >&2
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tree.tmp" "$mirror" >&2
    # Old trees of earlier recipes are dead weight.
    find "$CACHE" -maxdepth 1 -name "$SUITE-*" ! -name "$SUITE-$key*" -exec rm -rf {} + 2>/dev/null || true
    mv "$tree.tmp" "$tree"
    touch "$tree/.complete"
fi
echo "$tree"
