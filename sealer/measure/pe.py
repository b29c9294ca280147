"""What UEFI firmware, systemd-stub and the Linux EFI stub measure for a boot image.

Plain data in, digests out: no TPM, no subprocess. ``sealer predict`` uses these to replace the
events of a captured TCG event log with the ones the *next* boot will produce.

- PCR 4: the firmware (EDK2's DxeTpm2MeasureBootLib -> Tcg2Dxe MeasurePeImageAndExtend) extends
  the Authenticode image hash of every EFI application it starts (EV_EFI_BOOT_SERVICES_APPLICATION).
- PCR 11: systemd-stub 252 extends, for each UKI section it knows, the section's name and then its
  contents (two EV_IPL events per section), see :func:`uki_pcr11_events`.
- PCR 9: the Linux 6.1 EFI stub extends the LoadOptions it was started with and the initrd it
  loaded (EV_EVENT_TAG), see :func:`linux_load_options_digest`.

The input may be hostile (a truncated or crafted file in /boot): every offset and size is checked
against the file before it is used, and every failure is a :class:`PeImageError`.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pefile
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from sealer.errors import MeasurementError
from sealer.pcrs import Bank

_PE32_MAGIC = 0x10B
_PE32_PLUS_MAGIC = 0x20B
# Size of the optional header's fixed part; the data directories follow it.
_DIRECTORIES_AT = {_PE32_MAGIC: 96, _PE32_PLUS_MAGIC: 112}
_MAX_DIRECTORIES = 16  # EDK2's loader refuses images that claim more
_SECURITY_DIRECTORY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY: the attribute certificate table
_SECTION_HEADER_SIZE = 40
_WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
# The loader zero-fills a section from its raw size up to its VirtualSize. No real boot image
# needs much of that; a crafted header must not make us allocate or hash gigabytes of zeros.
_MAX_ZERO_FILL = 256 << 20
_ZERO_CHUNK = bytes(1 << 20)

# systemd v252 src/fundamental/tpm-pcr.h, enum UnifiedSection + unified_sections[]: the order in
# which the stub measures (not the order in the file). unified_section_measure() skips .pcrsig:
# it holds signatures *of* the expected PCR 11, so it cannot be an input to it.
STUB_SECTIONS = (
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrsig", ".pcrpkey",
)
_UNMEASURED_SECTIONS = frozenset({".pcrsig"})


class PeImageError(MeasurementError):
    """A boot image that is not a well-formed PE/COFF file (or not a unified kernel image)."""


@dataclass(frozen=True)
class Section:
    """One section of a PE image (a UKI), as the firmware loads it into memory."""

    name: str  # the header's 8-byte name up to its first NUL, e.g. ".linux"
    # The section as the firmware loads it into memory, which is what systemd-stub hashes:
    # VirtualSize bytes, i.e. the raw data truncated to VirtualSize, or zero-filled up to it.
    data: bytes


@dataclass(frozen=True)
class _SectionHeader:
    name: bytes  # raw 8-byte field: systemd-stub compares these bytes, not a decoded string
    virtual_size: int
    raw_offset: int
    raw_size: int

    @property
    def loaded_size(self) -> int:
        # EDK2 PeCoffLoaderLoadImage copies min(VirtualSize, SizeOfRawData) bytes from the file
        # and zero-fills the rest of VirtualSize. (With VirtualSize 0 it copies all the raw
        # data, but systemd-stub then sees a size of 0, and so do we.)
        return min(self.virtual_size, self.raw_size)


@dataclass(frozen=True)
class _Image:
    checksum_offset: int
    security_entry_offset: int | None  # None: the image has no Certificate Table entry
    size_of_headers: int
    certificate_table: tuple[int, int]  # (file offset, size); size 0 when unsigned
    sections: tuple[_SectionHeader, ...]


def _bad(source: str, reason: str) -> PeImageError:
    return PeImageError(
        f"{source}: not a PE/COFF image ({reason})",
        "give the path of a complete EFI executable: a kernel, a unified kernel image or a loader",
    )


def _parse(data: bytes, source: str) -> _Image:
    # The common ways of not being PE, checked here: pefile's own refusal costs a full gc.collect().
    if len(data) < 64 or data[:2] != b"MZ":
        raise _bad(source, "no MZ header")
    (nt_headers,) = struct.unpack_from("<I", data, 0x3C)
    if nt_headers + 24 > len(data) or data[nt_headers : nt_headers + 4] != b"PE\0\0":
        raise _bad(source, "no PE header")
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as error:
        raise _bad(source, str(error.value)) from None
    except Exception as error:  # pefile promises nothing else about hostile bytes
        raise _bad(source, f"unreadable headers: {type(error).__name__}") from None
    try:
        return _check(pe, len(data), source)
    except PeImageError:
        raise
    except Exception as error:  # a header pefile could not fill in: same as malformed
        raise _bad(source, f"unreadable headers: {type(error).__name__}") from None


def _check(pe: Any, size: int, source: str) -> _Image:
    """Bounds-check what pefile read: it pads a truncated header with zeros and keeps going."""
    optional = pe.OPTIONAL_HEADER
    magic = int(optional.Magic)
    if magic not in _DIRECTORIES_AT:
        raise _bad(source, f"unknown optional header magic {magic:#x}")
    directories = int(optional.NumberOfRvaAndSizes)
    if directories > _MAX_DIRECTORIES:
        raise _bad(source, f"{directories} data directories, at most {_MAX_DIRECTORIES} exist")
    optional_at = int(optional.get_file_offset())
    optional_end = optional_at + int(pe.FILE_HEADER.SizeOfOptionalHeader)
    if optional_at + _DIRECTORIES_AT[magic] + 8 * directories > optional_end:
        raise _bad(source, "the optional header is shorter than its own fields")
    section_count = int(pe.FILE_HEADER.NumberOfSections)
    table_end = optional_end + _SECTION_HEADER_SIZE * section_count
    size_of_headers = int(optional.SizeOfHeaders)
    if table_end > size_of_headers:
        raise _bad(source, "the section table runs past SizeOfHeaders")
    if size_of_headers > size:
        raise _bad(source, f"truncated: its headers need {size_of_headers} bytes, it has {size}")
    if len(pe.sections) != section_count:
        raise _bad(source, "unreadable section table")

    headers = tuple(
        _SectionHeader(
            name=bytes(section.Name),
            virtual_size=int(section.Misc_VirtualSize),
            raw_offset=int(section.PointerToRawData),
            raw_size=int(section.SizeOfRawData),
        )
        # pefile sorts its list by VirtualAddress; the stub walks the table in file order.
        for section in sorted(pe.sections, key=lambda section: section.get_file_offset())
    )
    for header in headers:
        if header.raw_size and header.raw_offset + header.raw_size > size:
            raise _bad(source, f"section {_section_name(header.name)!r} lies beyond the end")
    zero_fill = sum(h.virtual_size - h.loaded_size for h in headers)
    if zero_fill > _MAX_ZERO_FILL:
        raise _bad(source, f"its sections claim {zero_fill >> 20} MiB of zero-filled memory")

    security_entry: int | None = None
    certificates = (0, 0)
    if directories > _SECURITY_DIRECTORY:
        entry = optional.DATA_DIRECTORY[_SECURITY_DIRECTORY]
        security_entry = int(entry.get_file_offset())
        # The security directory's "VirtualAddress" is a file offset: certificates are not loaded.
        offset, length = int(entry.VirtualAddress), int(entry.Size)
        if length:
            if offset + length > size:
                raise _bad(source, "its certificate table lies beyond the end of the file")
            certificates = (offset, length)
    return _Image(
        checksum_offset=int(optional.get_field_absolute_offset("CheckSum")),
        security_entry_offset=security_entry,
        size_of_headers=size_of_headers,
        certificate_table=certificates,
        sections=headers,
    )


def _section_name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def authenticode_digest(data: bytes, bank: Bank, *, source: str = "boot image") -> bytes:
    """The PE/COFF Authenticode image hash, as EDK2 firmware extends it into PCR 4 for an
    EV_EFI_BOOT_SERVICES_APPLICATION event (hash with the bank's algorithm).

    Microsoft's "Windows Authenticode Portable Executable Signature Format", as EDK2's
    MeasurePeImageAndExtend (SecurityPkg/Tcg/Tcg2Dxe/MeasureBootPeCoff.c) computes it: the
    headers up to SizeOfHeaders less the CheckSum field and the Certificate Table entry (the two
    things signing rewrites); each section's raw data in PointerToRawData order; then the bytes
    from the running total of hashed bytes to the end of the file less the certificate table,
    which signing appends. ``source`` names the image in error messages.
    """
    image = _parse(data, source)
    view = memoryview(data)
    digest = hashlib.new(bank.name)
    checksum_end = image.checksum_offset + 4
    digest.update(view[: image.checksum_offset])
    if image.security_entry_offset is None:
        digest.update(view[checksum_end : image.size_of_headers])
    else:
        digest.update(view[checksum_end : image.security_entry_offset])
        digest.update(view[image.security_entry_offset + 8 : image.size_of_headers])
    hashed = image.size_of_headers
    # sorted() is stable, like EDK2's insertion sort: sections at one offset keep table order.
    for header in sorted(image.sections, key=lambda h: h.raw_offset):
        if header.raw_size:
            digest.update(view[header.raw_offset : header.raw_offset + header.raw_size])
            hashed += header.raw_size
    # EDK2 and the spec take the trailing bytes by count (file size less the certificate table's
    # size), not by position: the table is assumed to be the file's last bytes.
    certificate_size = image.certificate_table[1]
    if len(data) > hashed:
        if len(data) < hashed + certificate_size:
            raise _bad(source, "its certificate table overlaps its sections")
        digest.update(view[hashed : len(data) - certificate_size])
    return digest.digest()


def _update_loaded(digest: Any, view: memoryview, header: _SectionHeader) -> None:
    """Feed the section's in-memory image to ``digest`` without copying it."""
    loaded = header.loaded_size
    digest.update(view[header.raw_offset : header.raw_offset + loaded])
    remaining = header.virtual_size - loaded
    while remaining > 0:
        chunk = min(remaining, len(_ZERO_CHUNK))
        digest.update(memoryview(_ZERO_CHUNK)[:chunk])
        remaining -= chunk


def _loaded(data: bytes, header: _SectionHeader) -> bytes:
    loaded = header.loaded_size
    raw = data[header.raw_offset : header.raw_offset + loaded] if loaded else b""
    return raw + bytes(header.virtual_size - loaded)


def sections(data: bytes, *, source: str = "boot image") -> list[Section]:
    """Every section in section-table order, as the firmware lays it out in memory."""
    image = _parse(data, source)
    return [Section(_section_name(h.name), _loaded(data, h)) for h in image.sections]


def _stub_sections(image: _Image) -> dict[str, _SectionHeader]:
    """The sections systemd-stub 252 finds: src/boot/efi/pe.c locate_sections().

    It compares only strlen(name) bytes of the header's name field (so ".linuxfoo" counts as
    ".linux"), walks the whole table and lets a later match replace an earlier one, and takes
    the section's size from VirtualSize; a size of 0 then reads as "not found".
    """
    found: dict[str, _SectionHeader] = {}
    for header in image.sections:
        for name in STUB_SECTIONS:
            if header.name.startswith(name.encode()):
                found[name] = header
    return {name: header for name, header in found.items() if header.virtual_size}


def stub_sections(
    data: bytes, *, source: str = "boot image", only: Collection[str] | None = None
) -> dict[str, Section]:
    """The sections systemd-stub 252 uses, under its names (".linux", ".cmdline", ...): what it
    measures into PCR 11 and hands to the kernel. Unlike looking names up in :func:`sections`,
    this follows the stub's own lookup: prefix match, last match wins, VirtualSize 0 is absent.
    ``only`` names the sections wanted: each one is copied out of ``data``, and a UKI's kernel
    and initrd are tens of megabytes.
    """
    image = _parse(data, source)
    return {
        name: Section(name, _loaded(data, h))
        for name, h in _stub_sections(image).items()
        if only is None or name in only
    }


def uki_pcr11_events(
    data: bytes, bank: Bank, *, source: str = "boot image"
) -> list[tuple[str, bytes]]:
    """The digests systemd-stub (Debian bookworm: systemd 252) extends into PCR 11 for this UKI,
    in order, each with a short description: (".linux", digest of b".linux\\0"), then
    (".linux contents", digest of the section), and so on.

    systemd v252 src/boot/efi/stub.c efi_main(): for each section in STUB_SECTIONS order that
    is present and not .pcrsig, tpm_log_event_ascii() first hashes the ASCII name with its NUL
    (strsize8), then the section's VirtualSize bytes at ImageBase + VirtualAddress, that is the
    loaded image (raw data truncated or zero-filled to VirtualSize). Both events are EV_IPL and
    carry the name in UTF-16 as their description. Without a .linux section the stub refuses to
    boot before measuring anything: that is a PeImageError here.
    """
    image = _parse(data, source)
    found = _stub_sections(image)
    if ".linux" not in found:
        raise PeImageError(
            f"{source}: not a unified kernel image (no .linux section)",
            "give the path of a UKI built from systemd-stub",
        )
    view = memoryview(data)
    events: list[tuple[str, bytes]] = []
    for name in STUB_SECTIONS:
        if name in _UNMEASURED_SECTIONS or name not in found:
            continue
        events.append((name, bank.hash(name.encode() + b"\0")))
        contents = hashlib.new(bank.name)
        _update_loaded(contents, view, found[name])
        events.append((f"{name} contents", contents.digest()))
    return events


def _utf8_to_ucs2(text: bytes) -> list[int]:
    """systemd 252's xstrn8_to_16(): UTF-8 to UCS-2, stopping at a NUL byte, silently dropping
    malformed or truncated sequences, surrogates and anything beyond the BMP."""
    units: list[int] = []
    position, left = 0, len(text)
    while left > 0 and text[position] != 0:
        lead = text[position]
        if lead < 0x80:
            length, value = 1, lead
        elif lead & 0xE0 == 0xC0:
            length, value = 2, lead & 0x1F
        elif lead & 0xF0 == 0xE0:
            length, value = 3, lead & 0x0F
        elif lead & 0xF8 == 0xF0:
            length, value = 4, lead & 0x07
        elif lead & 0xFC == 0xF8:
            length, value = 5, lead & 0x03
        elif lead & 0xFE == 0xFC:
            length, value = 6, lead & 0x01
        else:
            length, value = 1, -1
        if length > left:
            value = -1
        else:
            for follower in text[position + 1 : position + length]:
                if follower & 0xC0 != 0x80:
                    value = -1
                    break
                value = value << 6 | follower & 0x3F
        position += length
        left = max(0, left - length)
        if 0 <= value <= 0xD7FF or 0xE000 <= value <= 0xFFFF:
            units.append(value)
    return units


def linux_load_options_digest(cmdline: bytes, bank: Bank) -> bytes | None:
    """The digest of the "LOADED_IMAGE::LoadOptions" event (PCR 9, EV_EVENT_TAG 0x8F3B22ED) that
    the Linux 6.1 EFI stub measures when systemd-stub 252 starts it from a UKI whose .cmdline
    section holds ``cmdline``; None when that boot measures no such event.

    What the bytes are, and where that is decided:

    - systemd v252 src/boot/efi/stub.c efi_main(): under Secure Boot (or when the boot entry
      passes no printable LoadOptions) the stub uses the embedded .cmdline: xstrn8_to_16() over
      the section's VirtualSize bytes (UTF-8 to UCS-2, stopping at a NUL), then
      mangle_stub_cmdline() (src/boot/efi/util.c), which in 252 turns every character <= 0x1F
      into a space and then chops trailing spaces, but leaves leading ones (checked against the
      disassembly of Debian's linuxx64.efi.stub 252.39: there is no leading-whitespace loop).
    - src/boot/efi/linux.c linux_exec(): the kernel's LoadedImage gets LoadOptions = that UCS-2
      string and LoadOptionsSize = strsize16(), i.e. including the 2-byte NUL terminator. With
      no .cmdline section (or an empty one: size 0 reads as absent) the stub sets nothing.
    - linux v6.1 drivers/firmware/efi/libstub/efi-stub-helper.c efi_convert_cmdline(): if
      load_options_size > 0, efi_measure_tagged_event() hashes load_options_size bytes at
      load_options, before any quirk or conversion.

    So the digest is H(UTF-16LE(mangled cmdline) + b"\\0\\0"). Not covered: a boot without
    Secure Boot whose boot entry passes its own options (the stub then uses those, and measures
    them into PCR 12 too), and on x86 a kernel too old for the initrd media device path, which
    the stub starts through the EFI handover protocol, where no LoadOptions event happens.
    """
    if not cmdline:
        return None
    units = _utf8_to_ucs2(cmdline)
    units = [0x20 if unit <= 0x1F else unit for unit in units]
    while units and units[-1] == 0x20:
        units.pop()
    units.append(0)
    return bank.hash(struct.pack(f"<{len(units)}H", *units))


def _der_length(blob: bytes) -> int | None:
    """The total length of the DER value that starts ``blob``; None if its header is malformed.

    A WIN_CERTIFICATE's length may include the padding to 8 bytes, which a DER parser rejects.
    """
    if len(blob) < 2 or blob[0] != 0x30:  # PKCS#7 ContentInfo is a SEQUENCE
        return None
    first = blob[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(blob) < 2 + count:
        return None
    return 2 + count + int.from_bytes(blob[2 : 2 + count], "big")


def signer_certificates(data: bytes, *, source: str = "boot image") -> list[bytes]:
    """DER of the certificates in the image's Authenticode signatures (each PKCS#7 SignedData in
    the attribute certificate table), in table order; [] when the image is unsigned."""
    image = _parse(data, source)
    offset, length = image.certificate_table
    end = offset + length
    certificates: list[bytes] = []
    while end - offset >= 8:  # WIN_CERTIFICATE: dwLength, wRevision, wCertificateType, data
        entry_length, _revision, kind = struct.unpack_from("<IHH", data, offset)
        if entry_length < 8 or offset + entry_length > end:
            raise _bad(source, "a certificate table entry has an impossible length")
        if kind == _WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            blob = data[offset + 8 : offset + entry_length]
            der_length = _der_length(blob)
            if der_length is None or der_length > len(blob):
                raise _bad(source, "its signature is not DER-encoded PKCS#7")
            try:
                with warnings.catch_warnings():
                    # cryptography warns when it falls back to BER: not news for our users.
                    warnings.simplefilter("ignore", UserWarning)
                    found = pkcs7.load_der_pkcs7_certificates(blob[:der_length])
            except Exception as error:  # ValueError, UnsupportedAlgorithm for odd content types
                raise _bad(source, f"its signature is not readable PKCS#7: {error}") from None
            certificates += [certificate.public_bytes(Encoding.DER) for certificate in found]
        offset += (entry_length + 7) & ~7  # entries are 8-byte aligned
    return certificates
