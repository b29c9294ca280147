"""PE measurements against independent references: the Authenticode digest sbsign signs, the
PCR 11 events of a log captured from a real systemd-stub boot, and hostile bytes."""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pefile
import pytest

from sealer.errors import ExitCode
from sealer.measure import eventlog
from sealer.measure.pe import (
    PeImageError,
    authenticode_digest,
    linux_load_options_digest,
    sections,
    signer_certificates,
    stub_sections,
    uki_pcr11_events,
)
from sealer.pcrs import BANKS

SHA256 = BANKS["sha256"]
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))
FIXTURES = Path(__file__).resolve().parents[2] / "swtpm-fixtures"
LOG = eventlog.parse((FIXTURES / "eventlogs" / "ovmf-secureboot-uki.bin").read_bytes())
# What swtpm-fixtures/bootimage.py build_uki puts in .osrel: its PCR 11 event is in the log too.
OSREL = b'ID=debian\nPRETTY_NAME="sealer e2e guest"\n'
SECTION_VMAS = {".osrel": 0x20000, ".cmdline": 0x30000, ".linux": 0x2000000, ".initrd": 0x3000000}

SPC_INDIRECT_DATA_OID = bytes.fromhex("060a2b060104018237020104")  # 1.3.6.1.4.1.311.2.1.4
SHA256_OID = bytes.fromhex("0609608648016503040201")  # 2.16.840.1.101.3.4.2.1


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: sbsigntool, openssl, binutils)")
    if not STUB.exists():
        pytest.skip(f"{STUB} is missing (Debian: systemd-boot-efi)")


# A minimal DER reader, so that the digest sbsign signed is read without any code under test.
def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``at``."""
    tag, first = der[at], der[at + 1]
    if first < 0x80:
        return tag, at + 2, at + 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[at + 2 : at + 2 + count], "big")
    return tag, at + 2 + count, at + 2 + count + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, value start, value end) of each element in der[start:end]."""
    found = []
    while start < end:
        tag, value, value_end = _tlv(der, start)
        found.append((tag, start, value, value_end))
        start = value_end
    return found


def _signed_digests(signed: bytes) -> list[tuple[bytes, bytes]]:
    """(digest algorithm OID, digest) from each signature's SpcIndirectDataContent.DigestInfo."""
    directory = pefile.PE(data=signed, fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[4]
    offset, end = directory.VirtualAddress, directory.VirtualAddress + directory.Size
    found = []
    while end - offset >= 8:
        length, _revision, kind = struct.unpack_from("<IHH", signed, offset)
        assert kind == 2, "not a PKCS#7 WIN_CERTIFICATE"
        der = signed[offset + 8 : offset + length]
        _, value, value_end = _tlv(der, 0)  # ContentInfo
        _oid, explicit = _children(der, value, value_end)
        (signed_data,) = _children(der, explicit[2], explicit[3])
        # SignedData: version, digestAlgorithms, contentInfo, ...
        content_info = _children(der, signed_data[2], signed_data[3])[2]
        content_type, content = _children(der, content_info[2], content_info[3])
        assert der[content_type[1] : content_type[3]] == SPC_INDIRECT_DATA_OID
        (indirect,) = _children(der, content[2], content[3])
        _data, digest_info = _children(der, indirect[2], indirect[3])
        algorithm, digest = _children(der, digest_info[2], digest_info[3])
        oid = _children(der, algorithm[2], algorithm[3])[0]
        assert digest[0] == 0x04  # OCTET STRING
        found.append((der[oid[1] : oid[3]], der[digest[2] : digest[3]]))
        offset += (length + 7) & ~7
    return found


@dataclass(frozen=True)
class Signer:
    key: Path
    cert: Path

    def sign(self, image: Path, output: Path) -> bytes:
        subprocess.run(
            ["sbsign", "--key", self.key, "--cert", self.cert, "--output", output, image],
            check=True, capture_output=True,
        )
        # Sanity: the independent verifier accepts what we are about to compare against.
        subprocess.run(["sbverify", "--cert", self.cert, output], check=True, capture_output=True)
        return output.read_bytes()

    def der(self) -> bytes:
        return subprocess.run(
            ["openssl", "x509", "-in", self.cert, "-outform", "DER"],
            check=True, capture_output=True,
        ).stdout


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    _need("openssl", "sbsign", "sbverify")
    work = tmp_path_factory.mktemp("signer")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=test",
         "-days", "1", "-keyout", work / "k", "-out", work / "c"],
        check=True, capture_output=True,
    )
    return Signer(work / "k", work / "c")


def _build_uki(work: Path, contents: dict[str, bytes]) -> Path:
    """A UKI as swtpm-fixtures/bootimage.py build_uki makes it: objcopy --add-section."""
    argv = ["objcopy"]
    for name, data in contents.items():
        path = work / name.lstrip(".")
        path.write_bytes(data)
        vma = SECTION_VMAS.get(name, 0x4000000 + 0x100000 * len(argv))
        argv += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
    subprocess.run([*argv, STUB, work / "uki.efi"], check=True, capture_output=True)
    return work / "uki.efi"


@pytest.fixture(scope="module")
def uki_parts() -> dict[str, bytes]:
    rng = random.Random(11)
    return {
        ".osrel": OSREL,
        ".cmdline": b"console=ttyS0 root=/dev/mapper/cryptroot",
        # The stub hashes whatever .linux holds: a real kernel is not needed for the digests.
        ".linux": rng.randbytes(5000),
        ".initrd": rng.randbytes(70001),  # odd size: VirtualSize < SizeOfRawData (0x200 aligned)
    }


@pytest.fixture(scope="module")
def uki(tmp_path_factory: pytest.TempPathFactory, uki_parts: dict[str, bytes]) -> Path:
    _need("objcopy")
    return _build_uki(tmp_path_factory.mktemp("uki"), uki_parts)


# --- Authenticode ----------------------------------------------------------------------------


def _unsigned_kernel(tmp_path: Path) -> Path:
    if not KERNELS:
        pytest.skip("no kernel in /boot (Debian: linux-image-cloud-amd64)")
    _need("sbattach")
    kernel = tmp_path / "vmlinuz.efi"
    shutil.copyfile(KERNELS[-1], kernel)
    # Debian's kernel comes signed: strip that, so "unsigned" really is. (sbattach fails on an
    # unsigned kernel: the assertion below is what matters.)
    subprocess.run(["sbattach", "--remove", kernel], capture_output=True)
    assert signer_certificates(kernel.read_bytes()) == []
    return kernel


def _swap_section_headers(image: bytes, first: int, second: int) -> bytes:
    """``image`` with two section headers swapped in the table (their data stays put)."""
    table = [s.get_file_offset() for s in pefile.PE(data=image, fast_load=True).sections]
    table.sort()  # pefile lists sections by address; these are the table's slots
    a, b = table[first], table[second]
    swapped = bytearray(image)
    swapped[a : a + 40], swapped[b : b + 40] = image[b : b + 40], image[a : a + 40]
    return bytes(swapped)


def _out_of_order_stub(tmp_path: Path) -> Path:
    """The stub with two section headers swapped: the table is no longer in file order, and the
    digest must hash the sections by PointerToRawData, as sbsign and EDK2 do."""
    swapped = tmp_path / "swapped.efi"
    swapped.write_bytes(_swap_section_headers(STUB.read_bytes(), 1, 2))
    return swapped


@pytest.mark.parametrize("which", ["stub", "out-of-order stub", "kernel", "uki"])
def test_authenticode_digest_is_the_digest_sbsign_signs(
    which: str, signer: Signer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if which == "stub":
        image = STUB
    elif which == "out-of-order stub":
        image = _out_of_order_stub(tmp_path)
    elif which == "kernel":
        image = _unsigned_kernel(tmp_path)
    else:
        image = request.getfixturevalue("uki")
    unsigned = image.read_bytes()
    signed = signer.sign(image, tmp_path / "signed.efi")

    ((algorithm, embedded),) = _signed_digests(signed)
    assert algorithm == SHA256_OID
    assert authenticode_digest(signed, SHA256) == embedded
    # Signing appends the certificate table, after padding the file to 8 bytes with zeros: the
    # padding is hashed, so the unsigned file measures the same only once padded the same way.
    padded = unsigned + bytes(-len(unsigned) % 8)
    assert authenticode_digest(padded, SHA256) == embedded
    if len(unsigned) % 8 == 0:
        assert authenticode_digest(unsigned, SHA256) == embedded
    else:  # the stub and objcopy's UKIs end in a COFF symbol table of any length
        assert authenticode_digest(unsigned, SHA256) != embedded


def test_a_second_signature_does_not_change_the_digest(signer: Signer, tmp_path: Path) -> None:
    once = signer.sign(STUB, tmp_path / "once.efi")
    twice = signer.sign(tmp_path / "once.efi", tmp_path / "twice.efi")
    assert len(twice) > len(once)
    assert [digest for _, digest in _signed_digests(twice)] == [
        authenticode_digest(once, SHA256)
    ] * 2
    assert authenticode_digest(twice, SHA256) == authenticode_digest(once, SHA256)


def test_each_bank_hashes_the_same_bytes() -> None:
    _need()
    image = STUB.read_bytes()
    digests = {bank.name: authenticode_digest(image, bank) for bank in BANKS.values()}
    assert {name: len(digest) for name, digest in digests.items()} == {
        bank.name: bank.size for bank in BANKS.values()
    }
    # The sha256 digest is the one sbsign checks; the others must hash the very same bytes:
    # rebuild the hashed byte stream from the sha256 path's definition and compare.
    pe = pefile.PE(data=image, fast_load=True)
    checksum = pe.OPTIONAL_HEADER.get_field_absolute_offset("CheckSum")
    security = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4].get_file_offset()
    headers = pe.OPTIONAL_HEADER.SizeOfHeaders
    stream = image[:checksum] + image[checksum + 4 : security] + image[security + 8 : headers]
    hashed = headers
    for section in sorted(pe.sections, key=lambda s: s.PointerToRawData):
        start = section.PointerToRawData
        stream += image[start : start + section.SizeOfRawData]
        hashed += section.SizeOfRawData
    stream += image[hashed:]
    for bank in BANKS.values():
        assert digests[bank.name] == hashlib.new(bank.name, stream).digest()


# --- certificates ----------------------------------------------------------------------------


def test_signer_certificates_returns_the_signing_certificate(
    signer: Signer, tmp_path: Path
) -> None:
    assert signer_certificates(STUB.read_bytes()) == []
    signed = signer.sign(STUB, tmp_path / "signed.efi")
    assert signer_certificates(signed) == [signer.der()]


def test_signer_certificates_of_a_twice_signed_kernel(signer: Signer, tmp_path: Path) -> None:
    if not KERNELS:
        pytest.skip("no kernel in /boot (Debian: linux-image-cloud-amd64)")
    debian = signer_certificates(KERNELS[-1].read_bytes())
    signed = signer.sign(KERNELS[-1], tmp_path / "signed.efi")
    assert signer_certificates(signed) == [*debian, signer.der()]


# --- UKI sections and PCR 11 -----------------------------------------------------------------


def _logged_pcr11() -> list[tuple[bytes, bytes]]:
    return [(e.data, e.digests["sha256"]) for e in LOG.events if e.pcr == 11]


def test_sections_are_the_contents_objcopy_added(uki: Path, uki_parts: dict[str, bytes]) -> None:
    found = {section.name: section.data for section in sections(uki.read_bytes())}
    assert list(found)[:2] == [".text", ".reloc"]  # the stub's own sections, in table order
    for name, data in uki_parts.items():
        assert found[name] == data, name
    raw_sizes = {
        s.Name.rstrip(b"\0").decode(): s.SizeOfRawData
        for s in pefile.PE(str(uki), fast_load=True).sections
    }
    # The section is VirtualSize bytes, not the file-aligned raw data.
    assert raw_sizes[".initrd"] > len(uki_parts[".initrd"])


def test_uki_pcr11_events_match_the_captured_boot(uki: Path, uki_parts: dict[str, bytes]) -> None:
    events = uki_pcr11_events(uki.read_bytes(), SHA256)
    order = [".linux", ".osrel", ".cmdline", ".initrd"]  # not the file's order (.osrel first)
    assert [name for name, _ in events] == [
        label for name in order for label in (name, f"{name} contents")
    ]
    logged = _logged_pcr11()
    # The log's EV_IPL descriptions: each name twice, in UTF-16 with its NUL, in the same order.
    assert [data for data, _ in logged] == [
        (name + "\0").encode("utf-16-le") for name in order for _ in range(2)
    ]
    # The name events do not depend on the build, so they must equal the real boot's exactly.
    assert [digest for _, digest in events[0::2]] == [digest for _, digest in logged[0::2]]
    assert events[0][1].hex() == (
        "0da293e37ad5511c59be47993769aacb91b243f7d010288e118dc90e95aaef5a"
    )
    # Contents: the bytes put in (VirtualSize, not the 0x200-padded raw size). .osrel is the
    # same text the captured boot's UKI had, so that contents event must match the log as well.
    contents = dict(events[1::2])
    for name in order:
        assert contents[f"{name} contents"] == hashlib.sha256(uki_parts[name]).digest(), name
    assert contents[".osrel contents"] == logged[3][1]


def test_the_kernels_initrd_event_equals_the_stubs_initrd_contents_event() -> None:
    # In the captured boot, the kernel's PCR 9 "Linux initrd" digest is the .initrd contents
    # event: what uki_pcr11_events computes for .initrd also predicts that PCR 9 event.
    initrd = [e for e in LOG.events if e.pcr == 9 and e.data[:4] == b"\xec\x22\x3b\x8f"]
    assert [e.digests["sha256"] for e in initrd] == [_logged_pcr11()[7][1]]


def _set_virtual_size(image: bytes, name: bytes, size: int) -> bytes:
    pe = pefile.PE(data=image, fast_load=True)
    (section,) = [s for s in pe.sections if s.Name.rstrip(b"\0") == name]
    at = section.get_field_absolute_offset("Misc_VirtualSize")
    return image[:at] + struct.pack("<I", size) + image[at + 4 :]


def test_contents_are_truncated_or_zero_filled_to_virtual_size(
    uki: Path, uki_parts: dict[str, bytes]
) -> None:
    image = uki.read_bytes()
    initrd = uki_parts[".initrd"]
    raw_size = 0x11200  # 70001 rounded up to the file alignment (0x200)
    shorter = _set_virtual_size(image, b".initrd", 1000)
    longer = _set_virtual_size(image, b".initrd", raw_size + 5000)
    loaded_longer = initrd + bytes(raw_size - len(initrd)) + bytes(5000)  # objcopy pads with 0
    for patched, expected in ((shorter, initrd[:1000]), (longer, loaded_longer)):
        assert {s.name: s.data for s in sections(patched)}[".initrd"] == expected
        assert dict(uki_pcr11_events(patched, SHA256))[".initrd contents"] == (
            hashlib.sha256(expected).digest()
        )
        assert stub_sections(patched)[".initrd"].data == expected
    # VirtualSize 0 reads as "no such section" to the stub: neither event.
    empty = _set_virtual_size(image, b".initrd", 0)
    absent = dict(uki_pcr11_events(empty, SHA256))
    assert ".initrd" not in absent and ".initrd contents" not in absent
    assert ".initrd" not in stub_sections(empty)
    assert set(stub_sections(image)) == set(uki_parts)


def test_pcrsig_is_not_measured_and_pcrpkey_is(tmp_path: Path) -> None:
    _need("objcopy")
    parts = {".linux": b"kernel", ".pcrsig": b"{}", ".pcrpkey": b"key", ".splash": b"BM"}
    events = uki_pcr11_events(_build_uki(tmp_path, parts).read_bytes(), SHA256)
    assert [name for name, _ in events[0::2]] == [".linux", ".splash", ".pcrpkey"]


def test_sections_come_in_table_order_not_address_order(tmp_path: Path) -> None:
    _need()
    names = [section.name for section in sections(_out_of_order_stub(tmp_path).read_bytes())]
    assert names[:3] == [".text", ".data", ".reloc"]  # .data now has the lower header


def test_the_stub_matches_names_by_prefix_and_the_last_match_wins(tmp_path: Path) -> None:
    # systemd 252 pe.c locate_sections(): memcmp over strlen(".linux") bytes, across the whole
    # table in table order, each match overwriting the last. objcopy writes the table in address
    # order, so swap the two headers: ".linux" is then last in the table but lower in memory.
    _need("objcopy")
    uki = _build_uki(tmp_path, {".linux": b"first", ".linux2": b"second"}).read_bytes()
    events = dict(uki_pcr11_events(uki, SHA256))
    assert events[".linux contents"] == hashlib.sha256(b"second").digest()
    assert stub_sections(uki)[".linux"].data == b"second"
    swapped = _swap_section_headers(uki, -2, -1)
    events = dict(uki_pcr11_events(swapped, SHA256))
    assert events[".linux contents"] == hashlib.sha256(b"first").digest()
    assert stub_sections(swapped)[".linux"].data == b"first"
    assert ".linux2" in {section.name for section in sections(swapped)}


def test_an_image_without_linux_section_is_not_a_uki() -> None:
    _need()
    with pytest.raises(PeImageError, match=r"^stub\.efi: not a unified kernel image"):
        uki_pcr11_events(STUB.read_bytes(), SHA256, source="stub.efi")


# --- Linux LoadOptions (PCR 9) ---------------------------------------------------------------


def _load_options(text: str) -> bytes:
    return hashlib.sha256((text + "\0").encode("utf-16-le")).digest()


@pytest.mark.parametrize(
    ("section", "load_options"),
    [
        (b"console=ttyS0 root=/dev/vda", "console=ttyS0 root=/dev/vda"),
        # mangle_stub_cmdline (252): control characters become spaces, trailing spaces go,
        # leading ones stay.
        (b"  quiet\n", "  quiet"),
        (b"a\tb\nc \r\n  ", "a b c"),
        (b"\x7f", "\x7f"),  # DEL is not a control character to systemd 252
        (b"ro\0garbage after the NUL", "ro"),
        ("init=/sbin/init é €".encode(), "init=/sbin/init é €"),
        # xstrn8_to_16 drops what UCS-2 cannot hold and sequences that are not UTF-8.
        ("a\U0001f600b".encode(), "ab"),
        (b"a\xffb\xc3", "ab"),
        (b"\n", ""),
    ],
)
def test_linux_load_options_digest(section: bytes, load_options: str) -> None:
    assert linux_load_options_digest(section, SHA256) == _load_options(load_options)


def test_no_cmdline_section_means_no_load_options_event() -> None:
    assert linux_load_options_digest(b"", SHA256) is None


def test_load_options_digest_follows_the_bank() -> None:
    digest = linux_load_options_digest(b"quiet", BANKS["sha384"])
    assert digest == hashlib.sha384("quiet\0".encode("utf-16-le")).digest()


# --- hostile input ---------------------------------------------------------------------------


def _calls(bad: bytes) -> list[Callable[[], object]]:
    return [
        lambda: authenticode_digest(bad, SHA256, source="/boot/bad.efi"),
        lambda: sections(bad, source="/boot/bad.efi"),
        lambda: uki_pcr11_events(bad, SHA256, source="/boot/bad.efi"),
        lambda: stub_sections(bad, source="/boot/bad.efi"),
        lambda: signer_certificates(bad, source="/boot/bad.efi"),
    ]


def _refused(bad: bytes) -> None:
    for call in _calls(bad):
        with pytest.raises(PeImageError) as caught:
            call()
        assert caught.value.message.startswith("/boot/bad.efi: not a")
        assert caught.value.exit_code == ExitCode.MEASUREMENT


def _patched(image: bytes, offset: int, value: int) -> bytes:
    return image[:offset] + struct.pack("<I", value) + image[offset + 4 :]


def test_non_pe_bytes_are_refused() -> None:
    for bad in (b"", b"MZ", b"MZ" + bytes(200), random.Random(1).randbytes(4096), b"\x7fELF" * 99):
        _refused(bad)


def test_header_fields_pointing_outside_the_file_are_refused(
    uki: Path, signer: Signer, tmp_path: Path
) -> None:
    image = uki.read_bytes()
    pe = pefile.PE(data=image, fast_load=True)
    last = pe.sections[-1]
    optional = pe.OPTIONAL_HEADER
    signed = signer.sign(uki, tmp_path / "signed.efi")
    security = pefile.PE(data=signed, fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[4]
    cases = {
        "section past EOF": _patched(
            image, last.get_field_absolute_offset("PointerToRawData"), len(image) - 16
        ),
        "huge section": _patched(image, last.get_field_absolute_offset("SizeOfRawData"), 2**31),
        "huge certificate table": _patched(signed, security.get_file_offset() + 4, 0xFFFFFFF0),
        "certificate table past EOF": _patched(signed, security.get_file_offset(), len(signed)),
        "headers past EOF": _patched(
            image, optional.get_field_absolute_offset("SizeOfHeaders"), len(image) + 1
        ),
        "e_lfanew past EOF": _patched(image, 0x3C, len(image) + 8),
        "many sections": image[:0x86] + struct.pack("<H", 0xFFFF) + image[0x88:],
        "too many directories": _patched(
            image, optional.get_field_absolute_offset("NumberOfRvaAndSizes"), 17
        ),
        "zero-fill bomb": _set_virtual_size(image, b".initrd", 0xFFFFFFFF),
    }
    assert pe.FILE_HEADER.get_file_offset() + 2 == 0x86  # NumberOfSections, patched above
    for name, bad in cases.items():
        assert bad != image, name
        _refused(bad)
    # The certificate table is only read by two of them; the bad one must still not leak out.
    with pytest.raises(PeImageError, match="certificate"):
        authenticode_digest(cases["huge certificate table"], SHA256)


def test_truncations_and_corruptions_never_escape_as_other_errors(
    uki: Path, signer: Signer, tmp_path: Path
) -> None:
    image = signer.sign(uki, tmp_path / "signed.efi")
    pe = pefile.PE(data=image, fast_load=True)
    sections_end = max(s.PointerToRawData + s.SizeOfRawData for s in pe.sections)
    # Every cut before the end of the last section loses data the digest needs: refused.
    for cut in [*range(0, 1024, 61), *range(1024, sections_end, sections_end // 16)]:
        _refused(image[:cut])
    # Past it (objcopy keeps the COFF symbol table there, then the signature) the cut only
    # damages the certificate table: the digest must refuse it or be computed, never crash.
    for cut in range(sections_end, len(image), (len(image) - sections_end) // 8):
        try:
            assert len(authenticode_digest(image[:cut], SHA256)) == 32
        except PeImageError as error:
            assert "certificate" in error.message
    # Random damage to the headers and to the signature: any outcome but another exception.
    rng = random.Random(4)
    security = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4].VirtualAddress
    targets = [*range(pe.OPTIONAL_HEADER.SizeOfHeaders), *range(security, security + 64)]
    for _ in range(100):
        damaged = bytearray(image)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.choice(targets)] = rng.randrange(256)
        for call in _calls(bytes(damaged)):
            with contextlib.suppress(PeImageError):
                call()
