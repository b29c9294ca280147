"""Kernel command-line options that decide who gets a shell around the TPM unlock.

``sealer boot enable`` and ``sealer status`` print these findings. What holds since issue 15:
every shell the initramfs offers (initramfs-tools' panic shell and ``break=``, dracut's
emergency and rescue shells, ``systemd.debug_shell``) first caps the PCRs, or the machine
powers off. What sealer cannot stop is a command line that skips the initramfs' own init
(``rdinit=``) and runs the unlocker itself: only a command line that is part of the measured
and bound boot state stops that (a signed UKI: its .cmdline is in PCR 4 and 11; GRUB measures
it into PCR 8, systemd-boot into PCR 12).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_CMDLINE = Path("/proc/cmdline")

# One line per option; "risk": the TPM could release a key to whoever controls that program;
# "capped": a shell is offered, after the cap; "note": worth knowing, harmless.
_SHELL_AFTER_CAP = "the TPM releases nothing more in this boot"
_DEBUG_SHELLS = ("systemd.debug_shell", "rd.systemd.debug_shell")
_SHELL_UNITS = ("emergency.target", "rescue.target", "emergency", "rescue")
_RUNLEVEL_SHELLS = ("single", "emergency", "rescue", "-b", "s", "S", "1")


@dataclass(frozen=True)
class BootOptionFinding:
    """What one kernel command-line option (or a missing one) means for a TPM unlock."""

    option: str  # as on the command line (or "panic=" when its absence is the finding)
    level: str  # "risk", "capped" or "note"
    text: str

    def to_json(self) -> dict[str, str]:
        return {"option": self.option, "level": self.level, "text": self.text}

    def line(self) -> str:
        return f"{self.option}: {self.text}"


def read_cmdline(path: Path = PROC_CMDLINE) -> str | None:
    """This boot's kernel command line, or None where there is none to read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def boot_option_findings(cmdline: str) -> list[BootOptionFinding]:
    """What ``cmdline``'s options mean for the TPM unlock, in the order they appear."""
    found: list[BootOptionFinding] = []
    words = cmdline.split()
    # After "--" the kernel passes everything to init: no kernel or initramfs option there,
    # but a runlevel word still reaches systemd (single, emergency, ...).
    end = words.index("--") if "--" in words else len(words)
    for position, word in enumerate(words):
        if position >= end and word not in _RUNLEVEL_SHELLS:
            continue
        key, eq, value = word.partition("=")
        if key == "rdinit":
            found.append(BootOptionFinding(word, "risk", (
                "the kernel runs this program instead of the initramfs' init: no sealer cap "
                "runs before it, so it could ask the TPM for the key while the bound PCRs "
                "match; bind the command line (a signed UKI, or PCR 8 with GRUB, PCR 12 with "
                "systemd-boot) so that such a boot does not unlock"
            )))
        elif key == "init" and eq:
            found.append(BootOptionFinding(word, "note", (
                "runs on the real root after the initramfs has capped the PCRs: "
                f"{_SHELL_AFTER_CAP}"
            )))
        elif key in ("break", "rd.break", "rdbreak"):
            found.append(BootOptionFinding(word, "capped", (
                f"the initramfs stops at a shell; sealer caps the PCRs first: {_SHELL_AFTER_CAP}"
            )))
        elif key in _DEBUG_SHELLS and value not in ("0", "no", "false"):
            found.append(BootOptionFinding(word, "capped", (
                "a root shell on a virtual console (tty9) from early in the boot; sealer caps "
                "the PCRs before it starts (or powers off), so this boot's volumes ask for "
                "their passphrase"
            )))
        elif (key in ("systemd.unit", "rd.systemd.unit") and value in _SHELL_UNITS) or (
            not eq and word in _RUNLEVEL_SHELLS
        ):
            found.append(BootOptionFinding(word, "capped", (
                f"boots into a rescue or emergency shell; sealer caps the PCRs first: "
                f"{_SHELL_AFTER_CAP}"
            )))
        elif key in ("rd.shell", "rdshell") and value not in ("0", "no", "false"):
            found.append(BootOptionFinding(word, "capped", (
                "dracut offers its emergency shell when the boot fails; sealer caps the PCRs "
                f"first: {_SHELL_AFTER_CAP}"
            )))
    if not any(w.startswith("panic=") for w in words[:end]):
        found.append(BootOptionFinding("panic=", "capped", (
            "not set: initramfs-tools offers a shell when the root does not mount (and "
            "dracut its emergency shell, unless rd.shell=0); sealer caps the PCRs first: "
            f"{_SHELL_AFTER_CAP}. panic=N reboots instead"
        )))
    return found


def cmdline_findings(root: Path | None = None) -> list[BootOptionFinding]:
    """The findings for this boot's command line, or, for an image tree ``root``, for the
    command line its kernel-install/UKI tools use (etc/kernel/cmdline); none if unreadable."""
    cmdline = read_cmdline() if root is None else read_cmdline(root / "etc/kernel/cmdline")
    return boot_option_findings(cmdline) if cmdline is not None else []
