"""Broken DICOM files derived from valid ones, for robustness tests (nothing here is used by a run).

``write_fuzz_corpus`` copies each valid source under fresh UIDs (so every broken file is a series
of its own) and breaks the copy in one way, chosen and placed by a seeded random generator: the
same sources and seed always give the same bytes. The mutations:

* ``truncate``            - the file cut short, at one of nine offset classes (preamble, magic,
  file meta, an element's header or value, right before the pixel data, inside its header or
  value, the last byte);
* ``flip_bytes``          - 1 to 8 bytes XOR-ed with random values: in the file meta, the data set
  header, the whole header or anywhere;
* ``zero_preamble``       - the preamble and the "DICM" magic zeroed, or those and part of the meta;
* ``cut_pixel_data``      - pixel data shortened behind a consistent element length, or removed;
* ``lie_rows_columns``    - Rows and/or Columns rewritten to values the pixel data does not hold;
* ``lie_layout``          - NumberOfFrames, BitsAllocated or SamplesPerPixel rewritten likewise;
* ``huge_length``         - an element length set to about 4 GiB: the pixel data's, or a private
  element's inserted before the pixel data;
* ``bad_uid``             - a file meta or data set UID that is not a UID (letters, empty, 90
  characters, binary, multi-valued);
* ``bad_transfer_syntax`` - a Transfer Syntax UID that is not a transfer syntax (a SOP class, a
  private or unknown UID, junk), one without a decoder, one that lies about the encoding, or none;
* ``wrong_vr``            - an element under another VR: the code overwritten in place,
  re-encoded, or (implicit VR) its value written as another VR's;
* ``bad_number``          - impossible US / IS / DS values (NaN, inf, 1e999, 0, negative, junk,
  wrong multiplicity) of the attributes the ingest reads, inserted where absent;
* ``bad_date``            - impossible dates, times, date-times and ages;
* ``bad_text``            - empty, overlong, binary or wrong code strings (modality, photometric,
  character set...);
* ``bad_length``          - a header element's length past the end, odd, short, zero or all ones,
  or the file meta group length wrong;
* ``sequence_bomb``       - a sequence the ingest reads nested 200 to 20,000 deep, with 100,000
  items, an item past its end, no delimiter, or no items;
* ``absurd_layout``       - Rows, Columns, BitsAllocated, SamplesPerPixel, BitsStored, HighBit and
  NumberOfFrames set to absurd values, up to three at once.

Elements are replaced or inserted through ``replace_elements`` (the file meta's group length kept
right unless the mutation is about it), which walks the top-level elements (``element_spans``).
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
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import ImplicitVRLittleEndian

from medassist.ingest.dicom import quiet_pydicom

# A declared length this large (just under 4 GiB, even) can never be backed by a test file.
HUGE_LENGTH = 0xFFFFFFF0
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}
_UNDEFINED = 0xFFFFFFFF
_ITEM_DELIMITER = (0xFFFE, 0xE00D)
_SEQUENCE_DELIMITER_TAG = (0xFFFE, 0xE0DD)
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
class Span:
    """Where one top-level element sits in a file's bytes."""

    tag: int
    vr: bytes | None  # None: implicit VR
    start: int  # first byte of the tag
    value_offset: int  # first byte of the value
    end: int  # one past the value (past the sequence delimiter for an undefined length)

    @property
    def meta(self) -> bool:
        """A file meta element (group 0002: always explicit VR little endian)."""
        return self.tag >> 16 == 0x0002

    @property
    def length_size(self) -> int:
        """Bytes of the length field: 4 (implicit VR, or a long VR such as OB or SQ) or 2."""
        return 4 if self.vr is None or self.vr in _LONG_VRS else 2


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
    spans: tuple[Span, ...] = ()  # top-level elements of the file meta and the data set, in file order
    meta_end: int = 0  # one past the file meta's last element (where the data set starts)

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
    meta = element_spans(data, 132 if data[128:132] == b"DICM" else 0, pixel_offset, implicit=False, little=True,
                         meta=True)
    meta_end = meta[-1].end if meta else 0
    dataset = element_spans(data, meta_end, pixel_offset, implicit=bool(implicit), little=bool(little), meta=False)
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
        spans=tuple(meta + dataset),
        meta_end=meta_end,
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


# --- elements: find, encode, replace, insert ----------------------------------------------------


def element_spans(data: bytes, start: int, stop: int, *, implicit: bool, little: bool, meta: bool) -> list[Span]:
    """The top-level elements between ``start`` and ``stop`` (file meta: group 0002 only)."""
    order = "<" if little else ">"
    spans: list[Span] = []
    offset = start
    while offset + 8 <= stop:
        (group,) = struct.unpack(order + "H", data[offset : offset + 2])
        if meta and group != 0x0002:
            break
        span = _span_at(data, offset, implicit, order)
        spans.append(span)
        offset = span.end
    return spans


def _span_at(data: bytes, offset: int, implicit: bool, order: str) -> Span:
    """The element whose tag starts at ``offset``."""
    group, element = struct.unpack(order + "HH", data[offset : offset + 4])
    vr: bytes | None = None
    if implicit:
        (length,) = struct.unpack(order + "I", data[offset + 4 : offset + 8])
        value = offset + 8
    else:
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack(order + "I", data[offset + 8 : offset + 12])
            value = offset + 12
        else:
            (length,) = struct.unpack(order + "H", data[offset + 6 : offset + 8])
            value = offset + 8
    end = _skip_undefined_sequence(data, value, implicit, order) if length == _UNDEFINED else value + length
    return Span(group << 16 | element, vr, offset, value, end)


def _skip_undefined_sequence(data: bytes, offset: int, implicit: bool, order: str) -> int:
    """One past the delimiter of an undefined-length sequence whose first item starts at ``offset``."""
    while offset + 8 <= len(data):
        group, element, length = struct.unpack(order + "HHI", data[offset : offset + 8])
        offset += 8
        if (group, element) == _SEQUENCE_DELIMITER_TAG:
            return offset
        if length != _UNDEFINED:  # an item of defined length
            offset += length
            continue
        while offset + 8 <= len(data):  # an item of undefined length: elements up to its delimiter
            if struct.unpack(order + "HH", data[offset : offset + 4]) == _ITEM_DELIMITER:
                offset += 8
                break
            offset = _span_at(data, offset, implicit, order).end
    return len(data)


def tag_of(keyword: str) -> int:
    """The tag of a DICOM keyword, as an int."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return int(tag)


def span_of(base: Base, keyword: str) -> Span | None:
    """The top-level element ``keyword`` of the source, or None when it has none."""
    tag = tag_of(keyword)
    return next((span for span in base.spans if span.tag == tag), None)


def default_vr(tag: int) -> bytes:
    """The dictionary VR of a tag (the first of "US or SS"), as the two bytes written in a file."""
    return dictionary_VR(tag)[:2].encode("ascii")


def encode_element(tag: int, vr: bytes, value: bytes, *, implicit: bool, order: str, pad: bool = True) -> bytes:
    """One element's bytes; ``pad``: an odd value gets the pad byte its VR uses."""
    if pad and len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB", b"UN") else b" "
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(order + "I", len(value)) + value
    if vr in _LONG_VRS:
        return head + vr + b"\0\0" + struct.pack(order + "I", len(value)) + value
    return head + vr + struct.pack(order + "H", min(len(value), 0xFFFF)) + value


def replace_elements(data: bytes, base: Base, changes: dict[str, bytes | None], *, vrs: dict[str, bytes] | None = None,
                     raw: dict[str, bytes] | None = None, fix_group_length: bool = True) -> bytes:
    """``data`` with top-level elements set to new values (None: removed), each encoded with its
    current VR (or ``vrs[keyword]``, or the dictionary's), or replaced by ``raw[keyword]`` bytes
    whole; an absent element is inserted in tag order. The file meta's group length follows, unless
    ``fix_group_length`` is False. ``data`` must have ``base``'s layout (same offsets)."""
    vrs, raw = vrs or {}, raw or {}
    edits: list[tuple[int, int, bytes]] = []  # (start, end, new bytes)
    meta_delta = 0
    for keyword in {**changes, **raw}:
        tag = tag_of(keyword)
        meta = tag >> 16 == 0x0002
        span = span_of(base, keyword)
        if keyword in raw:
            new = raw[keyword]
        elif changes[keyword] is None:
            new = b""
        else:
            vr = vrs.get(keyword) or (span.vr if span is not None and span.vr else default_vr(tag))
            new = encode_element(tag, vr, changes[keyword], implicit=base.implicit and not meta,  # type: ignore[arg-type]
                                 order="<" if meta or base.little else ">")
        if span is not None:
            start, end = span.start, span.end
        else:
            later = [x.start for x in base.spans if x.meta == meta and x.tag > tag]
            start = end = min(later) if later else (base.meta_end if meta else base.pixel_offset)
        edits.append((start, end, new))
        if meta:
            meta_delta += len(new) - (end - start)
    for start, end, new in sorted(edits, reverse=True):  # from the back: earlier offsets stay valid
        data = data[:start] + new + data[end:]
    group_length = next((x for x in base.spans if x.tag == 0x00020000), None)
    if fix_group_length and meta_delta and group_length is not None:
        at = group_length.value_offset
        (old,) = struct.unpack("<I", data[at : at + 4])
        data = data[:at] + struct.pack("<I", (old + meta_delta) & 0xFFFFFFFF) + data[at + 4 :]
    return data


def _patch_length(data: bytes, base: Base, span: Span, length: int) -> bytes:
    """Overwrite an element's length field in place (nothing else moves)."""
    at = span.value_offset - span.length_size
    order = "<" if span.meta or base.little else ">"
    packed = struct.pack(order + ("I" if span.length_size == 4 else "H"), length)
    return data[:at] + packed + data[at + span.length_size :]


# --- the mutations: (bytes, base, rng, variant) -> (broken bytes, what was done) ---------------

Mutation = Callable[[bytes, Base, random.Random, int], tuple[bytes, str]]


_TRUNCATION_CLASSES = ("preamble", "magic", "file meta", "element header", "element value", "before pixel data",
                       "pixel data header", "pixel data", "last byte")


def truncate(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Cut the file short, at an offset of one class: in the preamble or the DICM magic, inside the
    file meta, inside a data set element's header or value, exactly before the pixel data, inside
    its element header, inside its value, or one byte from the end."""
    where = _TRUNCATION_CLASSES[(variant + rng.randrange(len(_TRUNCATION_CLASSES))) % len(_TRUNCATION_CLASSES)]
    dataset = [x for x in base.spans if not x.meta and x.end > x.value_offset] or list(base.spans)
    span = rng.choice(dataset)
    if where == "preamble":
        cut = rng.randrange(1, 128)
    elif where == "magic":
        cut = rng.randrange(128, 132)
    elif where == "file meta":
        cut = rng.randrange(min(132, base.meta_end - 1), base.meta_end)
    elif where == "element header":
        cut = rng.randrange(span.start + 1, span.value_offset)
    elif where == "element value":
        cut = rng.randrange(span.value_offset, span.end)
    elif where == "before pixel data":
        cut = base.pixel_offset
    elif where == "pixel data header":
        cut = rng.randrange(base.pixel_offset + 1, base.pixel_value_offset)
    elif where == "pixel data":
        cut = rng.randrange(base.pixel_value_offset + 1, len(data) - 1)
    else:
        cut = len(data) - 1
    return data[:cut], f"cut at byte {cut} of {len(data)} ({where})"


_FLIP_REGIONS = ("file meta", "data set header", "header", "anywhere")


def flip_bytes(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """XOR 1-8 bytes with random non-zero values, in one region: the file meta, the data set's
    header (meta to pixel data), the whole header (preamble to pixel data) or anywhere."""
    region = _FLIP_REGIONS[variant % len(_FLIP_REGIONS)]
    start = {"file meta": 128, "data set header": base.meta_end}.get(region, 0)
    end = {"file meta": base.meta_end, "anywhere": len(data)}.get(region, base.pixel_value_offset)
    broken = bytearray(data)
    positions = sorted(rng.sample(range(start, end), min(end - start, rng.randint(1, 8))))
    for position in positions:
        broken[position] ^= rng.randint(1, 255)
    return bytes(broken), f"flipped bytes at {positions} ({region})"


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


# --- value mutations: every element the ingest reads, given values it must not trust ----------

_NOT_UIDS = ("not-a-uid-{n}", "1.2.abc.{n}", "1..2.{n}", "1.2.{n}.", ".1.2.{n}", "01.2.{n}", "1.2.{n}\\1.2.3",
             " 1.2.{n} ", "1." + "9" * 80 + ".{n}", "", "\xff\xfe\x01{n}", "1.2.3-{n}", "1.2.{n}\x00\x00\x00\x00")
_UID_TARGETS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "ImplementationClassUID", "SOPClassUID",
                "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
_NOT_TRANSFER_SYNTAXES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage: a SOP class
    "1.2.840.10008.1.1",  # Verification SOP Class
    "1.2.840.10008.1.2.99",  # under the DICOM root, but nothing
    "1.2.3.4.5.6",  # private, unknown
    "abc",
    "",
    "1." + "2" * 90,
    "\xff\xfe\x00\x01",
    "1.2.840.10008.1.2.4.100",  # MPEG2: a transfer syntax, but no decoder
    "1.2.840.10008.1.2.4.50",  # JPEG baseline, on whatever the data is
    "1.2.840.10008.1.2",  # implicit VR, on whatever the data is
    "1.2.840.10008.1.2.2",  # big endian, likewise
    "1.2.840.10008.1.2.1",  # explicit VR little endian, likewise
    "1.2.840.10008.1.2.1.99",  # deflated, on data that is not
    None,  # removed
)
# Elements the ingest (or a result built from a row) reads, by kind of value.
_NUMBER_TARGETS = {
    "US": ("BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "Rows", "Columns"),
    "IS": ("InstanceNumber", "NumberOfFrames", "SeriesNumber"),
    "DS": ("PixelSpacing", "ImagerPixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient",
           "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
           "GridFrameOffsetVector"),
}
_BAD_US = (0, 1, 7, 15, 17, 32768, 65535)
_BAD_NUMBERS = ("nan", "NaN\\NaN", "inf", "-inf\\1", "1e999", "-1e999", "0", "0\\0", "0\\0\\0\\0\\0\\0", "-5",
                "-0.5\\-0.5", "1e308\\1e308\\1e308", "1e-320", "abc", "1,5", "0x10", "99999999999999999999",
                "-2147483649", "1.5", "1\\2\\3\\4\\5\\6\\7\\8\\9", "\\\\", "", " ", "1\\" * 5000 + "1")
_DATE_TARGETS = {
    "DA": ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate"),
    "TM": ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"),
    "DT": ("AcquisitionDateTime",),
    "AS": ("PatientAge",),
}
_BAD_DATES = {
    "DA": ("20251340", "00000000", "99999999", "2025-01-01", "abcdefgh", "1", "20250230", "", "-2025010",
           "19000101\\20000101", "\xff\xfe\xfd\xfc"),
    "TM": ("256199", "24:00:00", "-1", "1.2.3", "999999.9999999", "abc", "", "1261", "235960.000000000000"),
    "DT": ("20251340256199", "abc", "2025+9999", "00000000000000.000000+2400", ""),
    "AS": ("999Y", "-01Y", "ABCD", "12", "000D", "100X", ""),
}
_TEXT_TARGETS = ("Modality", "BodyPartExamined", "PhotometricInterpretation", "PatientSex", "SpecificCharacterSet",
                 "PatientID", "AccessionNumber", "Manufacturer", "SeriesDescription", "PatientName", "RescaleType",
                 "VOILUTFunction", "ImageType")
_BAD_TEXTS = ("", "A" * 1000, "\x00\xff\x1b$B\x80", "MONOCHROME3", "YBR_FULL_422", "PALETTE COLOR", "RGB",
              "ISO_IR 999", "ISO 2022 IR 87\\ISO 2022 IR 159", "\\\\\\", "=1+2", "\r\n\t", "../../etc/passwd",
              "SIGMOID", "\x1b%G\xc3\x28")
_WRONG_VR_TARGETS = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PixelSpacing", "ImagePositionPatient",
                     "ImageOrientationPatient", "InstanceNumber", "SOPClassUID", "StudyInstanceUID",
                     "SeriesInstanceUID", "Modality", "PhotometricInterpretation", "NumberOfFrames", "RescaleSlope",
                     "WindowCenter", "SpecificCharacterSet", "TransferSyntaxUID", "MediaStorageSOPClassUID")
_OTHER_VRS = (b"SQ", b"UN", b"OB", b"FD", b"UL", b"US", b"DS", b"UI", b"XX", b"\0\0", b"sq", b"AT")


def _text(value: str) -> bytes:
    """A value's bytes as written (latin-1 keeps the binary ones as they are)."""
    return value.encode("latin-1")


def _present(base: Base, keywords: Sequence[str]) -> list[str]:
    """The keywords the source has as top-level elements."""
    return [k for k in keywords if span_of(base, k) is not None]


def bad_uid(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Set a file meta or data set UID to something that is not a UID (unique per file)."""
    keyword = _UID_TARGETS[(variant + rng.randrange(len(_UID_TARGETS))) % len(_UID_TARGETS)]
    value = rng.choice(_NOT_UIDS).format(n=rng.randrange(10**12))
    return replace_elements(data, base, {keyword: _text(value)}), f"{keyword} -> {value[:40]!r}"


def bad_transfer_syntax(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Set the file meta's Transfer Syntax UID to one that is not a transfer syntax, or lies."""
    span = span_of(base, "TransferSyntaxUID")
    current = base.data[span.value_offset : span.end].rstrip(b"\0 ").decode("latin-1") if span else None
    value = rng.choice([v for v in _NOT_TRANSFER_SYNTAXES if v != current])
    new = None if value is None else _text(value)
    return replace_elements(data, base, {"TransferSyntaxUID": new}), f"TransferSyntaxUID -> {value!r}"


def wrong_vr(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Give an element a VR it does not have: its VR code overwritten in place (the header may no
    longer parse as one element), the element re-encoded under another VR, or (implicit VR) its
    value written as another VR's binary value."""
    keyword = rng.choice(_present(base, _WRONG_VR_TARGETS))
    span = span_of(base, keyword)
    assert span is not None
    vr = rng.choice([v for v in _OTHER_VRS if v != span.vr])
    how = "value" if span.vr is None else ("in place", "re-encoded", "value")[variant % 3]
    if how == "in place":
        at = span.start + 4
        return data[:at] + vr + data[at + 2 :], f"{keyword} VR {span.vr!r} -> {vr!r} in place"
    value = data[span.value_offset : span.end]
    if how == "re-encoded":
        return replace_elements(data, base, {keyword: value}, vrs={keyword: vr}), f"{keyword} re-encoded as {vr!r}"
    other = rng.choice((struct.pack("<d", 512.0), struct.pack("<I", 512), b"\x01", b"512 ", bytes(range(1, 9))))
    return replace_elements(data, base, {keyword: other}, ), f"{keyword} value -> {other!r}"


def bad_number(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Set a US, IS or DS element the ingest reads to an impossible number (or none), inserting it
    where the source has none."""
    vr = ("US", "IS", "DS", "DS")[variant % 4]
    keyword = rng.choice(_NUMBER_TARGETS[vr])
    if vr == "US":
        number = rng.choice(_BAD_US)
        return replace_elements(data, base, {keyword: struct.pack(base.order + "H", number)}), f"{keyword} -> {number}"
    value = rng.choice(_BAD_NUMBERS)
    return replace_elements(data, base, {keyword: _text(value)}), f"{keyword} -> {value[:40]!r}"


def bad_date(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Set a date, time, date-time or age to an impossible value (inserted where absent)."""
    vr = rng.choice(list(_DATE_TARGETS))
    keyword = rng.choice(_DATE_TARGETS[vr])
    value = rng.choice(_BAD_DATES[vr])
    return replace_elements(data, base, {keyword: _text(value)}), f"{keyword} -> {value!r}"


def bad_text(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Set a code string or text the ingest reads (modality, photometric, character set...) to
    nonsense: empty, overlong, binary, a wrong photometric, an unknown character set."""
    keyword = _TEXT_TARGETS[(variant + rng.randrange(len(_TEXT_TARGETS))) % len(_TEXT_TARGETS)]
    value = rng.choice(_BAD_TEXTS)
    return replace_elements(data, base, {keyword: _text(value)}), f"{keyword} -> {value[:40]!r}"


def bad_length(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Rewrite a header element's length field: past the end of the file, odd, too short (the next
    element is read from the wrong place), zero, all ones; or the file meta's group length."""
    if variant % 4 == 3:
        span = next((x for x in base.spans if x.tag == 0x00020000), None) or base.spans[0]
        value = rng.choice((0, 4, 100_000, 0xFFFFFFFF, rng.randrange(1, 400)))
        at = span.value_offset
        return data[:at] + struct.pack("<I", value) + data[at + 4 :], f"file meta group length -> {value}"
    span = rng.choice([x for x in base.spans if x.tag != 0x00020000])
    length = span.end - span.value_offset
    limit = 0xFFFFFFFF if span.length_size == 4 else 0xFFFF
    left = len(data) - span.value_offset
    choices = (min(left + rng.randrange(1, 5000), limit), length + 1, max(length - 2, 0), 0, limit, length + 3)
    new = rng.choice([c for c in choices if c != length])
    return _patch_length(data, base, span, new), f"({span.tag >> 16:04X},{span.tag & 0xFFFF:04X}) length {length} -> {new}"


_SEQUENCE_TARGETS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "ModalityLUTSequence",
                     "VOILUTSequence", "ReferencedImageSequence")


def sequence_bomb(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Insert a sequence the ingest reads that is nested very deep (undefined or defined lengths),
    holds very many items, has an item running past its end, never ends, or holds no items."""
    keyword = rng.choice(_SEQUENCE_TARGETS)
    tag = tag_of(keyword)
    kind = ("deep undefined", "deep defined", "wide", "item past the end", "no delimiter", "not items")[variant % 6]
    order = base.order
    if kind == "deep undefined":
        depth = rng.choice((200, 2_000, 20_000))
        opening = _sequence_header(tag, _UNDEFINED, base) + _item_header(_UNDEFINED, order)
        inner = _sequence_header(_NESTED, _UNDEFINED, base) + _item_header(_UNDEFINED, order)
        closing = struct.pack(order + "HHI", *_ITEM_DELIMITER, 0) + struct.pack(order + "HHI", *_SEQUENCE_DELIMITER_TAG, 0)
        element = opening + inner * (depth - 1) + closing * depth
    elif kind == "deep defined":
        depth = rng.choice((200, 2_000))
        element = _deep_defined(tag, depth, base)
    elif kind == "wide":
        count = rng.choice((10_000, 100_000))
        items = _item_header(0, order) * count
        element = _sequence_header(tag, len(items), base) + items
        depth = count
    elif kind == "item past the end":
        item = _item_header(len(data) + rng.randrange(1, 1 << 20), order) + bytes(8)
        element = _sequence_header(tag, len(item), base) + item
        depth = 1
    elif kind == "no delimiter":
        element = _sequence_header(tag, _UNDEFINED, base) + _item_header(_UNDEFINED, order)
        depth = 1
    else:
        junk = struct.pack(order + "HHI", 0x0028, 0x0010, 2) + b"\x01\x00"
        element = _sequence_header(tag, len(junk), base) + junk
        depth = 0
    broken = replace_elements(data, base, {}, raw={keyword: element})
    return broken, f"{keyword}: {kind} ({depth}), {len(element)} bytes"


_NESTED = 0x00081140  # ReferencedImageSequence, inside each item of a deep sequence


def _sequence_header(tag: int, length: int, base: Base) -> bytes:
    """A sequence element's header in the data set's encoding."""
    head = struct.pack(base.order + "HH", tag >> 16, tag & 0xFFFF)
    return head + (b"" if base.implicit else b"SQ\0\0") + struct.pack(base.order + "I", length)


def _item_header(length: int, order: str) -> bytes:
    return struct.pack(order + "HHI", *_ITEM, length)


def _deep_defined(tag: int, depth: int, base: Base) -> bytes:
    """``depth`` sequences of one item each, nested, every length defined."""
    sequence_header = len(_sequence_header(tag, 0, base))
    level = sequence_header + 8  # bytes each level adds: sequence header + item header
    parts = []
    for j in range(depth):
        below = (depth - j - 1) * level  # the bytes of the levels inside this one's item
        parts.append(_sequence_header(tag if j == 0 else _NESTED, 8 + below, base) + _item_header(below, base.order))
    return b"".join(parts)


_LAYOUT_LIES: dict[str, tuple] = {
    "Rows": (0, 1, 65535),
    "Columns": (0, 65535),
    "BitsAllocated": (0, 7, 24, 128, 65535),
    "SamplesPerPixel": (0, 2, 255, 65535),
    "BitsStored": (64, 65535),
    "HighBit": (65535, 63),
    "NumberOfFrames": ("0", "-1", "1.5", "1e9", "2147483647", "99999999999999999999", "abc", "", " 7 ", "3\\4"),
}


def absurd_layout(data: bytes, base: Base, rng: random.Random, variant: int) -> tuple[bytes, str]:
    """Set one to three of Rows, Columns, BitsAllocated, SamplesPerPixel, BitsStored, HighBit and
    NumberOfFrames to absurd values at once (65535 x 65535 x 2^31 frames, 0 bits, "abc" frames...)."""
    keywords = rng.sample(sorted(_LAYOUT_LIES), rng.randint(1, 3))
    changes: dict[str, bytes | None] = {}
    details = []
    for keyword in keywords:
        value = rng.choice(_LAYOUT_LIES[keyword])
        if isinstance(value, int):
            changes[keyword] = struct.pack(base.order + "H", value)
        else:
            changes[keyword] = _text(value)
        details.append(f"{keyword} -> {value!r}")
    return replace_elements(data, base, changes), ", ".join(details)

MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    "zero_preamble": zero_preamble,
    "cut_pixel_data": cut_pixel_data,
    "lie_rows_columns": lie_rows_columns,
    "lie_layout": lie_layout,
    "huge_length": huge_length,
    "bad_uid": bad_uid,
    "bad_transfer_syntax": bad_transfer_syntax,
    "wrong_vr": wrong_vr,
    "bad_number": bad_number,
    "bad_date": bad_date,
    "bad_text": bad_text,
    "bad_length": bad_length,
    "sequence_bomb": sequence_bomb,
    "absurd_layout": absurd_layout,
}

# The mutations that break the file's layout (sizes, lengths, encoding): few such files stay
# decodable. The others change one value and may leave a readable image.
STRUCTURAL_MUTATIONS = frozenset({"truncate", "flip_bytes", "zero_preamble", "cut_pixel_data", "lie_rows_columns",
                                  "lie_layout", "huge_length", "bad_transfer_syntax", "bad_length", "absurd_layout"})


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
    "invalid image attribute": r"invalid (or missing )?(Rows|Columns|SamplesPerPixel|NumberOfFrames|BitsAllocated|"
                               r"BitsStored|HighBit|PixelRepresentation) value",
    "not a transfer syntax": r"(invalid Transfer Syntax UID value .* \(not a UID\)|Transfer Syntax UID \S+ .*is not a "
                             r"transfer syntax|unknown Transfer Syntax UID \S+ \(private or corrupt\))",
    "unsupported transfer syntax": r"transfer syntax .* is not supported",
    "sequence too large": r"\w+Sequence of \d+ bytes is too large to read",
    "palette without LUT": r"PALETTE COLOR image without a usable palette: \S",
    "header read timed out": r"reading the header took longer than [\d.]+ s",
    "file meta truncated": r"file meta truncated: its group length \d+ runs past the end of the file",
    "deflated data set too large": r"deflated data set inflates to more than \d+ bytes",
    "missing image attribute": r"missing image attribute\(s\): ",
    "NIfTI unreadable": r"(unreadable NIfTI|NIfTI voxels unreadable): \S",
    "NIfTI truncated": r"NIfTI voxel data truncated: the header declares \d+ bytes",
    "NIfTI header layout": r"NIfTI (header extension of -?\d+ bytes does not fit|voxel offset \d+ (lies inside|leaves))",
    "NIfTI no image": r"NIfTI volume (has no finite voxel|holds \d+ infinite voxel|is constant)",
    "NIfTI unsupported": r"(4D NIfTI .* is not supported|unsupported NIfTI data type|NIfTI affine is not finite)",
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
