#!/usr/bin/env bash
# Installs everything sealer, its demo and its tests need: Debian packages, then a virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    swtpm swtpm-tools      # the software TPM 2.0 used by the demo and the tests
    tpm2-tools             # the demo changes a PCR with tpm2_pcrextend, as a user would
    libtss2-dev pkg-config # tpm2-pytss builds against the system's tpm2-tss
    cryptsetup-bin         # LUKS2 headers, keyslots and tokens
    gcc
)
python=${PYTHON:-python3}
if ! "$python" -c 'import sysconfig, os, venv; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null; then
    packages+=(python3-dev python3-venv)
fi

echo "setup: installing Debian packages: ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null

# The end-to-end tests boot a real Secure Boot chain in QEMU. Without these packages those
# tests skip with a reason instead of failing, so an install failure here is only a warning.
if [ "${1:-}" = "--boot-chain" ]; then
    boot_packages=(
        qemu-system-x86 ovmf           # the machine and its UEFI firmware with Secure Boot
        linux-image-cloud-amd64        # a real Debian kernel for the guest
        initramfs-tools cryptsetup-initramfs busybox-static  # Debian's initramfs, static root
        dracut-core                    # the systemd-based initramfs built by dracut
        systemd-boot-efi sbsigntool binutils mtools dosfstools e2fsprogs openssl
        grub-common grub2-common       # the real grub-mkconfig for the shim + GRUB chain
        mmdebstrap                     # a real Debian 12 root: the package and life-cycle tiers
        clevis clevis-luks clevis-tpm2 systemd  # peers whose LUKS2 tokens sealer reads
    )
    echo "setup: installing the boot-chain packages for the end-to-end tests" >&2
    if ! apt-get install -y -q --no-install-recommends "${boot_packages[@]}" >/dev/null; then
        echo "setup: WARNING: boot-chain packages missing; the end-to-end tests will skip" >&2
    fi
fi

# tpm2-pytss links the TSS Feature API when it finds it, and with it libcurl, GnuTLS, Kerberos
# and LDAP: about 10 MB of libraries in the initramfs that sealer never calls. Built against
# a pkg-config folder without tss2-fapi, it links only ESAPI, MU, RC and the TCTI loader.
install_tpm2_pytss_without_fapi() {
    local pcdir=.venv/pkgconfig-without-fapi multiarch built
    built=$(ls .venv/lib/python3*/site-packages/tpm2_pytss/_libtpm2_pytss*.so 2>/dev/null || true)
    if [ -n "$built" ] && ! ldd "$built" | grep -q libtss2-fapi; then
        return 0
    fi
    [ -z "$built" ] || .venv/bin/pip uninstall -y -q tpm2-pytss >/dev/null
    multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
    rm -rf "$pcdir" && mkdir -p "$pcdir"
    for pc in /usr/lib/"$multiarch"/pkgconfig/tss2-*.pc /usr/lib/"$multiarch"/pkgconfig/libcrypto.pc; do
        case "$pc" in *tss2-fapi*) ;; *) ln -s "$pc" "$pcdir/" ;; esac
    done
    # --no-cache-dir: a wheel cached from an earlier build would bring the Feature API back.
    PKG_CONFIG_PATH="" PKG_CONFIG_LIBDIR="$PWD/$pcdir:/usr/share/pkgconfig" \
        .venv/bin/pip install --disable-pip-version-check --no-cache-dir \
        --no-binary tpm2-pytss 'tpm2-pytss>=2.1' >.venv/pip.log 2>&1 || {
        tail -n 40 .venv/pip.log >&2
        echo "setup: building tpm2-pytss failed; the whole log is in .venv/pip.log" >&2
        exit 1
    }
}

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: creating the virtualenv .venv (tpm2-pytss compiles; about a minute)" >&2
    "$python" -m venv .venv
    install_tpm2_pytss_without_fapi
    if ! .venv/bin/pip install --disable-pip-version-check -e '.[dev]' >>.venv/pip.log 2>&1; then
        tail -n 40 .venv/pip.log >&2
        echo "setup: pip install failed; the whole log is in .venv/pip.log" >&2
        exit 1
    fi
    touch "$stamp"
fi
# The test helpers are plain modules in folders, not an installed package (swtpm-fixtures/ has
# a hyphen and they must never ship in sealer's wheel). pytest finds them through `pythonpath`
# in pyproject.toml; the scripts run without pytest (bench/, fuzz/make_corpus.py,
# scripts/demo.py, swtpm-fixtures/capture_eventlog.py) find the same folders through this .pth
# file, which the virtualenv's Python reads at start: no sys.path edits in any script. Written
# at every run, so a virtualenv made before it, or moved with the checkout, gets it too.
site_packages=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
printf '%s\n' "$PWD/swtpm-fixtures" "$PWD/tests/e2e" >"$site_packages/sealer-dev-helpers.pth"
echo "setup: ready (.venv/bin/sealer)" >&2
