#!/usr/bin/env bash
# `make deb`: builds dist/sealer_<version>_amd64.deb from this tree and runs lintian on it.
# The build runs in a copy (build/deb/src): dpkg-buildpackage writes its products next to the
# tree it builds, and the checkout stays clean. Needs root (apt-get) and network (apt, PyPI:
# the vendored Python dependencies are pinned in debian/vendor/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
echo "deb: installing the build dependencies (debian/control) and lintian" >&2
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends dpkg-dev lintian >/dev/null
apt-get build-dep -y -q ./ >/dev/null

work=build/deb
rm -rf "$work"
mkdir -p "$work/src" dist
# The tracked and new (not ignored) files, as they are in the work tree.
git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$work/src"

start=$(date +%s)
(cd "$work/src" && dpkg-buildpackage -b -us -uc) >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    echo "deb: dpkg-buildpackage failed; the whole log is in $work/build.log" >&2
    exit 1
}
echo "deb: built in $(( $(date +%s) - start )) s (log: $work/build.log)" >&2
rm -f dist/sealer_*.deb
cp "$work"/sealer_*_amd64.deb dist/
ls -l dist/sealer_*_amd64.deb >&2

# Errors fail the build; each remaining warning is explained in debian/sealer.lintian-overrides.
lintian --fail-on error --display-info "$work"/sealer_*_amd64.changes
