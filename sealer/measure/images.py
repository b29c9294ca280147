"""Reading a boot file (a UKI, a kernel, an initrd, a GRUB config) whole, with a size limit."""

from __future__ import annotations

from pathlib import Path

from sealer.errors import MeasurementError

# A UKI, a kernel or an initrd is at most a few hundred MiB; refuse to read a disk by mistake.
MAX_IMAGE_BYTES = 1024 * 1024 * 1024


def read_image(path: Path) -> bytes:
    """A boot file's bytes; MeasurementError when it cannot be read or is over 1 GiB."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise MeasurementError(f"cannot read the boot image {path}: {exc.strerror}") from exc
    if len(data) > MAX_IMAGE_BYTES:
        raise MeasurementError(f"{path} is larger than 1 GiB: not a boot image")
    return data
