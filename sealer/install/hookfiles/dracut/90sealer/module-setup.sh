#!/bin/bash
# dracut module: sealer's boot-time unlocker in a systemd initramfs.
#
# systemd-cryptsetup runs no keyscripts: it asks for a volume's passphrase through systemd's
# password agents. This module adds one more agent (python -m sealer.boot.agent, started by
# sealer-ask-password.path when a request appears) that answers with the key the TPM
# releases, once per volume; otherwise the console agent asks the person, as without sealer.
# sealer-cap.service caps the PCRs before the switch to the real root, and a drop-in makes
# every unit that starts a shell cap first; a failed cap powers the machine off.
#
# Add it with  add_dracutmodules+=" sealer "  in a dracut.conf.d file (or dracut --add sealer).
# /etc/sealer/initramfs.conf names the interpreter sealer is installed for (SEALER_PYTHON);
# SEALER_INITRAMFS_CONF may name another file, as for the initramfs-tools hook.

# called by dracut
check() {
    # Never by itself: only a machine whose volumes are enrolled wants it, and it says so.
    return 255
}

# called by dracut
depends() {
    # systemd: the agent is a systemd service; crypt: systemd-cryptsetup and the console
    # agent. No tpm2-tss: the bundle brings the TSS libraries its Python bindings link to.
    echo systemd crypt
    return 0
}

# called by dracut
installkernel() {
    # The TPM drivers, for kernels that build them as modules (Debian's have them built in,
    # and instmods skips what is not a module).
    hostonly='' instmods tpm_tis tpm_crb
}

# called by dracut
install() {
    local conf="${SEALER_INITRAMFS_CONF:-/etc/sealer/initramfs.conf}"
    local SEALER_PYTHON=""
    # shellcheck disable=SC1090
    [[ -r $conf ]] && . "$conf"
    if [[ -z $SEALER_PYTHON ]] || [[ ! -x $SEALER_PYTHON ]]; then
        derror "sealer: $conf does not name a Python interpreter (SEALER_PYTHON=...);" \
            "run 'sealer boot enable' again"
        return 1
    fi

    local manifest kind source dest name path
    local -A placed=()
    manifest="$(mktemp)"
    if ! "$SEALER_PYTHON" -m sealer.install.bundle --destdir "$initdir" > "$manifest"; then
        rm -f "$manifest"
        derror "sealer: the boot unlocker could not be bundled (see above)"
        return 1
    fi
    while read -r kind source dest; do
        case "$dest" in
            # initramfs-tools' interface; systemd-cryptsetup runs no keyscripts.
            /usr/lib/sealer/keyscript) continue ;;
            # The capping program is a shell script: no libraries to resolve.
            /usr/lib/sealer/cap)
                inst_script "$source" "$dest" || { rm -f "$manifest"; return 1; }
                continue
                ;;
        esac
        case "$kind" in
            exec)
                inst_library "$source" "$dest" || { rm -f "$manifest"; return 1; }
                # dracut brings the libraries a file links to only for files with an
                # execute bit (its last pass: find -perm /0111, then ldd; dracut-install -l
                # checks the source's mode too). The extension modules of a Debian package
                # are 0644 (dh_fixperms): without this, libffi and libtss2-* were left out
                # and the agent and the cap failed to import at boot.
                chmod 0755 "$initdir$dest"
                placed[${dest##*/}]="$dest"
                ;;
            file)
                inst_simple "$source" "$dest" || { rm -f "$manifest"; return 1; }
                # Last, dracut resolves the libraries of every executable in the image
                # with ldd, which follows the interpreter's RUNPATH (a self-built Python's
                # own lib directory): it would add a second, unstripped libpython there.
                # A link to the copy placed above is found first and leaves one.
                while read -r name _ path _; do
                    [[ $path == /* ]] && [[ ${placed[$name]} ]] || continue
                    [[ $path == "${placed[$name]}" ]] && continue
                    [[ -e $initdir$path ]] && continue
                    mkdir -p "$initdir${path%/*}"
                    ln -sr "$initdir${placed[$name]}" "$initdir$path"
                done < <(ldd "$source" 2> /dev/null)
                ;;
            *) continue ;;
        esac
        # dracut's own stripping removes debug sections only; the unneeded symbols of a
        # self-built libpython and of the extension modules are dead weight at boot too.
        if command -v strip > /dev/null; then
            strip --strip-unneeded "$initdir$dest" 2> /dev/null || true
        fi
    done < "$manifest"
    rm -f "$manifest"

    # sealer.luks reads the LUKS2 header with cryptsetup; the crypt module installs only
    # systemd-cryptsetup when systemd is in the initramfs.
    inst_multiple cryptsetup

    inst_simple "$moddir/sealer-ask-password.path" "$systemdsystemunitdir/sealer-ask-password.path"
    inst_simple "$moddir/sealer-ask-password.service" \
        "$systemdsystemunitdir/sealer-ask-password.service"
    inst_simple "$moddir/sealer-cap.service" "$systemdsystemunitdir/sealer-cap.service"
    # Every unit of a systemd initramfs that starts a shell caps first (or powers off): the
    # emergency shell that a failed root mount or rd.break reaches (rd.shell is on by
    # default), systemd.unit=rescue.target or emergency.target, systemd.debug_shell.
    local unit
    for unit in emergency.service rescue.service dracut-emergency.service debug-shell.service; do
        inst_simple "$moddir/sealer-cap-before-shell.conf" \
            "$systemdsystemunitdir/$unit.d/sealer-cap-before-shell.conf"
    done
    $SYSTEMCTL -q --root "$initdir" add-wants sysinit.target sealer-ask-password.path
    $SYSTEMCTL -q --root "$initdir" add-wants initrd.target sealer-cap.service
}
