"""Broken DICOM files derived from valid ones, for robustness tests (nothing here is used by a run).

``write_fuzz_corpus`` copies each valid source under fresh UIDs (so every broken file is a series
of its own) and breaks the copy in one way, chosen and placed by a seeded random generator: the
same sources and seed always give the same bytes. The mutations:

* ``truncate``         - the file cut short, in the header or in the pixel data;
* ``flip_bytes``       - 1 to 8 bytes XOR-ed with random values, in the header or anywhere;
* ``zero_preamble``    - the preamble and the "DICM" magic zeroed, or those and part of the meta;
* ``cut_pixel_data``   - pixel data shortened behind a consistent element length, or removed;
* ``lie_rows_columns`` - Rows and/or Columns rewritten to values the pixel data does not hold;
* ``lie_layout``       - NumberOfFrames, BitsAllocated or SamplesPerPixel rewritten likewise;
* ``huge_length``      - an element length set to about 4 GiB: the pixel data's, or a private
  element's inserted before the pixel data.

Some mutations can leave a file decodable (a flipped byte among the pixel values, say): the tests
count those instead of expecting an error. Files are patched byte by byte where possible (UIDs are
replaced by new ones of the same length), so a corpus of a few hundred files takes seconds.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ImplicitVRLittleEndian

from medassist.ingest.dicom import quiet_pydicom

# A declared length this large (just under 4 GiB, even) can never be backed by a test file.
HUGE_LENGTH = 0xFFFFFFF0
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_US_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")


@dataclass(frozen=True)
class FuzzSource:
    """A valid DICOM file to derive broken files from; ``implicit``: re-encode as Implicit VR LE."""

    path: Path
    implicit: bool = False


@dataclass(frozen=True)
class BrokenFile:
    """One corpus file: where it is, what it came from, and how it was broken."""

    path: Path
    source: Path
    mutation: str
    detail: str


@dataclass(frozen=True)
class Base:
    """A parsed source: its bytes and where the attributes the mutations touch sit in them."""

    data: bytes
    uids: tuple[str, ...]  # Study, Series and SOP Instance UIDs
    pixel_offset: int  # first byte of the Pixel Data element's tag
    pixel_header_length: int  # 8 (implicit VR) or 12 (explicit VR OB/OW)
    pixel_length: int | None  # declared value length; None for undefined length (encapsulated)
    little: bool
    implicit: bool
    us_values: dict[str, tuple[int, int]]  # US keyword -> (value offset, current value)
    n_frames: int | None  # NumberOfFrames, when the header has it

    @property
    def pixel_value_offset(self) -> int:
        """First byte of the Pixel Data value."""
        return self.pixel_offset + self.pixel_header_length

    @property
    def pixel_length_offset(self) -> int:
        """First byte of the Pixel Data element's 32-bit length field."""
        return self.pixel_offset + self.pixel_header_length - 4

    @property
    def order(self) -> str:
        """struct byte order of the dataset."""
        return "<" if self.little else ">"


def write_fuzz_corpus(
    sources: Sequence[FuzzSource], out_dir: Path, *, per_mutation: int = 4, seed: int = 0
) -> list[BrokenFile]:
    """Write ``len(sources) * len(MUTATIONS) * per_mutation`` broken files into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus: list[BrokenFile] = []
    for source_index, source in enumerate(sources):
        base = read_base(source)
        for mutation, mutate in MUTATIONS.items():
            for variant in range(per_mutation):
                label = f"{seed}:{source_index}:{mutation}:{variant}"
                data, detail = mutate(with_fresh_uids(base, label), base, random.Random(label), variant)
                path = out_dir / f"{source_index:02d}_{Path(source.path).stem}_{mutation}_{variant}.dcm"
                path.write_bytes(data)
                corpus.append(BrokenFile(path, Path(source.path), mutation, detail))
    return corpus


def read_base(source: FuzzSource) -> Base:
    """Read (and if asked re-encode) a source, and locate its UIDs, US attributes and pixel data."""
    with quiet_pydicom():
        data = Path(source.path).read_bytes()
        if source.implicit:
            ds = pydicom.dcmread(io.BytesIO(data))
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            data = _encode(ds)
        fp = io.BytesIO(data)
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        pixel_offset = fp.tell()
        implicit, little = ds.original_encoding
        us_values = {}
        for keyword in _US_KEYWORDS:
            if keyword in ds:
                us_values[keyword] = (ds.get_item(keyword).value_tell, int(ds[keyword].value))
        uids = tuple(str(ds[k].value) for k in _UID_KEYWORDS)
        n_frames = int(ds.NumberOfFrames) if "NumberOfFrames" in ds else None
    header_length = 8 if implicit else 12
    (length,) = struct.unpack(("<" if little else ">") + "I", data[pixel_offset + header_length - 4 : pixel_offset + header_length])
    return Base(
        data=data,
        uids=uids,
        pixel_offset=pixel_offset,
        pixel_header_length=header_length,
        pixel_length=None if length == 0xFFFFFFFF else length,
        little=bool(little),
        implicit=bool(implicit),
        us_values=us_values,
        n_frames=n_frames,
    )


def with_fresh_uids(base: Base, label: str) -> bytes:
    """The source's bytes with its Study/Series/SOP Instance UIDs replaced (same lengths, so no
    offset moves) by UIDs derived from ``label``."""
    data = base.data
    for index, uid in enumerate(base.uids):
        data = data.replace(uid.encode("ascii"), same_length_uid(uid, f"{label}:{index}").encode("ascii"))
    return data


def same_length_uid(uid: str, label: str) -> str:
    """``uid`` with its last (up to 24) digits replaced by digits derived from ``label``."""
    digits = iter(str(int.from_bytes(hashlib.sha256(label.encode()).digest(), "big")))
    chars = list(uid)
    replaced = 0
    for position in range(len(chars) - 1, -1, -1):
        if replaced == 24:
            break
        if chars[position] == ".":
            continue
        starts_component = position == 0 or chars[position - 1] == "."
        component_end = uid.find(".", position)
        long_component = (component_end if component_end >= 0 else len(uid)) - position > 1
        digit = next(digits)
        chars[position] = "1" if digit == "0" and starts_component and long_component else digit
        replaced += 1
    return "".join(chars)


def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _rewrite(data: bytes, **attributes: object) -> bytes:
    """The file re-encoded by pydicom with some attributes set to other values."""
    with quiet_pydicom():
        ds = pydicom.dcmread(io.BytesIO(data))
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        return _encode(ds)


def _patch_us(data: bytes, base: Base, keyword: str, value: int) -> bytes:
    """Overwrite a US attribute's 2-byte value in place."""
    offset = base.us_values[keyword][0]
    return data[:offset] + struct.pack(base.order + "H", value) + data[offset + 2 :]


# --- the mutations: (bytes, base, rng, variant) -> (broken bytes, what was done) ---------------

Mutation = Callable[[bytes, Base, random.Random, int], tuple[bytes, str]]


def truncate(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Cut the file: even variants inside the header, odd ones inside the pixel data."""
    if variant % 2 == 0:
        cut = rng.randrange(1, base.pixel_value_offset)
    else:
        cut = rng.randrange(base.pixel_value_offset + 1, len(data))
    return data[:cut], f"cut at byte {cut} of {len(data)}"


def flip_bytes(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """XOR 1-8 bytes with random non-zero values: even variants in the header, odd ones anywhere."""
    end = base.pixel_value_offset if variant % 2 == 0 else len(data)
    broken = bytearray(data)
    positions = sorted(rng.sample(range(end), rng.randint(1, 8)))
    for position in positions:
        broken[position] ^= rng.randint(1, 255)
    return bytes(broken), f"flipped bytes at {positions}"


def zero_preamble(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Zero the preamble and the DICM magic (even variants), or those and part of the meta."""
    end = 132 if variant % 2 == 0 else 132 + rng.randrange(4, 64)
    return bytes(end) + data[end:], f"zeroed bytes 0-{end - 1}"


def cut_pixel_data(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Shorten the pixel data and fix its length (even variants), or drop the element (odd)."""
    if variant % 2 == 1:
        return data[: base.pixel_offset], "pixel data element removed"
    if base.pixel_length is None:
        return _cut_last_fragment(data, base, rng)
    value = data[base.pixel_value_offset :]
    keep = (int(len(value) * rng.uniform(0.05, 0.95)) // 2) * 2
    head = data[: base.pixel_length_offset] + struct.pack(base.order + "I", keep)
    return head + value[:keep], f"pixel data cut to {keep} of {len(value)} bytes, length fixed"


def _cut_last_fragment(data: bytes, base: Base, rng: random.Random) -> tuple[bytes, str]:
    """Encapsulated: cut the last fragment short (item length fixed), then the delimiter."""
    items = _items(data, base.pixel_value_offset)
    offset, length = items[-1]
    keep = (int(length * rng.uniform(0.05, 0.95)) // 2) * 2
    item_header = struct.pack("<HHI", *_ITEM, keep)
    broken = data[:offset] + item_header + data[offset + 8 : offset + 8 + keep] + _SEQUENCE_DELIMITER
    return broken, f"last of {len(items)} items cut to {keep} of {length} bytes"


def _items(data: bytes, offset: int) -> list[tuple[int, int]]:
    """(offset, length) of each item of encapsulated pixel data, up to the delimiter."""
    items = []
    while offset + 8 <= len(data):
        group, element, length = struct.unpack("<HHI", data[offset : offset + 8])
        if (group, element) != _ITEM:
            break
        items.append((offset, length))
        offset += 8 + length
    return items


def lie_rows_columns(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Rewrite Rows (even variants) or Columns (odd), sometimes both, to values the data does not hold."""
    rows, columns = base.us_values["Rows"][1], base.us_values["Columns"][1]
    choices = {"Rows": (0, 1, rows // 2, rows * 2 + 1, 65535), "Columns": (columns // 2, columns * 3, 65535)}
    first = "Rows" if variant % 2 == 0 else "Columns"
    changed = [first] + (["Columns" if first == "Rows" else "Rows"] if rng.random() < 0.3 else [])
    details = []
    for keyword in changed:
        old = base.us_values[keyword][1]
        new = rng.choice([v for v in choices[keyword] if v != old])
        data = _patch_us(data, base, keyword, new)
        details.append(f"{keyword} {old}->{new}")
    return data, ", ".join(details)


def lie_layout(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Rewrite NumberOfFrames, BitsAllocated or SamplesPerPixel to a value the data does not hold."""
    keyword = ("NumberOfFrames", "BitsAllocated", "SamplesPerPixel")[variant % 3]
    if keyword == "NumberOfFrames":
        value = rng.choice([v for v in (0, 3, 1000, 2_000_000_000) if v != base.n_frames])
        return _rewrite(data, NumberOfFrames=value), f"NumberOfFrames {base.n_frames}->{value}"
    old = base.us_values[keyword][1]
    values = {"BitsAllocated": (0, 1, 12, 32, 64), "SamplesPerPixel": (0, 3, 4)}[keyword]
    value = rng.choice([v for v in values if v != old])
    return _patch_us(data, base, keyword, value), f"{keyword} {old}->{value}"


def huge_length(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Declare ~4 GiB: as the pixel data's length (even variants) or a new private element's (odd)."""
    length = HUGE_LENGTH - 2 * rng.randrange(0, 1 << 20)
    packed = struct.pack(base.order + "I", length)
    if variant % 2 == 0:
        at = base.pixel_length_offset
        return data[:at] + packed + data[at + 4 :], f"pixel data length -> {length}"
    tag = struct.pack(base.order + "HH", 0x0009, 0x1010)
    element = tag + (b"" if base.implicit else b"OB\0\0") + packed + bytes(rng.randrange(0, 64, 2))
    at = base.pixel_offset
    return data[:at] + element + data[at:], f"private (0009,1010) declaring {length} bytes inserted"


MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    "zero_preamble": zero_preamble,
    "cut_pixel_data": cut_pixel_data,
    "lie_rows_columns": lie_rows_columns,
    "lie_layout": lie_layout,
    "huge_length": huge_length,
}


def default_sources(samples_export: Path, shared_dicom: Path) -> list[FuzzSource]:
    """The sources the tests derive their corpus from: two bundled radiographs and small shared
    files covering explicit and implicit VR, big endian, RGB, multi-frame, RLE, JPEG 2000 and
    JPEG baseline."""
    return [
        FuzzSource(samples_export / "PAT01/STUDY1/SER1/IM0001"),
        FuzzSource(samples_export / "PAT04/STUDY1/SER1/IM0001.dcm"),
        FuzzSource(shared_dicom / "pydicom/CT_small.dcm", implicit=True),
        FuzzSource(shared_dicom / "pydicom-data/emri_small_big_endian.dcm"),
        FuzzSource(shared_dicom / "pydicom-data/SC_rgb.dcm"),
        FuzzSource(shared_dicom / "pydicom-data/emri_small_RLE.dcm"),
        FuzzSource(shared_dicom / "pydicom-data/emri_small_jpeg_2k_lossless.dcm"),
        FuzzSource(shared_dicom / "pylibjpeg-data/JPEGBaseline_1s_1f_u_08_08.dcm"),
    ]


# The specific reasons ingest and triage give for a broken file, by category (``reason_category``).
REASON_PATTERNS = {
    "pixel data truncated": r"pixel data truncated: ",
    "pixel data longer than declared": r"pixel data holds \d+ bytes, \d+ more than the header declares",
    "element longer than the file": r"element \(\w{4},\w{4}\) declares \d+ bytes but only \d+ are left",
    "missing pixel data": r"missing pixel data\b",
    "over the decoded size limit": r"(series of \d+ slices: )?declared image size .* over the \d+ byte limit",
    "invalid image attribute": r"invalid (or missing )?(Rows|Columns|SamplesPerPixel|NumberOfFrames|BitsAllocated) value",
    "missing image attribute": r"missing image attribute\(s\): ",
    "no file meta, not parseable": r"no DICOM file meta and not parseable",
    "not DICOM": r"not a DICOM or NIfTI file",
    "unreadable header": r"unreadable DICOM (header|file): \S",
    "invalid SOP Class UID": r"invalid SOP Class UID value",
    "no SOP class, no pixel data": r"no SOP Class UID and no Pixel Data",
    "compressed stream undecodable": r"[\w ()-]+ stream undecodable: \S",
    "fewer fragments than frames": r"[\w ()-]+ holds \d+ fragment\(s\) for \d+ frames",
    "implausible CT values": r"[\w ()-]+ decoded to implausible CT values",
    "non-finite values": r"rescale or Modality LUT gives non-finite pixel values",
    "size differs from the series": r"decoded image is \d+ x \d+, the series expects",
    "frame missing": r"frame \d+ missing",
    "invalid Modality LUT": r"invalid Modality LUT or rescale values",
    "uncompressed data undecodable": r"pixel data undecodable: \S",
    "decoding timed out": r"decoding took longer than [\d.]+ s",
    "duplicate instance": r"duplicate instance: same SOPInstanceUID as ",
    "no valid score": r"model \S+ gave no valid score",
}


def reason_category(reason: str) -> str | None:
    """The category of a specific reason, or None for an unspecific one (a traceback, or a bare
    Python exception such as "MemoryError" or "ValueError: ..." after the category's words)."""
    detail = reason.split(": ", 1)[-1]
    if "Traceback" in reason or re.match(r"[A-Z]\w*(Error|Exception)\b|StopIteration\b", detail):
        return None
    for name, pattern in REASON_PATTERNS.items():
        if re.match(pattern, reason):
            return name
    return None
