#!/bin/bash
# Builds sealer's private Python environment for the Debian package, run by debian/rules:
#   debian/build-venv.sh STAGED_DIR WORK_DIR
# STAGED_DIR is /usr/lib/sealer inside the package tree (debian/sealer/usr/lib/sealer). It is
# a virtualenv of Debian's own /usr/bin/python3.11 (never the build machine's default python3,
# which may be a pyenv one), so the package runs on a stock Debian 12. Its site-packages holds
# sealer and the dependencies pinned (with hashes) in debian/vendor/requirements.txt; nothing
# is fetched when the package is installed.
set -euo pipefail

dest=$1
work=$2
src=$PWD
python=/usr/bin/python3.11
final=/usr/lib/sealer
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
site="lib/python3.11/site-packages"

rm -rf "$dest" "$work"
mkdir -p "$(dirname "$dest")" "$work"
# With pip (Debian's ensurepip wheel), used below and removed again: the package needs none.
"$python" -m venv "$dest"

# tpm2-pytss links the TSS Feature API when pkg-config finds it, and with it libcurl, GnuTLS,
# Kerberos and LDAP: about 10 MB in the initramfs that sealer never calls (scripts/setup.sh
# does the same for the dev virtualenv). A pkg-config folder without tss2-fapi avoids it.
pcdir=$work/pkgconfig-without-fapi
mkdir -p "$pcdir"
for pc in /usr/lib/"$multiarch"/pkgconfig/tss2-*.pc /usr/lib/"$multiarch"/pkgconfig/libcrypto.pc \
          /usr/lib/"$multiarch"/pkgconfig/libffi.pc; do
    case "$pc" in *tss2-fapi*) ;; *) ln -s "$pc" "$pcdir/" ;; esac
done

# A cache of our own (never the user's): a tpm2-pytss wheel built elsewhere may link the FAPI.
cache=${SEALER_DEB_PIP_CACHE:-/var/cache/sealer-deb/pip}
mkdir -p "$cache" 2>/dev/null || cache=$work/pip-cache
export PIP_CACHE_DIR=$cache PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_COMPILE=1 PIP_NO_INPUT=1
# Constraints also reach the isolated environments pip builds source packages in.
export PIP_CONSTRAINT="$src/debian/vendor/build-constraints.txt"
export PKG_CONFIG_PATH="" PKG_CONFIG_LIBDIR="$pcdir:/usr/share/pkgconfig"
pip=("$dest/bin/python3" -I -m pip)

# cryptography comes as its manylinux wheel (building it needs Rust); tpm2-pytss and cffi are
# built here against Debian's libtss2 and libffi, so dh_shlibdeps names those packages.
# Downloaded first (hash-checked), then the sources are built where they were unpacked: pip
# would build them in randomly named temporary directories, whose names end up in the
# extension modules (file names, build IDs) and make two builds differ.
"${pip[@]}" download --require-hashes --no-deps --no-binary tpm2-pytss,cffi \
    --only-binary cryptography -r "$src/debian/vendor/requirements.txt" -d "$work/downloads"
mkdir -p "$work/sources"
for sdist in "$work"/downloads/*.tar.gz; do
    tar -xzf "$sdist" -C "$work/sources"
done
export CFLAGS="${CFLAGS:-} -ffile-prefix-map=$work/sources=/build -g0"
"${pip[@]}" install --no-index --no-deps "$work"/downloads/*.whl
"${pip[@]}" install --no-deps "$work"/sources/*/
# sealer itself, from a copy of the package sources (pip builds in the tree it is given).
mkdir -p "$work/sealer-src"
cp "$src/pyproject.toml" "$work/sealer-src/"
cp -r "$src/sealer" "$work/sealer-src/"
"${pip[@]}" install --no-deps "$work/sealer-src"
"${pip[@]}" check
"${pip[@]}" uninstall -q -y pip setuptools

tpm2_so=$(ls "$dest/$site"/tpm2_pytss/_libtpm2_pytss*.so)
if ldd "$tpm2_so" | grep -q libtss2-fapi; then
    echo "build-venv: $tpm2_so links the TSS Feature API" >&2
    exit 1
fi

# What the package does not ship: pip's scripts and activate scripts (they name the build
# directory), bytecode (postinst compiles it), tests, and pip's record of the source path.
find "$dest/bin" -mindepth 1 ! -name 'python*' -delete
find "$dest" -depth -type d \( -name __pycache__ -o -name tests -o -name test \) \
    -exec rm -rf {} +
rm -f "$dest"/$site/sealer-*.dist-info/direct_url.json
# venv's empty include/ (for C headers of packages built later) and its lib64 -> lib link.
rmdir "$dest/include/python3.11" "$dest/include"
rm "$dest/lib64"
# pyvenv.cfg records the command that made it, with the build directory in it.
sed -i "s|^command = .*|command = $python -m venv $final|" "$dest/pyvenv.cfg"
if grep -rIlF --exclude=RECORD -- "$dest" "$dest" >&2; then
    echo "build-venv: the files above name the build directory $dest" >&2
    exit 1
fi
