"""What one enrollment's approvals are for, fixed in its sealed object's policy.

The LUKS2 header is writable by anyone who holds the disk, so nothing read from it may decide
what the TPM releases. Three things the header used to decide are fixed in the sealed
object's authPolicy when it is created, where the TPM checks them at every unseal:

- **Which enrollment an approval is for.** PolicyAuthorize binds a *policyRef*: the digest an
  approval's signature covers is H(approved policy || policyRef). The machine's approvals
  use a policyRef unique to the enrollment (a random enrollment id, with the bank, the PCR
  selection and the capping PCR), so an approval signed for another volume of the machine,
  or for an earlier enrollment of this one, or for another PCR selection, satisfies nothing
  here, even though one machine key signs them all.
- **What a vendor approves.** A vendor signs once for a whole fleet, so its policyRef cannot
  name the enrollment; it names the bank, the PCR selection and the capping PCR, so an
  approval of PCR 7 alone cannot stand in for one of PCRs 4 and 7.
- **The cap.** After PolicyAuthorize, the object's policy requires the capping PCR at its
  reset value (PolicyPCR). No approval can lift that, not even one signed by root with the
  machine key: once the boot capped the PCR, the TPM refuses until the next reboot.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from sealer.errors import UsageError
from sealer.pcrs import Bank, format_pcrs
from sealer.policy import digest

# PCRs 16 and 23 can be reset by any process (locality 0), PCRs 17 to 22 by a dynamic launch
# (DRTM): capping one of them would be undone by whoever wants the key again.
CAP_PCRS = range(0, 16)
_MACHINE_REF = b"sealer machine approval v2\x00"
_VENDOR_REF = b"sealer vendor approval v2\x00"
# A vendor signs for every enrollment of its fleet: its policyRef names no enrollment, and
# this stands in for the id when a vendor computes it.
VENDOR_BINDING = b"\x00" * 16


def check_cap_pcr(cap_pcr: int) -> int:
    """``cap_pcr`` if it can serve as the capping PCR; UsageError (exit 2) otherwise."""
    if cap_pcr not in CAP_PCRS:
        raise UsageError(
            f"PCR {cap_pcr} cannot be the capping PCR: PCRs 16-23 can be reset without a "
            "reboot (16 and 23 by any program), which would undo the cap",
            "use a PCR from 0 to 15 (the default, 15, is the one reserved for this)",
        )
    return cap_pcr


@dataclass(frozen=True)
class Binding:
    """The enrollment-specific part of the sealed object's policy."""

    bank: Bank
    pcrs: tuple[int, ...]  # the PCRs the user chose, without the capping PCR
    cap_pcr: int
    # Random, per sealed object; None for enrollments made before approvals were bound
    # (their policyRef is empty and their object does not check the cap itself).
    enrollment_id: bytes | None

    @property
    def legacy(self) -> bool:
        return self.enrollment_id is None

    @property
    def selection(self) -> tuple[int, ...]:
        """Every approval's PCR selection: the bound PCRs and the capping PCR."""
        return tuple(sorted({*self.pcrs, self.cap_pcr}))

    def _what(self) -> bytes:
        selection = digest.pcr_selection(self.bank, self.selection)
        return struct.pack(">H", self.bank.alg_id) + selection + bytes([self.cap_pcr])

    def policy_ref(self, role: str) -> bytes:
        """The policyRef the approvals of a key in ``role`` ("machine"/"vendor") are signed for."""
        if self.enrollment_id is None:
            return b""
        if role == "vendor":
            return hashlib.sha256(_VENDOR_REF + self._what()).digest()
        return hashlib.sha256(_MACHINE_REF + self.enrollment_id + self._what()).digest()

    def cap_values(self) -> dict[int, bytes]:
        """What the object itself requires after PolicyAuthorize: the cap PCR at reset."""
        return {self.cap_pcr: self.bank.initial_value(self.cap_pcr)}

    def authorized_digests(self, keys: Sequence[tuple[str, bytes]]) -> list[bytes]:
        """PolicyAuthorize's digest for each trusted (role, TPM name), in token order."""
        return [
            digest.policy_authorize(digest.ZERO, name, self.policy_ref(role))
            for role, name in keys
        ]

    def object_policy(self, keys: Sequence[tuple[str, bytes]], with_pin: bool) -> bytes:
        """The sealed object's authPolicy."""
        authorized = self.authorized_digests(keys)
        policy = authorized[0] if len(authorized) == 1 else digest.policy_or(authorized)
        if self.enrollment_id is not None:
            policy = digest.policy_pcr(policy, self.bank, self.cap_values())
        return digest.policy_auth_value(policy) if with_pin else policy

    def check_approval_fits(self, pcrs: Sequence[int], bank: Bank, values: Sequence[bytes]) -> str:
        """Why an approval of ``pcrs`` in ``bank`` cannot serve this binding ("" if it can).

        ``values`` are the cap PCR's value in each of the approval's boot states.
        """
        if bank != self.bank or tuple(sorted(pcrs)) != self.selection:
            return (
                f"it approves {bank.name} PCR {format_pcrs(sorted(pcrs))}, the enrollment binds "
                f"{self.bank.name} PCR {format_pcrs(self.selection)}"
            )
        reset = self.bank.initial_value(self.cap_pcr)
        if any(value != reset for value in values):
            return f"it does not require the capping PCR {self.cap_pcr} at its reset value"
        return ""
