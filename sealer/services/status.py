"""``sealer status``: what is enrolled, and whether this boot state would unlock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyudev

from sealer.errors import SealerError
from sealer.install.bootopts import cmdline_findings
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment, enrollments, interrupted_error
from sealer.luks.header import LuksHeader
from sealer.luks.token import TOKEN_TYPE
from sealer.pcrs import format_pcrs
from sealer.policy import revocation
from sealer.services.escrow import DEFAULT_ESCROW_DIR, escrowed
from sealer.services.matching import approvals_of, find_match, pcrs_to_read, still_holds
from sealer.services.tpmguard import DEFAULT_STATE_DIR, render_hygiene, tpm_hygiene
from sealer.tpm.connection import connect
from sealer.tpm.lockout import LockoutState, read_lockout
from sealer.tpm.nv import read_revoked_bits
from sealer.tpm.pcr import read_pcrs
from sealer.tpm.retirement import counter_value
from sealer.tpm.srk import read_srk


def discover_luks2_devices() -> list[str]:
    """Block devices that udev knows as LUKS2."""
    context = pyudev.Context()
    found = []
    for dev in context.list_devices(subsystem="block"):
        if dev.get("ID_FS_TYPE") == "crypto_LUKS" and dev.get("ID_FS_VERSION") == "2":
            found.append(dev.device_node)
    return sorted(found)


def _tpm_view(enrollment: Enrollment, tcti: str | None) -> dict[str, Any]:
    """The TPM side of one enrollment; failures are reported in the dict, not raised."""
    token = enrollment.token
    view: dict[str, Any] = {}
    try:
        approvals = approvals_of(enrollment)
        bank, wanted = pcrs_to_read(enrollment, approvals)
    except SealerError as exc:
        return {"tpm_error": exc.one_line()}
    bits = counter = None
    try:
        with connect(tcti) as ctx:
            srk = read_srk(ctx, token.srk_handle)
            current = read_pcrs(ctx, bank, wanted)
            if token.revocation is not None:
                bits = read_revoked_bits(ctx, *token.revocation.locator)
            counter = counter_value(ctx, enrollment.counter_index)
    except SealerError as exc:
        return {"tpm_error": exc.one_line()}
    if token.revocation is not None:
        view["revocation"] = {
            "nv_index": f"0x{token.revocation.nv_index:08x}",
            "authority": token.revocation.authority,
            "revoked_below": None if bits is None else revocation.level_of(bits),
        }
    if enrollment.token.retirement is not None:
        view["retirement"] = {
            "nv_index": f"0x{enrollment.token.retirement.nv_index:08x}", "counter": counter,
        }
    view["srk_present"] = srk is not None
    view["srk_matches"] = srk is not None and srk.name == token.srk_name
    view["current_pcrs"] = {str(p): v.hex() for p, v in sorted(current.items())}
    try:
        match = find_match(approvals, current, still_holds(enrollment, bits, counter))
    except SealerError as exc:  # the revocation field is gone: nothing unlocks
        view["tpm_error"] = exc.one_line()
        match = None
    view["unlocks_now"] = match is not None and view["srk_matches"]
    view["approvals"] = [
        {
            "index": i,
            "comment": a.comment,
            "created": a.created,
            "boot_states": len(a.branches),
            "pcrs": list(a.pcrs),
            "matches": a.matching_branch(current) is not None,
            "release": a.release,
            "revoked": bits is not None and a.release is not None
            and revocation.is_revoked(bits, a.release),
            "epoch": a.epoch,
            "retired": counter is not None and a.epoch is not None and a.epoch < counter,
            "differing_pcrs": a.differing_pcrs(current),
        }
        for i, a in enumerate(approvals)
    ]
    return view


# ``status --next-boot``'s answer for one enrollment of a device (services/nextboot.py).
CheckNextBoot = Callable[[str, Enrollment], dict[str, Any]]


def volume_status(
    device: str, tcti: str | None, next_boot: CheckNextBoot | None = None,
    escrow_dir: Path = DEFAULT_ESCROW_DIR, state_dir: Path = DEFAULT_STATE_DIR,
) -> dict[str, Any]:
    """The status of ``device`` as a JSON-ready dict: its enrollments and whether this boot state
    would unlock each, the other tools' bindings, the TPM's state, and the boot options.

    With ``next_boot``, also whether the next boot would unlock. DeviceError when the device is not
    LUKS2; problems with single enrollments or the TPM are reported in the dict, not raised.
    """
    header = cryptsetup.read_header(device)
    report = _describe(header, tcti, next_boot, escrow_dir)
    report["tpm"] = _tpm_state(tcti, state_dir)
    # This boot's command line: which options reach a shell, and what holds there.
    report["boot_options"] = [finding.to_json() for finding in cmdline_findings()]
    return report


def _tpm_state(tcti: str | None, state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any]:
    """The TPM's own state, which every enrollment shares: its dictionary-attack lockout, and
    who can reconfigure it (services/tpmguard.py)."""
    try:
        with connect(tcti) as ctx:
            return {"lockout": read_lockout(ctx).to_json(),
                    "hygiene": tpm_hygiene(ctx, state_dir)}
    except SealerError as exc:
        return {"error": exc.one_line()}


def _render_tpm(tpm: dict[str, Any]) -> str:
    if "lockout" not in tpm:
        return f"  TPM: {tpm['error']}"
    state = LockoutState(**tpm["lockout"])
    head = "  TPM dictionary-attack lockout:"
    if not state.protects:
        return f"{head} off (wrong PINs are not counted)"
    if state.in_lockout:
        return f"{head} LOCKED OUT, every PIN is refused ({state.comes_back()})"
    return (
        f"{head} {state.tries_left} of {state.max_tries} PIN tries left "
        f"(one comes back every {state.interval_s} s)"
    )


def _describe(
    header: LuksHeader, tcti: str | None, next_boot: CheckNextBoot | None = None,
    escrow_dir: Path = DEFAULT_ESCROW_DIR,
) -> dict[str, Any]:
    claimed: dict[int, str] = {}
    for token in header.tokens.values():
        for slot in token.keyslots:
            claimed[slot] = f"token {token.token_id} ({token.type})"
    token_error = None
    try:
        found = enrollments(header, interrupted=True)
    except SealerError as exc:
        found, token_error = [], exc.one_line()
    for enrollment in found:
        claimed.update(_recorded_slots(header, enrollment))
    report: dict[str, Any] = {
        "device": header.device,
        "uuid": header.uuid,
        "keyslots": [
            {"slot": n, "kdf": k.kdf, "used_by": claimed.get(n, "passphrase or recovery key")}
            for n, k in sorted(header.keyslots.items())
        ],
        "other_tokens": [
            {"token": t.token_id, "type": t.type, "keyslots": list(t.keyslots)}
            for _, t in sorted(header.tokens.items())
            if t.type != "sealer-tpm2"
        ],
        "enrollments": [],
    }
    if token_error is not None:
        report["token_error"] = token_error
        return report
    for enrollment in found:
        sealed = enrollment.token
        recovery = sealed.recovery
        entry: dict[str, Any] = {
            "token": enrollment.token_id,
            "complete": sealed.complete,
            "keyslot": sealed.keyslot,
            "recovery": None if recovery is None else {
                "keyslot": recovery.keyslot, "pending": recovery.pending,
                "retired": recovery.retired,
                # A valid escrow record names this keyslot (None: no escrow directory).
                "escrowed": None if recovery.keyslot is None
                else escrowed(escrow_dir, header, recovery.keyslot),
            },
            "pcr_bank": sealed.pcr_bank,
            "pcrs": list(sealed.pcrs),
            "cap_pcr": sealed.cap_pcr,
            "pin": sealed.has_pin,
            "srk_handle": f"0x{sealed.srk_handle:08x}",
            "srk_name": sealed.srk_name.hex(),
            "policy_keys": [{"role": k.role, "name": k.name.hex()} for k in sealed.policy_keys],
            "created": sealed.created,
            # False: enrolled by a sealer whose approvals were not bound to their enrollment
            # (an approval of another volume of the machine would unlock it): enroll again.
            "approvals_bound": not enrollment.legacy,
        }
        if sealed.complete:
            entry.update(_tpm_view(enrollment, tcti))
            if next_boot is not None:
                entry["next_boot"] = next_boot(header.device, enrollment)
        else:
            entry["interrupted"] = interrupted_error(header, enrollment.token_id).one_line()
        report["enrollments"].append(entry)
    return report


def _recorded_slots(header: LuksHeader, enrollment: Enrollment) -> dict[int, str]:
    """What the keyslots an enrollment records but does not claim are (they exist only)."""
    token, token_id = enrollment.token, enrollment.token_id
    named: dict[int, str] = {}
    if not token.complete:
        named[token.keyslot] = (
            f"TPM keyslot of token {token_id}, an interrupted enrollment (never used; the "
            "next 'sealer enroll' removes it)"
        )
    recovery = token.recovery
    if recovery is not None:
        if recovery.keyslot is not None:
            named[recovery.keyslot] = f"recovery key (token {token_id})"
        if recovery.pending is not None:
            if token.complete:
                named[recovery.pending] = (
                    f"new recovery key of token {token_id}, not confirmed (an interrupted "
                    "rotation: the next 'sealer recovery rotate' removes it; the old key is "
                    "still the one to keep)"
                )
            else:
                named[recovery.pending] = (
                    f"recovery key of token {token_id}, an interrupted enrollment (never "
                    "shown; the next 'sealer enroll' removes it)"
                )
        if recovery.retired is not None:
            named[recovery.retired] = (
                f"old recovery key of token {token_id}, replaced (an interrupted rotation; "
                "removed by the next 'sealer recovery rotate')"
            )
    return {slot: what for slot, what in named.items() if slot in header.keyslots}


def render(report: dict[str, Any]) -> str:
    """The report for a person."""
    lines = [f"{report['device']} (LUKS2, UUID {report['uuid']})"]
    for slot in report["keyslots"]:
        lines.append(f"  keyslot {slot['slot']}: {slot['kdf']}, {slot['used_by']}")
    for other in report["other_tokens"]:
        lines.append(f"  token {other['token']}: {other['type']} (not sealer's)")
    if "token_error" in report:
        lines.append(f"  sealer token unusable: {report['token_error']}")
    if not report["enrollments"] and "token_error" not in report:
        lines.append("  no sealer TPM enrollment")
    for e in report["enrollments"]:
        pin = ", PIN" if e["pin"] else ""
        lines.append(
            f"  token {e['token']}: sealer-tpm2, keyslot {e['keyslot']}, "
            f"{e['pcr_bank']} PCRs {format_pcrs(e['pcrs'])} + cap PCR {e['cap_pcr']}{pin}"
        )
        if "interrupted" in e:
            lines.append(f"    {e['interrupted']}")
            continue
        if e["recovery"] is not None and e["recovery"]["keyslot"] is not None:
            escrow = {True: " (escrowed)", False: " (not escrowed)"}.get(
                e["recovery"].get("escrowed"), ""
            )
            lines.append(f"    recovery key: keyslot {e['recovery']['keyslot']}{escrow}")
        lines.append(f"    SRK {e['srk_handle']} name {e['srk_name'][:16]}...")
        if not e["approvals_bound"]:
            lines.append(
                "    WARNING: enrolled by an older sealer: its approvals are not bound to it "
                "and retired ones can be put back; run 'sealer enroll' again, then "
                "'sealer remove --token N' for this one"
            )
        if "tpm_error" in e:
            lines.append(f"    TPM: {e['tpm_error']}")
            lines += _next_boot_lines(e)
            continue
        if not e["srk_present"]:
            lines.append("    TPM: no SRK at that handle (TPM cleared, or another TPM)")
        elif not e["srk_matches"]:
            lines.append("    TPM: the SRK differs: this volume was enrolled with another TPM")
        for a in e["approvals"]:
            state = (
                "matches this boot"
                if a["matches"]
                else f"PCR {format_pcrs(a['differing_pcrs'])} differ(s)"
            )
            if a.get("revoked"):
                state = f"revoked (release {a['release']})"
            elif a.get("retired"):
                state = f"retired (epoch {a['epoch']}, replaced by a newer approval)"
            lines.append(
                f"    approval {a['index']} ({a['comment']}, {a['created']}, "
                f"{a['boot_states']} boot state(s)): {state}"
            )
        if "revocation" in e:
            r = e["revocation"]
            lines.append(
                f"    revocation: TPM NV 0x{r['nv_index'][2:]}, authority {r['authority']}, "
                f"releases below {r['revoked_below']} revoked"
            )
        verdict = "yes" if e["unlocks_now"] else "no"
        lines.append(f"    TPM would release the key in this boot state: {verdict}")
        lines += _next_boot_lines(e)
    if report["enrollments"]:
        for option in report.get("boot_options", []):
            lines.append(f"  boot option {option['option']}: {option['text']}")
    tpm = report.get("tpm", {})
    if "lockout" in tpm or (tpm and not report["enrollments"]):  # else each enrollment says
        lines.append(_render_tpm(tpm))
    if "hygiene" in tpm:
        lines += render_hygiene(tpm["hygiene"], tpm.get("lockout"))
    return "\n".join(lines)


def _next_boot_lines(entry: dict[str, Any]) -> list[str]:
    if "next_boot" not in entry:
        return []
    # Imported only here: a plain 'sealer status' does not load the predictor.
    from sealer.services.nextboot import render_next_boot

    return [f"    {render_next_boot(entry['next_boot'])}"]


def enrolled_devices() -> list[str]:
    """The LUKS2 block devices udev knows that hold at least one sealer enrollment."""
    found = []
    for device in discover_luks2_devices():
        try:
            header = cryptsetup.read_header(device)
        except SealerError:
            continue  # unreadable now: the commands that need it will say so when named
        if header.tokens_of_type(TOKEN_TYPE):
            found.append(device)
    return found
