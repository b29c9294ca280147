"""The main job on a built-in default: a software TPM and a LUKS2 image file.

Creates demo-work/volume.img (LUKS2, a passphrase with cryptsetup's default Argon2id KDF),
starts swtpm, enrolls the volume with a recovery key, shows its status, proves that the TPM
releases the key, then changes PCR 7 as an evil maid would and shows the refusal. Exits
non-zero if anything does not behave as described.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from luks_image import make_luks_image, opens_with
from swtpm import Swtpm

ROOT = Path(__file__).resolve().parent.parent

WORK = ROOT / "demo-work"
# A demo passphrase, handed to cryptsetup and sealer on standard input, never in argv.
PASSPHRASE = b"demo passphrase: change me"
SEALER = [str(Path(sys.executable).parent / "sealer")]


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def sealer(tcti: str, *args: str, stdin: bytes = b"", expect: int = 0) -> str:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"$ SEALER_TCTI={tcti} sealer {shown}", flush=True)
    proc = subprocess.run(
        [*SEALER, "--tcti", tcti, *args],
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # keep progress lines and results in the order they came
        check=False,
    )
    sys.stdout.write(proc.stdout.decode())
    print(f"(exit status {proc.returncode})", flush=True)
    if proc.returncode != expect:
        raise SystemExit(f"demo: expected exit status {expect}, got {proc.returncode}")
    return proc.stdout.decode()


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    image = WORK / "volume.img"
    step(f"Creating a 32 MiB LUKS2 image {image.relative_to(ROOT)} (Argon2id passphrase)")
    make_luks_image(image, PASSPHRASE, size_mib=32, fast_kdf=False)

    with Swtpm(WORK / "tpm") as tpm:
        step(f"Software TPM 2.0 running: {tpm.tcti}")
        step("Enroll: seal a new secret to the TPM, bound to PCRs 4,7 and cap PCR 15")
        sealer(
            tpm.tcti, "enroll", "--unlock-key-file", "-", "--recovery-key",
            "--state-dir", str(WORK / "state"), str(image), stdin=PASSPHRASE + b"\n",
        )
        step("Status")
        sealer(tpm.tcti, "status", "--state-dir", str(WORK / "state"), str(image))
        step("Unlock test: the TPM releases a key that the volume accepts")
        sealer(tpm.tcti, "unlock", "--test", str(image))

        step("An evil maid changes the boot chain: PCR 7 is extended")
        digest = "ee" * 32
        print(f"$ tpm2_pcrextend -T {tpm.tcti} 7:sha256={digest[:16]}...", flush=True)
        subprocess.run(
            ["tpm2_pcrextend", "-T", tpm.tcti, f"7:sha256={digest}"], check=True
        )
        step("Unlock test again: the TPM refuses, and says why")
        sealer(tpm.tcti, "unlock", "--test", str(image), expect=5)
        sealer(tpm.tcti, "status", "--state-dir", str(WORK / "state"), str(image))

    step("Nothing is lost: the passphrase still opens the volume")
    if not opens_with(image, PASSPHRASE):
        raise SystemExit("demo: the passphrase no longer opens the volume")
    print("cryptsetup open --test-passphrase: the passphrase opens the volume.")
    print("\ndemo: all steps behaved as expected.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
